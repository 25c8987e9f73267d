//! Secrets end to end: real OpenBao (Vault API) and moto_server (AWS
//! Secrets Manager) on 127.0.0.1, real relay and agent processes.

mod support;

use std::time::Duration;

use http::{Method, Request, StatusCode};
use serde_json::json;
use support::*;

/// Asserts no log line of `procs` contains any of `values`.
fn assert_never_logged(logs: &[&Log], values: &[&str]) {
    for log in logs {
        let lines = log.lock().unwrap();
        assert!(!lines.is_empty());
        for line in lines.iter() {
            for value in values {
                assert!(!line.contains(value), "secret value in a log line: {line}");
            }
        }
    }
}

fn agent_config(relay: &Relay, token: &str, rest: &str) -> String {
    format!(
        "drain_timeout = \"2s\"\n[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n\n[agent]\nname = \"a\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{rest}\n",
        relay.agent_url()
    )
}

async fn echo(
    relay: &Relay,
    key: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let mut all = vec![("proxy-authorization", auth.as_str())];
    all.extend_from_slice(headers);
    let (status, resp_headers, body) = get(&relay.url(path), &all).await;
    if status == StatusCode::OK {
        (status, serde_json::from_slice(&body).unwrap())
    } else {
        (
            status,
            json!({
                "code": problem_code(&resp_headers, &body),
                "detail": serde_json::from_slice::<serde_json::Value>(&body).unwrap()["detail"],
            }),
        )
    }
}

fn metric(text: &str, name: &str, secret: &str) -> u64 {
    let prefix = format!("{name}{{secret=\"{secret}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} not in metrics:\n{text}"))
}

// Multi-threaded: `check` runs as a blocking child while this runtime
// serves the upstream it probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_kv2_and_aws_json_key_are_injected_into_route_headers_and_never_logged() {
    let bao = OpenBao::start().await;
    bao.put_kv2("ci/jenkins", json!({ "token": "jk-SECRET-1" }))
        .await;
    // A KV v1 engine too: its answer has the fields directly under `data`.
    bao.api(
        Method::POST,
        "sys/mounts/kv1",
        Some(json!({ "type": "kv", "options": { "version": "1" } })),
    )
    .await;
    bao.api(
        Method::POST,
        "kv1/app",
        Some(json!({ "pw": "kv1-SECRET-7" })),
    )
    .await;
    let moto = Moto::start().await;
    moto.call(
        "CreateSecret",
        json!({ "Name": "prod/db", "SecretString": "{\"password\":\"pw-SECRET-2\",\"user\":\"app\"}" }),
    )
    .await;
    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vault_token = dir.path().join("vault-token");
    std::fs::write(&vault_token, format!("{}\n", bao.root_token)).unwrap();
    let rest = format!(
        "[routes.ci]\nurl = \"http://{up}\"\npaths = [\"/**\"]\n\
         headers = {{ X-Jenkins = \"Bearer ${{{{ secrets.jenkins }}}}\", X-Db = \"${{{{ secrets.db }}}}\", \
         X-Kv1 = \"${{{{ secrets.kv1 }}}}\" }}\n\n\
         [secrets.jenkins]\nvault = {{ path = \"secret/data/ci/jenkins\", field = \"token\" }}\n\n\
         [secrets.kv1]\nvault = {{ path = \"kv1/app\", field = \"pw\" }}\n\n\
         [secrets.db]\naws = {{ id = \"prod/db\", key = \"password\" }}\n\n\
         [vault]\naddress = \"{vault}\"\nauth = {{ method = \"token\", token_file = \"{tf}\" }}\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint = \"{moto}\"\n",
        up = upstream.addr,
        vault = bao.addr,
        tf = vault_token.display(),
        moto = moto.url,
    );
    let config = agent_config(&relay, &token, &rest);
    let agent = Agent::spawn(&config, &[]);
    relay.wait_sessions(2).await;

    let (status, doc) = echo(&relay, &key, "/v1/routes/ci/echo", &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["headers"]["x-jenkins"][0], "Bearer jk-SECRET-1");
    assert_eq!(doc["headers"]["x-db"][0], "pw-SECRET-2");
    assert_eq!(doc["headers"]["x-kv1"][0], "kv1-SECRET-7");

    // `check` resolves each secret and prints ok, never a value.
    let config_file = dir.path().join("agent.toml");
    std::fs::write(&config_file, &config).unwrap();
    let out = std::process::Command::new(bin("tether-agent"))
        .args(["check", "--config"])
        .arg(&config_file)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("secret jenkins (vault): ok"), "{stdout}");
    assert!(stdout.contains("secret db (aws): ok"), "{stdout}");
    assert!(stdout.contains("secret kv1 (vault): ok"), "{stdout}");
    assert!(!stdout.contains("SECRET"), "{stdout}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_never_logged(
        &[&agent.log, &relay.log],
        &[
            "jk-SECRET-1",
            "pw-SECRET-2",
            "kv1-SECRET-7",
            &bao.root_token,
        ],
    );
}

