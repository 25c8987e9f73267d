//! Forward mode's SSRF guard through the real binaries, beyond the lists:
//! the agent's own host (its admin port, its other addresses, its egress
//! proxy, its Vault), names in `deny`, and one answer for every refused
//! target so a caller cannot map internal DNS through the agent.
//!
//! Each test runs in namespaces of its own (`support::netns`): loopback
//! only, extra addresses put on `lo` standing for the host's pod IPs, and a
//! private `/etc/hosts` giving test names those addresses.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::connect_proxy::ConnectProxy;
use support::netns::{add_hosts, add_loopback_address};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An agent of the account `token` belongs to, its admin listener on
/// `admin`, extra `[relay]` keys, then the rest of the config (`[forward]`,
/// `[vault]`).
fn spawn_agent(relay: &Relay, token: &str, admin: &str, relay_extra: &str, rest: &str) -> Agent {
    Agent::spawn(
        &format!(
            "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n{relay_extra}\n[agent]\nname = \"guarded\"\n\
             [admin]\nlisten = \"{admin}\"\n\n{rest}",
            relay.agent_url()
        ),
        &[],
    )
}

/// What a caller learns from an answer: status, problem code and detail
/// (the request id, different for every request, left out).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    code: String,
    detail: String,
}

impl Answer {
    fn of(status: u16, body: &[u8]) -> (Self, serde_json::Value) {
        let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
        let answer = Self {
            status,
            code: text("code"),
            detail: text("detail"),
        };
        (answer, doc)
    }

    fn refused() -> Self {
        Self {
            status: 403,
            code: "denied".into(),
            detail: "forward: target not allowed".into(),
        }
    }
}

/// `GET /v1/forward/http/{target}/{rest}` with `key`.
async fn forward(
    relay: &Relay,
    key: &str,
    target: &str,
    rest: &str,
) -> (Answer, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let url = relay.url(&format!("/v1/forward/http/{target}/{rest}"));
    let (status, _, body) = get(&url, &[("proxy-authorization", &auth)]).await;
    Answer::of(status.as_u16(), &body)
}

netns_test!(
    forward_never_reaches_the_agents_own_host_unless_its_exact_address_is_allowed,
    own_host_body
);

