//! gRPC through the real binaries, with a real gRPC server and client
//! (`grpcio`, tests/support/grpc_peer.py): unary and bidirectional
//! streaming calls through a route addressed by host (`[listen]
//! route_domain`, the agent speaking HTTP/2 to the upstream with
//! `upstream_http2`), `grpc-status`/`grpc-message` trailers, cancellation
//! and deadlines reaching the server, and a call through the proxy
//! listener's CONNECT (forward mode).

mod support;

use std::time::Duration;

use support::grpc_peer::{GrpcServer, grpc_call};
use support::*;

const DOMAIN: &str = "routes.relay.example.com";

/// A relay with `route_domain`, a gRPC server, and an agent serving it as
/// route `grpc` with `paths`.
struct GrpcStack {
    relay: Relay,
    server: GrpcServer,
    _agent: Agent,
    key: String,
}

impl GrpcStack {
    async fn start(paths: &str) -> Self {
        let relay = Relay::start_listening(&format!("route_domain = \"{DOMAIN}\""), "", false);
        let server = GrpcServer::start();
        let token = relay.token("acme");
        let key = relay.key("acme");
        let agent = Agent::start(
            &relay.agent_url(),
            &token,
            "agent-a",
            &server.route("grpc", paths),
        );
        relay.wait_sessions(2).await;
        Self {
            relay,
            server,
            _agent: agent,
            key,
        }
    }

    /// Client arguments calling `method` on route `grpc` by host, with the
    /// stack's key.
    fn call(&self, method: &str) -> Vec<String> {
        [
            "--target",
            &self.relay.public.to_string(),
            "--authority",
            &format!("grpc.{DOMAIN}"),
            "--key",
            &self.key,
            "--method",
            method,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|s| (*s).to_owned()));
    args
}

const ALL_METHODS: &str = r#"["/tether.test.Echo/*"]"#;

#[tokio::test]
async fn grpc_unary_reaches_a_route_addressed_by_host_under_the_routes_rules() {
    let stack = GrpcStack::start(r#"["/tether.test.Echo/Echo"]"#).await;

    let ok = grpc_call(&stack.call("Echo")).await;
    assert_eq!(ok.code, "OK", "{ok:?}");
    assert_eq!(ok.responses, ["echo:hello"]);
    // The route's header reached the server, its trailer came back.
    assert_eq!(ok.trailers["x-seen-route-header"], "set-by-agent", "{ok:?}");

    // The route's rules apply as for path routing: a method outside its
    // paths is 403 (PERMISSION_DENIED to a gRPC client), and no key is 401.
    let denied = grpc_call(&stack.call("Chat")).await;
    assert_eq!(denied.code, "PERMISSION_DENIED", "{denied:?}");
    let args = stack.call("Echo");
    let keyless: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| *a != "--key" && !(*i > 0 && args[i - 1] == "--key"))
        .map(|(_, a)| a.clone())
        .collect();
    let refused = grpc_call(&keyless).await;
    assert_eq!(refused.code, "UNAUTHENTICATED", "{refused:?}");

    // A host under the domain that is not one route label reaches nothing.
    let mut two_labels = stack.call("Echo");
    two_labels[3] = format!("a.grpc.{DOMAIN}");
    let unknown = grpc_call(&two_labels).await;
    assert_eq!(unknown.code, "UNIMPLEMENTED", "404: {unknown:?}");
}

#[tokio::test]
async fn grpc_bidirectional_streaming_goes_message_by_message_both_ways() {
    let stack = GrpcStack::start(ALL_METHODS).await;
    // The client sends each message only once the previous answer has
    // arrived: a relay or agent buffering either way stalls the call
    // until its deadline.
    let chat = grpc_call(&with(
        stack.call("Chat"),
        &[
            "--timeout",
            "20",
            "--message",
            "1",
            "--message",
            "2",
            "--message",
            "3",
            "--message",
            "4",
            "--message",
            "5",
        ],
    ))
    .await;
    assert_eq!(chat.code, "OK", "{chat:?}");
    assert_eq!(chat.responses, ["re:1", "re:2", "re:3", "re:4", "re:5"]);
}

