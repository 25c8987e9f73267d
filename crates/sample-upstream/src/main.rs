//! `tether-sample-upstream [ADDR]`: serve the sample service (default
//! 127.0.0.1:0) and print the bound address on stdout.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let addr: SocketAddr = match std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
    {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("tether-sample-upstream: bad address: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    match tether_sample_upstream::start(addr, shutdown.clone()).await {
        Ok(local) => println!("{local}"),
        Err(e) => {
            eprintln!("tether-sample-upstream: cannot listen on {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    std::process::ExitCode::SUCCESS
}