async fn own_host_body() {
    add_loopback_address("10.200.0.1");
    let relay = Relay::start("");
    let beside = Upstream::start_on("10.200.0.1:0").await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    // As the Helm chart runs it: admin on every interface, `allow`
    // covering the pod network.
    let agent = spawn_agent(
        &relay,
        &token,
        "0.0.0.0:0",
        "",
        "[forward]\nallow = [\"10.200.0.0/16\"]\n",
    );
    relay.wait_sessions(2).await;
    let admin = agent.admin.port();

    // The admin listener answers directly on the host's addresses…
    for ip in ["127.0.0.1", "10.200.0.1"] {
        let (status, _, body) = get(&format!("http://{ip}:{admin}/metrics"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{ip}");
        assert!(String::from_utf8_lossy(&body).contains("tether_agent"));
    }
    // …never through forward mode, nor does another port of the host.
    for target in [
        format!("10.200.0.1:{admin}"),
        format!("10.200.0.1:{}", beside.addr.port()),
    ] {
        let (answer, doc) = forward(&relay, &key, &target, "metrics").await;
        assert_eq!(answer, Answer::refused(), "{target}: {doc}");
    }
    assert_eq!(beside.count().await, 0);

    // An address the host gains later is covered too: own addresses are
    // re-read.
    add_loopback_address("10.200.0.2");
    let later = Upstream::start_on("10.200.0.2:0").await;
    let target = format!("10.200.0.2:{}", later.addr.port());
    until(
        Duration::from_secs(10),
        "the new address refused",
        || async { forward(&relay, &key, &target, "echo").await.0 == Answer::refused() },
    )
    .await;

    // An agent whose `allow` names the exact address reaches the host's
    // other services (including a sibling agent's admin port: the caveat
    // docs/security.md states), never its own admin port.
    let (token, key) = (relay.token("exact"), relay.key("exact"));
    let exact = spawn_agent(
        &relay,
        &token,
        "0.0.0.0:0",
        "",
        "[forward]\nallow = [\"10.200.0.0/16\", \"10.200.0.1\"]\n",
    );
    relay.wait_sessions(4).await;
    let (answer, doc) = forward(
        &relay,
        &key,
        &format!("10.200.0.1:{}", beside.addr.port()),
        "echo",
    )
    .await;
    assert_eq!(answer.status, 200, "{doc}");
    let (answer, _) = forward(&relay, &key, &format!("10.200.0.1:{admin}"), "metrics").await;
    assert_eq!(answer.status, 200, "the sibling agent's admin port");
    let own = format!("10.200.0.1:{}", exact.admin.port());
    let (answer, doc) = forward(&relay, &key, &own, "metrics").await;
    assert_eq!(answer, Answer::refused(), "its own admin port: {doc}");
}

netns_test!(
    the_agents_egress_proxy_and_vault_are_refused_unless_named_exactly,
    own_services_body
);

async fn own_services_body() {
    add_loopback_address("10.200.0.5");
    add_hosts(&[
        ("vault.corp.internal", "10.200.0.5"),
        ("vault-alias.corp.internal", "10.200.0.5"),
    ]);
    let relay = Relay::start("");
    // Stands in for Vault; another service on the same address beside it.
    let vault = Upstream::start_on("10.200.0.5:0").await;
    let beside = Upstream::start_on("10.200.0.5:0").await;
    let proxy = ConnectProxy::start(None).await;
    let (v, p) = (vault.addr.port(), proxy.addr.port());
    let config = |more_allow: &str| {
        format!(
            "[vault]\naddress = \"http://vault.corp.internal:{v}\"\n\
             auth = {{ method = \"token\", token_file = \"/nonexistent\" }}\n\n\
             [forward]\nallow = [\"10.200.0.5\", \"127.0.0.1/32\", \"*.corp.internal\"{more_allow}]\n"
        )
    };
    let via_proxy = format!("proxy = \"http://{}\"", proxy.addr);
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let _agent = spawn_agent(&relay, &token, "127.0.0.1:0", &via_proxy, &config(""));
    relay.wait_sessions(2).await;
    assert_eq!(proxy.tunnels(), 2, "the agent reaches the relay through it");

    for target in [
        format!("vault.corp.internal:{v}"),
        format!("10.200.0.5:{v}"),
        format!("vault-alias.corp.internal:{v}"),
        format!("127.0.0.1:{p}"),
    ] {
        let (answer, doc) = forward(&relay, &key, &target, "x").await;
        assert_eq!(answer, Answer::refused(), "{target}: {doc}");
    }
    assert_eq!(vault.count().await, 0);
    let (answer, _) = forward(
        &relay,
        &key,
        &format!("vault.corp.internal:{}", beside.addr.port()),
        "echo",
    )
    .await;
    assert_eq!(answer.status, 200, "another port of the same host");

    // `allow` naming the exact host:port opens each.
    let (token, key) = (relay.token("opened"), relay.key("opened"));
    let _opened = spawn_agent(
        &relay,
        &token,
        "127.0.0.1:0",
        &via_proxy,
        &config(&format!(", \"vault.corp.internal:{v}\", \"127.0.0.1:{p}\"")),
    );
    relay.wait_sessions(4).await;
    for target in [
        format!("vault.corp.internal:{v}"),
        format!("10.200.0.5:{v}"),
    ] {
        let (answer, doc) = forward(&relay, &key, &target, "echo").await;
        assert_eq!(answer.status, 200, "{target}: {doc}");
    }
    let (answer, _) = forward(&relay, &key, &format!("127.0.0.1:{p}"), "x").await;
    assert_eq!(
        answer.status, 407,
        "the proxy itself answered (a GET is no CONNECT)"
    );
}

netns_test!(
    a_deny_name_denies_its_address_by_literal_and_by_another_name,
    deny_name_body
);

async fn deny_name_body() {
    add_loopback_address("10.200.0.7");
    add_loopback_address("10.200.0.8");
    add_hosts(&[
        ("vault.corp.internal", "10.200.0.7"),
        ("alias.corp.internal", "10.200.0.7"),
        ("jenkins.corp.internal", "10.200.0.8"),
    ]);
    let relay = Relay::start("");
    let secret = Upstream::start_on("10.200.0.7:0").await;
    let jenkins = Upstream::start_on("10.200.0.8:0").await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let _agent = spawn_agent(
        &relay,
        &token,
        "127.0.0.1:0",
        "",
        "[forward]\nallow = [\"10.200.0.7\", \"10.200.0.8\", \"*.corp.internal\"]\n\
         deny = [\"vault.corp.internal\"]\n",
    );
    relay.wait_sessions(2).await;
    let port = secret.addr.port();
    for host in [
        "vault.corp.internal",
        "10.200.0.7",
        "alias.corp.internal",
        "[::ffff:10.200.0.7]",
        "0xa.200.0.7",
    ] {
        let (answer, doc) = forward(&relay, &key, &format!("{host}:{port}"), "echo").await;
        assert_eq!(answer, Answer::refused(), "{host}: {doc}");
    }
    assert_eq!(secret.count().await, 0);
    let target = format!("jenkins.corp.internal:{}", jenkins.addr.port());
    let (answer, doc) = forward(&relay, &key, &target, "echo").await;
    assert_eq!(answer.status, 200, "a name not denied: {doc}");
}

/// Sends one request head to the relay's proxy listener (connection
/// closed after it) and reads the answer to the end: status and body.
async fn raw_proxy(proxy: SocketAddr, head: &str) -> (u16, Vec<u8>) {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the proxy listener answers and closes");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

/// The data of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..end]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
    out
}

netns_test!(
    every_refused_target_gets_the_same_answer_and_the_log_the_reason,
    same_answer_body
);

async fn same_answer_body() {
    add_loopback_address("10.200.0.9");
    add_loopback_address("10.200.0.10");
    add_hosts(&[
        ("outside.corp.internal", "10.99.0.1"),
        ("denied.corp.internal", "10.200.0.9"),
    ]);
    let relay = Relay::start_with_proxy("");
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let agent = spawn_agent(
        &relay,
        &token,
        "127.0.0.1:0",
        "",
        "[forward]\nallow = [\"10.200.0.0/16\", \"127.0.0.1/32\"]\ndeny = [\"denied.corp.internal\"]\n",
    );
    relay.wait_sessions(2).await;
    let admin = agent.admin.port();
    let targets = [
        "10.99.0.1".to_owned(),             // not on the list
        "outside.corp.internal".to_owned(), // resolves outside the allowed networks
        "nowhere.corp.internal".to_owned(), // does not resolve
        "denied.corp.internal".to_owned(),  // on the deny list
        "10.200.0.9".to_owned(),            // the address of a deny name
        "169.254.169.254".to_owned(),       // special
        "10.200.0.10:9".to_owned(),         // the agent's own host
        format!("127.0.0.1:{admin}"),       // its admin listener
    ];
    let mut request_ids = Vec::new();
    for target in &targets {
        let (answer, doc) = forward(&relay, &key, target, "x").await;
        assert_eq!(answer, Answer::refused(), "{target}: {doc}");
        request_ids.push(doc["request_id"].as_str().unwrap_or_default().to_owned());
    }

    // The proxy listener's absolute form and CONNECT end in the same
    // refusal, byte for byte but the request id.
    let proxy = relay.proxy.unwrap();
    let auth = format!("Proxy-Authorization: Bearer {key}\r\nConnection: close\r\n\r\n");
    for target in &targets {
        let (status, body) = raw_proxy(
            proxy,
            &format!("GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\n{auth}"),
        )
        .await;
        let (answer, doc) = Answer::of(status, &body);
        assert_eq!(answer, Answer::refused(), "absolute form {target}: {doc}");
        let authority = if target.contains(':') {
            target.clone()
        } else {
            format!("{target}:443")
        };
        let (status, body) = raw_proxy(
            proxy,
            &format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}"),
        )
        .await;
        let (answer, doc) = Answer::of(status, &body);
        assert_eq!(answer, Answer::refused(), "CONNECT {authority}: {doc}");
    }

    // The agent's own log keeps the reason, with the request id.
    let log = agent.log.lock().unwrap().join("\n");
    for (id, reason) in [
        (
            &request_ids[1],
            "resolves to 10.99.0.1, outside the allowed networks",
        ),
        (&request_ids[2], "cannot resolve nowhere.corp.internal"),
        (
            &request_ids[4],
            "address of denied.corp.internal, on the deny list",
        ),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(id.as_str()) && l.contains(reason)),
            "{reason} ({id}) not in the agent's log:\n{log}"
        );
    }
}