#[tokio::test]
async fn grpc_status_and_message_trailers_reach_the_client() {
    let stack = GrpcStack::start(ALL_METHODS).await;
    let message = "nope: déjà vu, 100% denied";
    let failed = grpc_call(&with(stack.call("Fail"), &["--message", message])).await;
    assert_eq!(failed.code, "PERMISSION_DENIED", "{failed:?}");
    assert_eq!(failed.details, message, "grpc-message passed end to end");
}

#[tokio::test]
async fn grpc_cancellation_and_deadlines_reach_the_server() {
    let stack = GrpcStack::start(ALL_METHODS).await;
    let count = |server: &GrpcServer| server.printed_count("cancelled Hang");

    // The client cancels once the server has answered the head: its
    // RST_STREAM travels caller → relay → agent → server. The deadline is
    // far, so only the reset can end the call at the server.
    let cancelled = grpc_call(&with(stack.call("Hang"), &["--cancel", "--timeout", "120"])).await;
    assert_eq!(cancelled.code, "CANCELLED", "{cancelled:?}");
    assert_eq!(cancelled.trailers, serde_json::json!({}));
    until(
        Duration::from_secs(15),
        "server sees the cancellation",
        || async { count(&stack.server) == 1 },
    )
    .await;

    // A deadline ends the call at the server too (grpc-timeout and the
    // client's reset both pass).
    let late = grpc_call(&with(stack.call("Hang"), &["--timeout", "1"])).await;
    assert_eq!(late.code, "DEADLINE_EXCEEDED", "{late:?}");
    until(
        Duration::from_secs(15),
        "server sees the deadline",
        || async { count(&stack.server) == 2 },
    )
    .await;
}

netns_test!(
    grpc_unary_and_streaming_through_the_proxy_listeners_connect,
    grpc_through_connect_body
);

