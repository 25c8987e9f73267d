//! A TCP load balancer for the cluster tests, standing in for the
//! Kubernetes Service or cloud load balancer in front of relay replicas:
//! each connection goes to a backend chosen at random, the next one if
//! that refuses. It runs on a thread of its own so that tests blocking on
//! child processes do not stall it.

use std::net::SocketAddr;

use rand::seq::SliceRandom;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The balancer; stops on drop.
pub struct Balancer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Balancer {
    /// Listens on 127.0.0.1 and spreads connections over `backends`.
    pub fn start(backends: Vec<SocketAddr>) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (client, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                        () = stop.cancelled() => return,
                    };
                    let mut order = backends.clone();
                    order.shuffle(&mut rand::rng());
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        for backend in order {
                            if let Ok(mut server) = TcpStream::connect(backend).await {
                                let mut client = client;
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    () = stop.cancelled() => {}
                                }
                                return;
                            }
                        }
                    });
                }
            });
        });
        Self { addr, shutdown }
    }

    /// The WebSocket URL agents dial through the balancer.
    pub fn agent_url(&self) -> String {
        format!("ws://{}/v1/agent/connect", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