#[tokio::test]
async fn approle_login_reads_with_a_scoped_token() {
    let bao = OpenBao::start().await;
    bao.put_kv2("ci/jenkins", json!({ "token": "jk-APPROLE-1" }))
        .await;
    bao.api(
        Method::POST,
        "sys/auth/approle",
        Some(json!({ "type": "approle" })),
    )
    .await;
    bao.api(
        Method::PUT,
        "sys/policies/acl/tether",
        Some(json!({ "policy": "path \"secret/data/ci/*\" { capabilities = [\"read\"] }" })),
    )
    .await;
    bao.api(
        Method::POST,
        "auth/approle/role/tether",
        Some(json!({ "token_policies": ["tether"], "token_ttl": "1h" })),
    )
    .await;
    let role_id = bao
        .api(Method::GET, "auth/approle/role/tether/role-id", None)
        .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .api(Method::POST, "auth/approle/role/tether/secret-id", None)
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let secret_id_file = dir.path().join("secret-id");
    std::fs::write(&secret_id_file, &secret_id).unwrap();

    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let upstream = Upstream::start().await;
    let rest = format!(
        "[routes.ci]\nurl = \"http://{up}\"\npaths = [\"/**\"]\nheaders = {{ X-Jenkins = \"${{{{ secrets.jenkins }}}}\" }}\n\n\
         [secrets.jenkins]\nvault = {{ path = \"secret/data/ci/jenkins\", field = \"token\" }}\n\n\
         [vault]\naddress = \"{vault}\"\nauth = {{ method = \"approle\", role_id = \"{role_id}\", secret_id_file = \"{sf}\" }}\n",
        up = upstream.addr,
        vault = bao.addr,
        sf = secret_id_file.display(),
    );
    let agent = Agent::spawn(&agent_config(&relay, &token, &rest), &[]);
    relay.wait_sessions(2).await;
    let (status, doc) = echo(&relay, &key, "/v1/routes/ci/echo", &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["headers"]["x-jenkins"][0], "jk-APPROLE-1");
    assert_never_logged(&[&agent.log, &relay.log], &["jk-APPROLE-1", &secret_id]);
}

