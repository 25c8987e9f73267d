//! Arbitrary bytes from the peer of a WebSocket read as data, EOF or an
//! error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let config = WebSocketConfig::default()
            .max_message_size(Some(1 << 16))
            .max_frame_size(Some(1 << 16));
        let ws = WebSocketStream::from_raw_socket(ours, Role::Server, Some(config)).await;
        let mut io = tether_wire::WsIo::new(ws);
        theirs.write_all(data).await.expect("write");
        drop(theirs);
        let mut sink = Vec::new();
        let _ = io.read_to_end(&mut sink).await;
        assert!(sink.len() <= data.len());
    });
});
