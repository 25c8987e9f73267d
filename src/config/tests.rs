//! Unit tests of the configuration's validation.

use super::*;
use http::Method;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const MINIMAL: &str = r#"
[relay]
url = "wss://relay.example.com/v1/agent/connect"
token = " tta_x "

[agent]
name = "eu-prod-1"
tags = ["eu", "prod"]
instance = "pod-a"

[routes.jenkins]
url = "https://jenkins.internal:8443/base/"
methods = ["get", "POST"]
paths = ["/api/**"]
headers = { X-Team = "platform" }
"#;

#[test]
fn minimal_config_validates() {
    let c = AgentConfig::parse(Path::new("a.toml"), MINIMAL, &env(&[])).unwrap();
    assert_eq!(c.relay.connections, 2);
    assert_eq!(c.identity.instance, "pod-a");
    let r = &c.routes["jenkins"];
    assert_eq!(r.origin, "https://jenkins.internal:8443");
    assert_eq!(r.base_path, "/base");
    assert!(r.policy.check(&Method::POST, "/api/x").is_ok());
    assert!(r.policy.check(&Method::DELETE, "/api/x").is_err());
    match &c.relay.token {
        TokenSource::Inline(t) => assert_eq!(t.expose(), "tta_x"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_overrides_url_and_token() {
    let e = env(&[
        ("TETHER_RELAY_URL", "ws://127.0.0.1:1/v1/agent/connect"),
        ("TETHER_TOKEN", "t2\n"),
    ]);
    let c = AgentConfig::parse(Path::new("a.toml"), MINIMAL, &e).unwrap();
    assert_eq!(c.relay.url.scheme_str(), Some("ws"));
    match &c.relay.token {
        TokenSource::Inline(t) => assert_eq!(t.expose(), "t2"),
        other => panic!("{other:?}"),
    }
}

fn error_of(source: &str) -> String {
    AgentConfig::parse(Path::new("a.toml"), source, &env(&[]))
        .unwrap_err()
        .to_string()
}

#[test]
fn errors_name_file_line_and_key() {
    let bad_path = MINIMAL.replace("\"/api/**\"", "\"api\"");
    let e = error_of(&bad_path);
    assert!(e.starts_with("a.toml:14:"), "{e}");
    assert!(e.contains("routes.jenkins.paths"), "{e}");

    let unknown = MINIMAL.replace("tags = ", "tagz = ");
    let e = error_of(&unknown);
    assert!(e.starts_with("a.toml:8:"), "{e}");

    let bad_url = MINIMAL.replace("https://jenkins", "ftp://jenkins");
    let e = error_of(&bad_url);
    assert!(
        e.starts_with("a.toml:12:") && e.contains("routes.jenkins.url"),
        "{e}"
    );

    let userinfo = MINIMAL.replace("wss://relay", "wss://user:pw@relay");
    let e = error_of(&userinfo);
    assert!(e.starts_with("a.toml:3:") && !e.contains("pw@"), "{e}");

    let bad_relay = MINIMAL.replace("wss://relay", "https://relay");
    assert!(error_of(&bad_relay).starts_with("a.toml:3:"));

    let no_token = MINIMAL.replace("token = \" tta_x \"", "");
    assert!(error_of(&no_token).contains("token_file"));

    let placeholder = MINIMAL.replace("\"platform\"", "\"${{ secrets.x }}\"");
    let e = error_of(&placeholder);
    assert!(
        e.starts_with("a.toml:15:") && e.contains("unknown secret \"x\""),
        "{e}"
    );

    let two_sources = format!("{MINIMAL}\n[secrets.x]\nenv = \"A\"\nfile = \"/b\"\n");
    let e = error_of(&two_sources);
    assert!(
        e.starts_with("a.toml:17:") && e.contains("exactly one"),
        "{e}"
    );

    let vault_without_section =
        format!("{MINIMAL}\n[secrets.x]\nvault = {{ path = \"secret/data/a\", field = \"f\" }}\n");
    assert!(error_of(&vault_without_section).contains("no [vault] section"));

    let bad_target = format!(
        "{MINIMAL}\n[secrets.x]\nenv = \"A\"\ncallers = {{ targets = [\"https://a/b\"], headers = [\"authorization\"] }}\n"
    );
    assert!(error_of(&bad_target).contains("callers.targets"));

    let bad_method = MINIMAL.replace("\"get\"", "\"G ET\"");
    assert!(error_of(&bad_method).starts_with("a.toml:13:"));
}

#[test]
fn secrets_and_route_templates_validate() {
    let with_secret = MINIMAL.replace("\"platform\"", "\"Bearer ${{ secrets.jenkins_token }}\"")
        + "\n[secrets.jenkins_token]\nvault = { path = \"secret/data/ci/jenkins\", field = \"token\" }\n\
           ttl = \"1m\"\n\n[vault]\naddress = \"https://vault:8200\"\n\
           auth = { method = \"approle\", role_id = \"r\", secret_id_file = \"/s\" }\n";
    let c = AgentConfig::parse(Path::new("a.toml"), &with_secret, &env(&[])).unwrap();
    assert_eq!(c.secrets.len(), 1);
    assert_eq!(c.secrets[0].ttl, Duration::from_secs(60));
    let header = &c.routes["jenkins"].headers[0];
    assert!(header.literal.is_none());
    assert_eq!(
        header.template.secrets().collect::<Vec<_>>(),
        ["jenkins_token"]
    );
    assert_eq!(
        c.routes["jenkins"].target.to_string(),
        "https://jenkins.internal:8443"
    );
}

#[test]
fn systemd_credential_is_the_token_fallback() {
    let no_token = MINIMAL.replace("token = \" tta_x \"", "");
    let c = AgentConfig::parse(
        Path::new("a.toml"),
        &no_token,
        &env(&[(
            "CREDENTIALS_DIRECTORY",
            "/run/credentials/tether-agent.service",
        )]),
    )
    .unwrap();
    match c.relay.token {
        TokenSource::File(p) => assert!(p.ends_with("tether-agent.service/token")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn audit_required_defaults_to_true_with_a_file_and_needs_one() {
    let parse = |extra: &str| {
        AgentConfig::parse(
            Path::new("a.toml"),
            &format!("{MINIMAL}\n{extra}"),
            &env(&[]),
        )
    };
    let c = parse("[audit]\nfile = \"/var/lib/tether/audit.jsonl\"\n").unwrap();
    assert!(c.audit_required);
    let c = parse("[audit]\nfile = \"/a.jsonl\"\nrequired = false\n").unwrap();
    assert!(!c.audit_required);
    assert!(!parse("").unwrap().audit_required);
    let e = parse("[audit]\nrequired = true\n").unwrap_err().to_string();
    assert!(e.contains("needs [audit] file"), "{e}");
    let reserved = MINIMAL.replace("[routes.jenkins]", "[routes.forward]");
    assert!(error_of(&reserved).contains("reserved"));
}

#[test]
fn upstream_http2_picks_the_http2_only_client() {
    let c = AgentConfig::parse(Path::new("a.toml"), MINIMAL, &env(&[])).unwrap();
    assert_eq!(
        c.routes["jenkins"].protocol(),
        crate::upstream::Protocol::Negotiated
    );
    let h2 = format!("{MINIMAL}upstream_http2 = true\n");
    let c = AgentConfig::parse(Path::new("a.toml"), &h2, &env(&[])).unwrap();
    assert_eq!(
        c.routes["jenkins"].protocol(),
        crate::upstream::Protocol::Http2
    );
    let err = error_of(&format!("{MINIMAL}upstream_http2 = \"yes\"\n"));
    assert!(err.starts_with("a.toml:"), "{err}");
    // An upgrade is an HTTP/1.1 handshake: not on an HTTP/2-only route.
    let both = format!("{MINIMAL}upstream_http2 = true\nupgrades = [\"websocket\"]\n");
    let err = error_of(&both);
    assert!(err.starts_with("a.toml:"), "{err}");
    assert!(
        err.contains("upgrades cannot be used with upstream_http2"),
        "{err}"
    );
}
