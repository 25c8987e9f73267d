//! Arbitrary bytes from the peer of a WebSocket read as data, EOF or an
//! error, never a panic or a hang, in either role (tether-wire frames and
//! unframes the session itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_wire::ws_io::{Role, WsIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 { Role::Client } else { Role::Server };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut io = WsIo::new(ours, role);
        theirs.write_all(data).await.expect("write");
        drop(theirs);
        let mut sink = Vec::new();
        let _ = io.read_to_end(&mut sink).await;
        assert!(sink.len() <= data.len());
    });
});
