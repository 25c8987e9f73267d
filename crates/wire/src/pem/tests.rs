//! Unit tests of the PEM loader, with certificates made here (rcgen).

use super::*;

/// A self-signed certificate for `name` and its key, as PEM.
fn pair(name: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

#[test]
fn a_certificate_and_its_key_make_server_and_client_configs() {
    let files = Files::new();
    let (cert, key) = pair("relay.test");
    let cert = files.write("cert.pem", &cert);
    let key = files.write("key.pem", &key);
    let server = server_config(&cert, &key, &[b"h2", b"http/1.1"]).unwrap();
    assert_eq!(
        server.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let mut roots = RootCertStore::empty();
    add_ca_bundle(&mut roots, &cert).unwrap();
    assert_eq!(roots.len(), 1);
    client_config(roots, Some((&cert, &key))).unwrap();
}

#[test]
fn a_ca_bundle_adds_every_certificate() {
    let files = Files::new();
    let bundle = format!("{}\n{}", pair("a.test").0, pair("b.test").0);
    let bundle = files.write("bundle.pem", &bundle);
    let mut roots = RootCertStore::empty();
    add_ca_bundle(&mut roots, &bundle).unwrap();
    assert_eq!(roots.len(), 2);
}

#[test]
fn an_empty_file_holds_neither_certificate_nor_key() {
    let files = Files::new();
    let empty = files.write("empty.pem", "");
    assert!(matches!(certificates(&empty), Err(PemError::NoCertificate { path }) if path == empty));
    assert!(matches!(private_key(&empty), Err(PemError::NoKey { path }) if path == empty));
    let mut roots = RootCertStore::empty();
    assert!(matches!(
        add_ca_bundle(&mut roots, &empty),
        Err(PemError::NoCertificate { .. })
    ));
}

#[test]
fn a_key_given_as_certificate_and_a_certificate_given_as_key_are_named() {
    let files = Files::new();
    let (cert, key) = pair("relay.test");
    let cert = files.write("cert.pem", &cert);
    let key = files.write("key.pem", &key);
    let err = server_config(&key, &cert, &[]).unwrap_err();
    assert!(
        matches!(&err, PemError::NoCertificate { path } if *path == key),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("{}: no PEM certificate found", key.display())
    );
    assert!(matches!(private_key(&cert), Err(PemError::NoKey { path }) if path == cert));
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let files = Files::new();
    let (cert, _) = pair("relay.test");
    let (_, other_key) = pair("other.test");
    let cert = files.write("cert.pem", &cert);
    let other_key = files.write("other-key.pem", &other_key);
    let err = server_config(&cert, &other_key, &[]).unwrap_err();
    assert!(
        matches!(&err, PemError::KeyMismatch { cert: c, key: k } if *c == cert && *k == other_key),
        "{err}"
    );
    let err = client_config(RootCertStore::empty(), Some((&cert, &other_key))).unwrap_err();
    assert!(matches!(err, PemError::KeyMismatch { .. }), "{err}");
}

#[test]
fn broken_pem_and_unusable_certificates_are_refused() {
    let files = Files::new();
    let bad_base64 = files.write(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    assert!(matches!(
        certificates(&bad_base64),
        Err(PemError::Malformed { .. })
    ));
    let unterminated = files.write("open.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
    assert!(matches!(
        certificates(&unterminated),
        Err(PemError::Malformed { .. })
    ));
    // Valid PEM, not a certificate inside.
    let garbage = files.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let mut roots = RootCertStore::empty();
    assert!(matches!(
        add_ca_bundle(&mut roots, &garbage),
        Err(PemError::BadCa { .. })
    ));
}

#[test]
fn a_missing_file_is_a_read_error_that_names_it() {
    let files = Files::new();
    let missing = files.0.path().join("missing.pem");
    let err = certificates(&missing).unwrap_err();
    assert!(
        matches!(&err, PemError::Read { path, .. } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().starts_with(&missing.display().to_string()));
    assert!(matches!(private_key(&missing), Err(PemError::Read { .. })));
}

#[test]
fn errors_never_carry_the_key() {
    let files = Files::new();
    let (cert, key_text) = pair("relay.test");
    let key = files.write("key.pem", &key_text);
    let cert = files.write("cert.pem", &cert);
    let (_, other) = pair("other.test");
    let other = files.write("other.pem", &other);
    for err in [
        server_config(&key, &key, &[]).unwrap_err(),
        server_config(&cert, &other, &[]).unwrap_err(),
    ] {
        let text = format!("{err} {err:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let body: String = key_text.lines().nth(1).unwrap().to_owned();
        assert!(!text.contains(&body), "{text}");
    }
}