#[tokio::test]
async fn ttl_refresh_single_flight_and_stale_values_while_the_store_is_down() {
    let mut bao = OpenBao::start().await;
    bao.put_kv2("app/a", json!({ "v": "first" })).await;
    bao.put_kv2("app/b", json!({ "v": "b-value" })).await;
    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vault_token = dir.path().join("vault-token");
    std::fs::write(&vault_token, &bao.root_token).unwrap();
    let rest = format!(
        "[routes.a]\nurl = \"http://{up}\"\npaths = [\"/**\"]\nheaders = {{ X-A = \"${{{{ secrets.a }}}}\" }}\n\n\
         [routes.b]\nurl = \"http://{up}\"\npaths = [\"/**\"]\nheaders = {{ X-B = \"${{{{ secrets.b }}}}\" }}\n\n\
         [secrets.a]\nvault = {{ path = \"secret/data/app/a\", field = \"v\" }}\nttl = \"1s\"\n\n\
         [secrets.b]\nvault = {{ path = \"secret/data/app/b\", field = \"v\" }}\nttl = \"1s\"\nmax_stale = \"1s\"\n\n\
         [vault]\naddress = \"{vault}\"\nauth = {{ method = \"token\", token_file = \"{tf}\" }}\n",
        up = upstream.addr,
        vault = bao.addr,
        tf = vault_token.display(),
    );
    let agent = Agent::spawn(&agent_config(&relay, &token, &rest), &[]);
    relay.wait_sessions(2).await;

    let (_, doc) = echo(&relay, &key, "/v1/routes/a/echo", &[]).await;
    assert_eq!(doc["headers"]["x-a"][0], "first");
    let (_, doc) = echo(&relay, &key, "/v1/routes/b/echo", &[]).await;
    assert_eq!(doc["headers"]["x-b"][0], "b-value");

    // A changed value is picked up once the TTL has passed, with one store
    // read for 100 concurrent requests.
    bao.put_kv2("app/a", json!({ "v": "second" })).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = relay.url("/v1/routes/a/echo");
        let auth = format!("Bearer {key}");
        tasks.push(tokio::spawn(async move {
            let (status, _, body) = get(&url, &[("proxy-authorization", &auth)]).await;
            assert_eq!(status, StatusCode::OK);
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            doc["headers"]["x-a"][0].as_str().unwrap().to_owned()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "second");
    }
    let metrics = agent.metrics().await;
    let reads = metric(&metrics, "tether_agent_secret_reads_total", "a");
    eprintln!("store reads for secret a after 1 + 100 concurrent requests: {reads}");
    assert_eq!(
        reads, 2,
        "one read at first, one for the 100 concurrent requests"
    );

    // Store down: `a` (max_stale 1h) keeps its last value; `b` (1s) fails
    // once max_stale has passed.
    bao.kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, doc) = echo(&relay, &key, "/v1/routes/a/echo", &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["headers"]["x-a"][0], "second");
    assert!(
        metric(
            &agent.metrics().await,
            "tether_agent_secret_stale_total",
            "a"
        ) >= 1
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, doc) = echo(&relay, &key, "/v1/routes/b/echo", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{doc}");
    assert_eq!(doc["code"], "secret_unavailable");
    // The store's own text (its address, the Vault path, its error) stays
    // in the agent's log; the cloud side learns only that it failed.
    let detail = doc["detail"].as_str().unwrap();
    for internal in ["127.0.0.1", "secret/", "error", "connect", "vault"] {
        assert!(!detail.to_lowercase().contains(internal), "{detail}");
    }
}

#[tokio::test]
async fn caller_placeholders_only_where_the_secret_opted_in() {
    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let upstream = Upstream::start().await;
    let other = Upstream::start().await;
    let rest = format!(
        "[routes.up]\nurl = \"http://{up}\"\nmethods = [\"GET\", \"POST\"]\npaths = [\"/**\"]\n\n\
         [routes.other_port]\nurl = \"http://{other}\"\npaths = [\"/**\"]\n\n\
         [routes.tls_scheme]\nurl = \"https://{up}\"\npaths = [\"/**\"]\n\n\
         [secrets.caller_tok]\nenv = \"CALLER_TOKEN\"\n\
         callers = {{ targets = [\"http://{up}\"], headers = [\"Authorization\"] }}\n\n\
         [secrets.private]\nenv = \"PRIVATE_TOKEN\"\n",
        up = upstream.addr,
        other = other.addr,
    );
    let agent = Agent::spawn(
        &agent_config(&relay, &token, &rest),
        &[
            ("CALLER_TOKEN", "ct-SECRET-3"),
            ("PRIVATE_TOKEN", "pv-SECRET-4"),
        ],
    );
    relay.wait_sessions(2).await;

    let placed = "Bearer ${{ secrets.caller_tok }}";
    let (status, doc) = echo(
        &relay,
        &key,
        "/v1/routes/up/echo",
        &[("authorization", placed)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["headers"]["authorization"][0], "Bearer ct-SECRET-3");

    let before = (upstream.count().await, other.count().await);
    for (path, header, value) in [
        ("/v1/routes/up/echo", "x-reflected", placed),
        ("/v1/routes/other_port/echo", "authorization", placed),
        ("/v1/routes/tls_scheme/echo", "authorization", placed),
        (
            "/v1/routes/up/echo",
            "authorization",
            "${{ secrets.private }}",
        ),
        ("/v1/routes/up/echo", "authorization", "${{ secrets.nope }}"),
        (
            "/v1/routes/up/echo",
            "authorization",
            "Bearer ${{ secrets.caller_tok",
        ),
        ("/v1/routes/up/echo", "authorization", "${{ env.HOME }}"),
    ] {
        let (status, doc) = echo(&relay, &key, path, &[(header, value)]).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{path} {header}: {value} → {doc}"
        );
        assert_eq!(doc["code"], "denied");
    }
    assert_eq!(
        (upstream.count().await, other.count().await),
        before,
        "a refused request reached an upstream"
    );

    // Path, query and body are never substituted.
    let auth = format!("Bearer {key}");
    let req = Request::post(relay.url(
        "/v1/routes/up/echo/%24%7B%7B%20secrets.caller_tok%20%7D%7D?q=%24%7B%7B%20secrets.caller_tok%20%7D%7D",
    ))
    .header("proxy-authorization", &auth)
    .body(body("payload ${{ secrets.caller_tok }} ${{ secrets.private }}"))
    .unwrap();
    let (status, _, bytes) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("ct-SECRET-3") && !text.contains("pv-SECRET-4"),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        doc["body"],
        "payload ${{ secrets.caller_tok }} ${{ secrets.private }}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_never_logged(&[&agent.log, &relay.log], &["ct-SECRET-3", "pv-SECRET-4"]);
}

/// `age-keygen -o FILE`; returns the public key.
fn age_keygen(path: &std::path::Path) -> String {
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .expect("age-keygen (Debian package age; scripts/test.sh installs it)");
    assert!(out.status.success());
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn pipelines_get_exported_secrets_sealed_to_a_configured_recipient_only() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("pipeline.key");
    let recipient = age_keygen(&identity);
    let stranger = age_keygen(&dir.path().join("stranger.key"));

    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let rest = format!(
        "[secrets.deploy]\nenv = \"DEPLOY_TOKEN\"\nexport = [\"{recipient}\"]\n\n\
         [secrets.internal]\nenv = \"INTERNAL_TOKEN\"\n"
    );
    let agent = Agent::spawn(
        &agent_config(&relay, &token, &rest),
        &[
            ("DEPLOY_TOKEN", "dp-SECRET-5"),
            ("INTERNAL_TOKEN", "in-SECRET-6"),
        ],
    );
    relay.wait_sessions(2).await;
    let resolve = |body: serde_json::Value| {
        let url = relay.url("/v1/secrets/resolve");
        let auth = format!("Bearer {key}");
        async move { json_call(Method::POST, &url, &[("authorization", &auth)], Some(body)).await }
    };

    let (status, doc) = resolve(json!({ "names": ["deploy"], "recipient": recipient })).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let armored = doc["secrets"]["deploy"]["age"].as_str().unwrap().to_owned();
    assert!(!armored.contains("dp-SECRET-5"));
    let sealed = dir.path().join("deploy.age");
    std::fs::write(&sealed, &armored).unwrap();
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg(&sealed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"dp-SECRET-5");

    for (body, refused) in [
        (
            json!({ "names": ["deploy"], "recipient": stranger }),
            vec!["deploy"],
        ),
        (
            json!({ "names": ["internal"], "recipient": recipient }),
            vec!["internal"],
        ),
        (
            json!({ "names": ["deploy", "nope"], "recipient": recipient }),
            vec!["nope"],
        ),
    ] {
        let (status, doc) = resolve(body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{doc}");
        assert_eq!(doc["code"], "denied");
        assert_eq!(doc["refused"], json!(refused));
    }
    let (status, doc) = resolve(json!({ "names": ["deploy"] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{doc}");
    assert_eq!(doc["code"], "bad_request");
    let (status, _) = json_call(
        Method::POST,
        &relay.url("/v1/secrets/resolve"),
        &[],
        Some(json!({ "names": ["deploy"], "recipient": recipient })),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_never_logged(&[&agent.log, &relay.log], &["dp-SECRET-5", "in-SECRET-6"]);
}
