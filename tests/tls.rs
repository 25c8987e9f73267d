//! TLS: the relay terminates it with its own certificate; the agent verifies
//! the relay's certificate by default and each HTTPS upstream's against the
//! system roots plus the route's `ca_file`; with `client_cert_file` it
//! presents a client certificate (mTLS through a terminating balancer).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tokio_util::sync::CancellationToken;

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM.
fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn https_get(url: &str, ca: &Path, headers: &[(&str, &str)]) -> (StatusCode, bytes::Bytes) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, tether_wire::BoxBody> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = client
        .request(req.body(tether_wire::empty_body()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn agent_reaches_a_tls_relay_only_when_it_trusts_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path());
    let relay = Relay::start(&format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let token = relay.token("acme");
    let api_key = relay.key("acme");
    let upstream = Upstream::start().await;
    let routes = upstream.route("r", "[\"GET\"]", "[\"/**\"]");
    let url = format!("wss://localhost:{}/v1/agent/connect", relay.public.port());

    // Default: system roots only; the self-signed relay is not trusted.
    let untrusting = Agent::start(&url, &token, "a", &routes);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(relay.sessions().await, 0);
    drop(untrusting);

    // With the relay's CA: sessions come up, requests go through.
    let _agent = Agent::start_with(
        &url,
        &token,
        "a",
        &format!("ca_file = \"{}\"", cert.display()),
        &routes,
    );
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {api_key}");
    let (status, body) = https_get(
        &format!("https://localhost:{}/v1/routes/r/echo", relay.public.port()),
        &cert,
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn https_upstream_needs_its_route_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let addr = tether_sample_upstream::start_with_tls(
        "127.0.0.1:0".parse().unwrap(),
        Some(acceptor(&cert, &key)),
        shutdown,
    )
    .await
    .unwrap();
    let relay = Relay::start("");
    let token = relay.token("acme");
    let api_key = relay.key("acme");
    let routes = format!(
        "[routes.trusted]\nurl = \"https://localhost:{port}\"\npaths = [\"/**\"]\nca_file = \"{}\"\n\n\
         [routes.untrusted]\nurl = \"https://localhost:{port}\"\npaths = [\"/**\"]\n",
        cert.display(),
        port = addr.port()
    );
    let _agent = Agent::start(&relay.agent_url(), &token, "a", &routes);
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {api_key}");
    let h = [("proxy-authorization", auth.as_str())];

    let (status, _, body) = get(&relay.url("/v1/routes/trusted/echo"), &h).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, headers, body) = get(&relay.url("/v1/routes/untrusted/echo"), &h).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_code(&headers, &body), "upstream_unreachable");
}

/// A TLS terminator in front of the relay's plain listener that demands a
/// client certificate issued by `client_ca` (what a load balancer doing
/// mTLS does); counts the handshakes it accepted.
async fn mtls_terminator(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    relay: SocketAddr,
) -> (SocketAddr, Arc<AtomicU64>) {
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(client_ca).unwrap())
        .unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let Ok(mut plain) = tokio::net::TcpStream::connect(relay).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn agent_presents_its_client_certificate_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, server_key) = write_cert(dir.path());
    // A client CA and a certificate it issued for the agent.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["agent-a".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let ca_pem = dir.path().join("client-ca.pem");
    let (cert_pem, key_pem) = (dir.path().join("agent.pem"), dir.path().join("agent.key"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, client_cert.pem()).unwrap();
    std::fs::write(&key_pem, client_key.serialize_pem()).unwrap();

    let relay = Relay::start("");
    let token = relay.token("acme");
    let upstream = Upstream::start().await;
    let routes = upstream.route("r", "[\"GET\"]", "[\"/**\"]");
    let (front, accepted) = mtls_terminator(&server_cert, &server_key, &ca_pem, relay.public).await;
    let url = format!("wss://localhost:{}/v1/agent/connect", front.port());
    let trust = format!("ca_file = \"{}\"\n", server_cert.display());

    // Without a client certificate the terminator refuses the handshake.
    let anonymous = Agent::start_with(&url, &token, "a", &trust, &routes);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(relay.sessions().await, 0);
    assert_eq!(accepted.load(Ordering::Relaxed), 0);
    drop(anonymous);

    let _agent = Agent::start_with(
        &url,
        &token,
        "a",
        &format!(
            "{trust}client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            cert_pem.display(),
            key_pem.display()
        ),
        &routes,
    );
    relay.wait_sessions(2).await;
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
}