/// Forward mode: a gRPC client with `grpc.http_proxy` set to the relay's
/// proxy listener (key as the Basic password) tunnels to the server
/// through an agent whose `[forward]` lists admit it.
async fn grpc_through_connect_body() {
    let relay = Relay::start_with_proxy("");
    let server = GrpcServer::start();
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let port = server.addr.port();
    let _agent = Agent::start(
        &relay.agent_url(),
        &token,
        "fwd",
        &format!("[forward]\nallow = [\"127.0.0.1/32\"]\nconnect_ports = [{port}]\n"),
    );
    relay.wait_sessions(2).await;
    let proxy = format!("http://portal:{key}@{}", relay.proxy.unwrap());
    let args = |method: &str| -> Vec<String> {
        [
            "--target",
            &server.addr.to_string(),
            "--proxy",
            &proxy,
            "--method",
            method,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let ok = grpc_call(&args("Echo")).await;
    assert_eq!(ok.code, "OK", "{ok:?}");
    assert_eq!(ok.responses, ["echo:hello"]);
    let chat = grpc_call(&with(args("Chat"), &["--message", "a", "--message", "b"])).await;
    assert_eq!(chat.code, "OK", "{chat:?}");
    assert_eq!(chat.responses, ["re:a", "re:b"]);

    // Without the key the proxy refuses the tunnel (407).
    let keyless = format!("http://{}", relay.proxy.unwrap());
    let mut refused = args("Echo");
    refused[3] = keyless;
    let refused = grpc_call(&refused).await;
    assert_eq!(refused.code, "UNAVAILABLE", "{refused:?}");
}

/// A self-signed certificate for the route hosts, localhost and
/// 127.0.0.1, written as PEM (certificate, key).
fn write_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let names = vec![
        format!("*.{DOMAIN}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// Over TLS end to end (client → relay with ALPN h2, agent → gRPC server
/// with ALPN h2 by `upstream_http2` over `https`), and the route is the
/// one each request's `:authority` names, whatever the TLS SNI said.
#[tokio::test]
async fn grpc_over_tls_and_the_route_is_the_authoritys_not_the_sni() {
    use rustls_pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path());
    let relay = Relay::start_listening(
        &format!("route_domain = \"{DOMAIN}\""),
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        false,
    );
    let server = GrpcServer::start_tls(&cert, &key);
    let upstream = Upstream::start().await;
    let (token, api_key) = (relay.token("acme"), relay.key("acme"));
    let routes = format!(
        "[routes.grpc]\nurl = \"https://localhost:{}\"\nca_file = \"{}\"\nmethods = [\"POST\"]\n\
         paths = [\"/tether.test.Echo/*\"]\nupstream_http2 = true\n\n{}\n{}\
         headers = {{ x-route = \"second\" }}\n",
        server.addr.port(),
        cert.display(),
        upstream.route("sample", r#"["GET"]"#, r#"["/**"]"#),
        upstream.route("second", r#"["GET"]"#, r#"["/**"]"#),
    );
    let _agent = Agent::start_with(
        &format!("wss://127.0.0.1:{}/v1/agent/connect", relay.public.port()),
        &token,
        "agent-a",
        &format!("ca_file = \"{}\"", cert.display()),
        &routes,
    );
    relay.wait_sessions(2).await;

    let tls_call = |method: &str| -> Vec<String> {
        [
            "--target",
            &relay.public.to_string(),
            "--authority",
            &format!("grpc.{DOMAIN}"),
            "--ca",
            &cert.display().to_string(),
            "--key",
            &api_key,
            "--method",
            method,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let ok = grpc_call(&tls_call("Echo")).await;
    assert_eq!(ok.code, "OK", "{ok:?}");
    assert_eq!(ok.responses, ["echo:hello"]);
    let chat = grpc_call(&with(
        tls_call("Chat"),
        &["--message", "a", "--message", "b"],
    ))
    .await;
    assert_eq!(chat.responses, ["re:a", "re:b"], "{chat:?}");

    // SNI says `sample`, :authority says `second`: the request goes to
    // `second` (its header reaches the echo), on a connection whose
    // handshake named another host.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(relay.public).await.unwrap();
    let sni = rustls_pki_types::ServerName::try_from(format!("sample.{DOMAIN}")).unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(sni, tcp)
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake::<_, _, tether_wire::BoxBody>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://second.{DOMAIN}/echo"))
        .header("proxy-authorization", format!("Bearer {api_key}"))
        .body(tether_wire::empty_body())
        .unwrap();
    let response = h2.send_request(req).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["headers"]["x-route"][0], "second", "{doc}");
}

/// Cluster mode: a gRPC call reaching a replica that does not hold the
/// agent's session goes through the replica that does, unary, streaming
/// and trailers alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_call_reaching_a_replica_without_the_session_is_forwarded_to_its_peer() {
    let c = support::cluster::cluster_listening(2, &format!("route_domain = \"{DOMAIN}\"")).await;
    let (relays, token, key) = (&c.relays, &c.token, &c.key);
    let server = GrpcServer::start();
    // One session, on relay-1 only.
    let _agent = Agent::start_with(
        &relays[0].agent_url(),
        token,
        "agent-a",
        "connections = 1",
        &server.route("grpc", ALL_METHODS),
    );
    relays[0].wait_sessions(1).await;
    assert_eq!(relays[1].sessions().await, 0);

    let via_relay_2 = |method: &str| -> Vec<String> {
        [
            "--target",
            &relays[1].public.to_string(),
            "--authority",
            &format!("grpc.{DOMAIN}"),
            "--key",
            key,
            "--method",
            method,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    // Until relay-2 knows of the agent (presence).
    until(
        Duration::from_secs(15),
        "relay-2 forwards to the peer",
        || async { grpc_call(&via_relay_2("Echo")).await.code == "OK" },
    )
    .await;
    let answered = || relays[1].metric("tether_relay_peer_forwarded_total{outcome=\"answered\"}");
    let before = answered().await;
    let chat = grpc_call(&with(
        via_relay_2("Chat"),
        &["--message", "x", "--message", "y", "--message", "z"],
    ))
    .await;
    assert_eq!(chat.code, "OK", "{chat:?}");
    assert_eq!(chat.responses, ["re:x", "re:y", "re:z"]);
    let failed = grpc_call(&with(via_relay_2("Fail"), &["--message", "via the peer"])).await;
    assert_eq!(
        (failed.code.as_str(), failed.details.as_str()),
        ("PERMISSION_DENIED", "via the peer")
    );
    assert_eq!(answered().await, before + 2, "both went to the peer");
}
