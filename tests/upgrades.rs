//! Upgrades (WebSocket, SPDY) through relay and agent: real WebSocket
//! peers (the Python `websockets` package, tests/support/ws_peers.py) and
//! raw TCP upstreams answering what a broken or SPDY server answers.

mod support;
#[path = "support/upgrade_peers.rs"]
mod upgrade_peers;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use upgrade_peers::*;

#[tokio::test]
async fn a_websocket_passes_subprotocols_close_codes_and_a_large_binary_message_both_ways() {
    let ws = WsServer::start();
    let s = setup("", &ws.route("ws", INJECT)).await;

    let echo = ws_client(&s.relay, "/v1/routes/ws/chat?room=1", &s.key, "echo").await;
    assert_eq!(echo["subprotocol"], "tether.test.v1", "{echo}");
    assert_eq!(echo["hello"]["subprotocol"], "tether.test.v1", "{echo}");
    assert_eq!(
        echo["hello"]["offered"], "tether.test.v2, tether.test.v1",
        "{echo}"
    );
    assert_eq!(echo["text"], "hello through the tunnel", "{echo}");
    assert_eq!(echo["binary_len"], 3 * 1024 * 1024 / 2, "{echo}");
    assert_eq!(echo["binary_sent"], echo["binary_back"], "{echo}");
    // The injected value reaches the server, never the caller.
    assert!(!echo.to_string().contains(SECRET), "{echo}");
    assert!(
        echo["response_headers"]["tether-agent"].is_string(),
        "{echo}"
    );

    let closed = ws_client(&s.relay, "/v1/routes/ws/chat", &s.key, "server_close").await;
    assert_eq!(closed["close_code"], 4002, "{closed}");
    assert_eq!(closed["close_reason"], "server says bye", "{closed}");

    until(LIMIT, "both connections in the server's log", || async {
        ws.connections().len() == 2
    })
    .await;
    let seen = ws.connections();
    let first = seen
        .iter()
        .find(|c| c["path"] == "/chat?room=1")
        .expect("path kept");
    assert_eq!(first["close_code"], 4001, "{first}");
    assert_eq!(first["close_reason"], "client says bye", "{first}");
    let headers = first["headers"].as_object().unwrap();
    assert_eq!(headers["x-handshake-token"], format!("Bearer {SECRET}"));
    assert!(!headers.contains_key("proxy-authorization"), "{first}");
    assert!(!headers.keys().any(|k| k.starts_with("tether-")), "{first}");
    assert_eq!(headers["upgrade"], "websocket");

    // Audit: a line at the 101 and one at the close with bytes both ways.
    let text = s.agent.log.lock().unwrap().join("\n");
    assert!(
        text.contains("status=101 decision=upgraded"),
        "no open line"
    );
    let close = text
        .lines()
        .find(|l| l.contains("path=/chat ") && l.contains("decision=closed"))
        .expect("a close line");
    let bytes_in: u64 = close
        .split("bytes_in=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(bytes_in > 1024 * 1024, "{close}");
}

#[tokio::test]
async fn an_upgrade_to_a_route_without_upgrades_is_denied_and_never_dialled() {
    let ws = WsServer::start();
    let s = setup("", &ws.route("ws", "")).await;
    let refused = ws_client(&s.relay, "/v1/routes/ws/chat", &s.key, "echo").await;
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(
        refused["body"].as_str().unwrap().contains("denied"),
        "{refused}"
    );
    // An ordinary request to the same server shows it is up, and that it
    // never saw the upgrade.
    let (status, _, _) = get(
        &s.relay.url("/v1/routes/ws/plain"),
        &[("proxy-authorization", &format!("Bearer {}", s.key))],
    )
    .await;
    assert_ne!(status, 403);
    assert!(ws.connections().is_empty(), "{:?}", ws.connections());
}

#[tokio::test]
async fn a_non_101_answer_reaches_the_caller_as_a_response() {
    let ws = WsServer::start();
    let s = setup("", &ws.route("ws", INJECT)).await;
    let denied = ws_client(&s.relay, "/v1/routes/ws/deny", &s.key, "echo").await;
    assert_eq!(denied["status"], 401, "{denied}");
    assert_eq!(denied["body"], "who are you\n", "{denied}");
    let missing = ws_client(&s.relay, "/v1/routes/ws/missing", &s.key, "echo").await;
    assert_eq!(missing["status"], 404, "{missing}");
    assert_eq!(missing["body"], "nothing here\n", "{missing}");
}

#[tokio::test]
async fn a_bad_101_is_502_and_the_upstream_never_gets_a_caller_byte() {
    let bad: [&'static [u8]; 4] = [
        // Wrong Sec-WebSocket-Accept.
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        // No Upgrade field.
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        // Another protocol.
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        // Bytes before the status line.
        b"garbage\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    ];
    for answer in bad {
        let (addr, seen) = raw_upstream(Answer::Bytes(answer)).await;
        let s = setup("", &raw_route("raw", addr, "[\"GET\"]", "[\"websocket\"]")).await;
        let (head, _, _tcp) = raw_caller(
            &s.relay,
            "GET /v1/routes/raw/socket",
            &s.key,
            WS_HEAD,
            b"CALLER-BYTES-EARLY",
        )
        .await;
        assert_eq!(
            status_of(&head),
            502,
            "{head}\nanswer: {}",
            String::from_utf8_lossy(answer)
        );
        // The agent closes the upstream connection: everything it ever
        // sent there is in.
        until(LIMIT, "the upstream connection closed", || async {
            seen.lock().unwrap().first().is_some_and(|g| g.closed)
        })
        .await;
        let got = seen.lock().unwrap()[0].clone();
        assert!(got.head.starts_with("GET /socket HTTP/1.1"), "{got:?}");
        assert!(
            got.after.is_empty(),
            "caller bytes reached the upstream: {got:?}"
        );
    }
}

#[tokio::test]
async fn an_spdy_upgrade_is_checked_as_post_and_echoes_bytes_with_half_close() {
    let (addr, seen) = raw_upstream(Answer::Spdy).await;
    let config = format!(
        "{}\n{}",
        raw_route("exec", addr, "[\"GET\", \"POST\"]", "[\"SPDY/3.1\"]"),
        raw_route("readonly", addr, "[\"GET\"]", "[\"SPDY/3.1\"]"),
    );
    let s = setup("", &config).await;
    let spdy = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n";

    let (head, _, _tcp) = raw_caller(
        &s.relay,
        "POST /v1/routes/readonly/api/v1/namespaces/x/pods/p/exec",
        &s.key,
        spdy,
        b"",
    )
    .await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the readonly route dialled"
    );

    let (head, rest, mut tcp) = raw_caller(
        &s.relay,
        "POST /v1/routes/exec/api/v1/namespaces/x/pods/p/exec?command=sh",
        &s.key,
        spdy,
        b"",
    )
    .await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(header_of(&head, "upgrade").as_deref(), Some("SPDY/3.1"));
    assert!(rest.is_empty());
    tcp.write_all(b"spdy frames both ways").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(LIMIT, tcp.read_to_end(&mut echoed))
        .await
        .expect("echo and close")
        .unwrap();
    assert_eq!(echoed, b"spdy frames both ways");
    let got = seen.lock().unwrap()[0].clone();
    assert!(
        got.head
            .starts_with("POST /api/v1/namespaces/x/pods/p/exec?command=sh HTTP/1.1"),
        "{got:?}"
    );
}

#[tokio::test]
async fn malformed_upgrades_are_400_and_callers_cannot_choose_the_method() {
    let ws = WsServer::start();
    let s = setup("", &ws.route("ws", INJECT)).await;
    let cases = [
        "Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: SPDY/3.1\r\n",
        "Connection: Upgrade\r\nUpgrade: h2c\r\n",
        "Connection: Upgrade\r\n",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n",
    ];
    for lines in cases {
        let (head, _, _) =
            raw_caller(&s.relay, "GET /v1/routes/ws/x", &s.key, lines, b"hello").await;
        assert_eq!(status_of(&head), 400, "{lines:?}: {head}");
    }
    let long = format!("Connection: Upgrade\r\nUpgrade: {}\r\n", "w".repeat(10_000));
    let (head, _, _) = raw_caller(&s.relay, "GET /v1/routes/ws/x", &s.key, &long, b"").await;
    assert_eq!(status_of(&head), 400, "{head}");

    // A caller naming the relay's method header is ignored: the route
    // allows GET only and the upgrade goes as the GET it is.
    let sneaky = format!(
        "{WS_HEAD}Sec-WebSocket-Protocol: tether.test.v1\r\nTether-Upgrade-Method: POST\r\n"
    );
    let (head, _, _tcp) = raw_caller(&s.relay, "GET /v1/routes/ws/x", &s.key, &sneaky, b"").await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(
        header_of(&head, "sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(ws.connections().is_empty() || ws.connections().len() == 1);
}

#[tokio::test]
async fn upgrade_limits_answer_429_and_an_idle_connection_is_closed() {
    let ws = WsServer::start();
    let config = format!(
        "{}\n[limits]\nmax_upgraded = 1\nupgrade_idle_timeout = \"3s\"\n",
        ws.route("ws", INJECT)
    );
    let s = setup("", &config).await;
    let (first, held) = hold(&s.relay, "/v1/routes/ws/a", &s.key);
    assert_eq!(first["subprotocol"], "tether.test.v1", "{first}");
    let second = ws_client(&s.relay, "/v1/routes/ws/b", &s.key, "echo").await;
    assert_eq!(second["status"], 429, "{second}");
    assert_eq!(second["response_headers"]["retry-after"], "1", "{second}");
    // Nothing moves on the held connection: the agent closes it.
    let ended = held.ended().await;
    assert_eq!(ended["closed"], true, "{ended}");
    until(LIMIT, "the idle connection in the server's log", || async {
        !ws.connections().is_empty()
    })
    .await;
    let text = s.agent.log.lock().unwrap().join("\n");
    assert!(text.contains("decision=idle_timeout"), "no idle close line");

    // The relay's per-key limit.
    let ws2 = WsServer::start();
    let s2 = setup(
        "[limits]\nmax_upgraded_per_key = 1\n",
        &ws2.route("ws", INJECT),
    )
    .await;
    let (_, held) = hold(&s2.relay, "/v1/routes/ws/a", &s2.key);
    let second = ws_client(&s2.relay, "/v1/routes/ws/b", &s2.key, "echo").await;
    assert_eq!(second["status"], 429, "{second}");
    drop(held);
}

/// The caller's connection ended (closed, not failed) and the server saw
/// its connection end too.
async fn both_ends_closed(held: Held, ws: &WsServer) {
    let ended = held.ended().await;
    assert_eq!(ended["closed"], true, "{ended}");
    until(LIMIT, "the server saw the connection end", || async {
        ws.connections().len() == 1
    })
    .await;
}

#[tokio::test]
async fn revoking_the_key_closes_its_upgraded_connections() {
    let ws = WsServer::start();
    let s = setup("", &ws.route("ws", INJECT)).await;
    let (_, held) = hold(&s.relay, "/v1/routes/ws/a", &s.key);
    s.relay.cli_output(&["keys", "revoke", &s.key[4..20]]);
    both_ends_closed(held, &ws).await;
}

#[tokio::test]
async fn killing_the_agent_mid_connection_closes_both_ends() {
    let ws = WsServer::start();
    let mut s = setup("", &ws.route("ws", INJECT)).await;
    let (_, held) = hold(&s.relay, "/v1/routes/ws/a", &s.key);
    s.agent.kill();
    both_ends_closed(held, &ws).await;
}

#[tokio::test]
async fn killing_the_relay_mid_connection_closes_both_ends() {
    let ws = WsServer::start();
    let mut s = setup("", &ws.route("ws", INJECT)).await;
    let (_, held) = hold(&s.relay, "/v1/routes/ws/a", &s.key);
    s.relay.kill();
    both_ends_closed(held, &ws).await;
}

#[tokio::test]
async fn sixty_four_upgrades_whose_callers_stop_reading_do_not_stall_ordinary_requests() {
    let (flood, _) = raw_upstream(Answer::Flood).await;
    let upstream = Upstream::start().await;
    let config = format!(
        "{}\n{}",
        raw_route("flood", flood, "[\"GET\"]", "[\"websocket\"]"),
        upstream.route("plain", "[\"GET\"]", "[\"/**\"]"),
    );
    let s = setup("", &config).await;
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let (head, _, tcp) =
            raw_caller(&s.relay, "GET /v1/routes/flood/x", &s.key, WS_HEAD, b"").await;
        assert_eq!(status_of(&head), 101, "{head}");
        stalled.push(tcp); // never read again
    }
    let auth = format!("Bearer {}", s.key);
    for _ in 0..5 {
        let answer = tokio::time::timeout(
            LIMIT,
            get(
                &s.relay.url("/v1/routes/plain/hello"),
                &[("proxy-authorization", &auth)],
            ),
        )
        .await
        .expect("an ordinary request answered beside 64 stalled upgrades");
        assert_eq!(answer.0, 200);
    }
    drop(stalled);
}

#[tokio::test]
async fn forward_mode_upgrades_only_where_forward_upgrades_allow() {
    let ws = WsServer::start();
    let origin = format!("http://{}", ws.addr);
    let forward = |upgrades: &str| {
        format!(
            "[forward]\nallow = [\"127.0.0.1/32\"]\n{upgrades}\n\
             [forward.headers.\"{origin}\"]\nX-Handshake-Token = \"Bearer ${{{{ secrets.ws }}}}\"\n"
        )
    };
    let path = format!("/v1/forward/http/{}/chat", ws.addr);

    let off = setup("", &forward("")).await;
    let refused = ws_client(&off.relay, &path, &off.key, "echo").await;
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(ws.connections().is_empty());
    drop(off);

    let on = setup("", &forward("upgrades = [\"websocket\"]")).await;
    let echo = ws_client(&on.relay, &path, &on.key, "echo").await;
    assert_eq!(echo["text"], "hello through the tunnel", "{echo}");
    assert_eq!(echo["binary_sent"], echo["binary_back"], "{echo}");
    until(LIMIT, "the connection in the server's log", || async {
        ws.connections().len() == 1
    })
    .await;
    let seen = &ws.connections()[0];
    assert_eq!(
        seen["headers"]["x-handshake-token"],
        format!("Bearer {SECRET}")
    );
}

#[tokio::test]
async fn sigterm_lets_an_upgraded_connection_run_until_the_drain_timeout() {
    let ws = WsServer::start();
    let s = setup("", &ws.route("ws", INJECT)).await;
    let (_, mut held) = hold_in(&s.relay, "/v1/routes/ws/a", &s.key, "drain");
    s.agent.signal("TERM");
    {
        use std::io::Write;
        let stdin = held.child.stdin.as_mut().unwrap();
        stdin.write_all(b"term\n").unwrap();
        stdin.flush().unwrap();
    }
    // The support agent's drain_timeout is 2 s: the connection keeps
    // echoing after SIGTERM, then is closed.
    let ended = held.ended().await;
    assert_eq!(ended["closed"], true, "{ended}");
    assert!(ended["echoes_after_term"].as_u64().unwrap() > 0, "{ended}");
    until(LIMIT, "the server saw the connection end", || async {
        ws.connections().len() == 1
    })
    .await;
}

#[tokio::test]
async fn an_http2_caller_upgrades_with_extended_connect() {
    use futures_util::{SinkExt, StreamExt};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let ws = WsServer::start();
    let s = setup("", &ws.route("ws", INJECT)).await;
    let tcp = TcpStream::connect(s.relay.public).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    // A first request lets the relay's SETTINGS (ENABLE_CONNECT_PROTOCOL) arrive.
    let health = http::Request::get(s.relay.url("/healthz"))
        .body(tether_wire::empty_body())
        .unwrap();
    assert_eq!(sender.send_request(health).await.unwrap().status(), 200);

    let mut connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(s.relay.url("/v1/routes/ws/h2chat"))
        .header("proxy-authorization", format!("Bearer {}", s.key))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "tether.test.v2")
        .body(tether_wire::empty_body())
        .unwrap();
    connect
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = tokio::time::timeout(LIMIT, sender.send_request(connect))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "tether.test.v2"
    );
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    let io = hyper::upgrade::on(&mut response).await.unwrap();
    let mut socket =
        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None)
            .await;
    let hello = socket.next().await.unwrap().unwrap();
    assert!(
        hello.to_text().unwrap().contains("tether.test.v2"),
        "{hello:?}"
    );
    socket.send(Message::text("over h2")).await.unwrap();
    let echo = socket.next().await.unwrap().unwrap();
    assert_eq!(echo.to_text().unwrap(), "over h2");
    socket.close(None).await.unwrap();
    // The close handshake done, the client lets go of its stream.
    while socket.next().await.is_some() {}
    drop(socket);
    until(LIMIT, "the server saw the connection", || async {
        ws.connections().len() == 1
    })
    .await;
    let seen = &ws.connections()[0];
    assert_eq!(seen["path"], "/h2chat");
    assert_eq!(
        seen["headers"]["x-handshake-token"],
        format!("Bearer {SECRET}")
    );
}
