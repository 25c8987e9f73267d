//! The identity issuer's keys as the agent keeps them (DESIGN.md, "End-user
//! identity"): rotation picked up on an unknown `kid`, cached keys while
//! the issuer is down then 502, the JWKS fetch's limits (no redirects,
//! 256 KiB) and its way out (https, the egress proxy, `ca_file`).

mod support;

#[path = "support/oidc_issuer.rs"]
mod oidc_issuer;

use std::time::Duration;

use http::StatusCode;
use oidc_issuer::{Issuer, World, assert_invalid};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    // A long periodic refresh: only the unknown `kid` makes the agent
    // fetch the keys again.
    let mut w = World::start("jwks_refresh = \"1h\"").await;
    let old = w.issuer.token("jane").await;
    let (status, _, _) = w.call("GET", "k8s/x", Some(&old), &[]).await;
    assert_eq!(status, StatusCode::OK);

    let port = w.issuer.port;
    w.issuer.kill();
    w.issuer = Issuer::start(port, "key-2");
    let new = w.issuer.token("jane").await;
    let (status, _, doc) = w.call("GET", "k8s/x", Some(&new), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    // The old key is gone from the JWKS: its tokens no longer pass (the
    // cache was emptied when the keys changed).
    let (status, headers, doc) = w.call("GET", "k8s/x", Some(&old), &[]).await;
    assert_invalid(status, &headers, &doc, &old);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_issuer_means_cached_keys_then_502() {
    let mut w = World::start("jwks_refresh = \"1s\"\njwks_max_age = \"15s\"").await;
    let jane = w.issuer.token("jane").await;
    let bob = w.issuer.token("bob").await;
    let (status, _, _) = w.call("GET", "k8s/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK);
    w.issuer.kill();
    until(Duration::from_secs(30), "a failed key refresh", || async {
        w.agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("cannot fetch the issuer's keys"))
    })
    .await;
    // A reload (SIGHUP) keeps the keys it has: the issuer need not be up.
    w.agent.signal("HUP");
    until(Duration::from_secs(20), "the reload", || async {
        w.agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("configuration reloaded"))
    })
    .await;
    // A token never seen before still verifies with the cached keys.
    let (status, _, doc) = w.call("GET", "admins/x", Some(&bob), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    until(
        Duration::from_secs(30),
        "keys past jwks_max_age",
        || async {
            let (status, _, doc) = w.call("GET", "k8s/x", Some(&jane), &[]).await;
            status == StatusCode::BAD_GATEWAY && doc["code"] == "identity_unavailable"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_redirects_and_oversized_documents_are_not_taken() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let key = relay.key("acme");
    let token = relay.token("acme");
    let up = upstream.addr;
    // A JWKS URL that redirects (to a document that would be usable), and
    // one over 256 KiB.
    let cases = [
        (
            "redirected",
            format!("http://{up}/redirect/127.0.0.1:{}/", up.port()),
            "answered 302",
        ),
        (
            "oversized",
            format!("http://{up}/bytes/300000"),
            "over 262144 bytes",
        ),
    ];
    let mut agents = Vec::new();
    for (name, jwks_url, _) in &cases {
        let config = format!(
            "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n\n[agent]\nname = \"{name}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [identity]\nissuer = \"http://127.0.0.1\"\njwks_url = \"{jwks_url}\"\n\n\
             [routes.{name}]\nurl = \"http://{up}\"\npaths = [\"/**\"]\nidentity = \"required\"\n",
            relay.agent_url()
        );
        agents.push(Agent::spawn(&config, &[]));
    }
    relay.wait_sessions(4).await;
    for ((name, _, logged), agent) in cases.iter().zip(&agents) {
        let (status, headers, bytes) = get(
            &relay.url(&format!("/v1/routes/{name}/x")),
            &[
                ("proxy-authorization", &format!("Bearer {key}")),
                ("authorization", "Bearer a.b.c"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}");
        assert_eq!(problem_code(&headers, &bytes), "identity_unavailable");
        let log = agent.log.lock().unwrap().join("\n");
        assert!(log.contains(logged), "{name}: {log}");
    }
}

/// An https server for one name (certificate from a CA of the test's own)
/// answering every request with `document`; the certificate's PEM.
async fn https_jwks(name: &str, document: String) -> (std::net::SocketAddr, String) {
    use tokio::io::AsyncWriteExt;
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, document) = (acceptor.clone(), document.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if raw_http::read_head(&mut tls).await.is_none() {
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{document}",
                    document.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, pem)
}

/// A CONNECT proxy that sends every tunnel to `to` (so a name that does
/// not resolve still reaches a server on loopback) and records the
/// targets asked for.
async fn pinning_proxy(
    to: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = raw_http::read_head(&mut client).await else {
                    return;
                };
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(line);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, asked)
}

// In a network namespace of its own (loopback only, no name server): the
// JWKS host is a name only the proxy knows; were the proxy not used, the
// agent's lookup of it fails there without a packet leaving the machine.
netns_test!(
    the_jwks_is_fetched_over_https_through_the_egress_proxy_with_the_configured_ca,
    jwks_through_the_proxy
);

async fn jwks_through_the_proxy() {
    let issuer = Issuer::start(0, "key-1");
    let document = issuer.jwks().await.to_string();
    let (server, pem) = https_jwks("idp.example.test", document).await;
    let (proxy, asked) = pinning_proxy(server).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), pem).unwrap();
    let extra = format!(
        "jwks_url = \"https://idp.example.test/jwks\"\nca_file = \"{}\"",
        ca.path().display()
    );
    let proxy_url = format!("http://{proxy}");
    let w = World::start_with(issuer, &extra, &[("HTTPS_PROXY", proxy_url.as_str())]).await;
    let jane = w.issuer.token("jane").await;
    let (status, _, doc) = w.call("GET", "k8s/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|l| l.starts_with("CONNECT idp.example.test:443 ")),
        "{asked:?}"
    );
}
