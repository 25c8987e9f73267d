//! An upgrade reaching a relay replica that does not hold the agent's
//! session goes to the peer replica that does, like any request (real
//! relays on PostgreSQL, a real agent, the `websockets` peers).

mod support;
// Only the WebSocket peers of the shared upgrade helpers are used here.
#[allow(dead_code)]
#[path = "support/upgrade_peers.rs"]
mod upgrade_peers;

use std::time::Duration;

use support::*;
use upgrade_peers::*;

#[tokio::test]
async fn a_websocket_reaching_a_replica_without_the_session_is_forwarded_to_its_peer() {
    let c = support::cluster::cluster(2).await;
    let (relays, token, key) = (&c.relays, &c.token, &c.key);
    let ws = WsServer::start();
    // One session, on relay-1 only.
    let _agent = Agent::start_with(
        &relays[0].agent_url(),
        token,
        "agent-a",
        "connections = 1",
        &ws.route("ws", "upgrades = [\"websocket\"]"),
    );
    relays[0].wait_sessions(1).await;
    assert_eq!(relays[1].sessions().await, 0);

    // Until relay-2 knows of the agent (presence), then a whole echo
    // (subprotocols, text, a large binary message, close codes) via the peer.
    let answered = || relays[1].metric("tether_relay_peer_forwarded_total{outcome=\"answered\"}");
    let mut echo = serde_json::Value::Null;
    for _ in 0..100 {
        echo = ws_client(&relays[1], "/v1/routes/ws/chat", key, "echo").await;
        if echo["text"] == "hello through the tunnel" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(echo["text"], "hello through the tunnel", "{echo}");
    assert_eq!(echo["subprotocol"], "tether.test.v1", "{echo}");
    assert_eq!(echo["binary_sent"], echo["binary_back"], "{echo}");
    assert!(answered().await >= 1, "the upgrade went to the peer");
}
