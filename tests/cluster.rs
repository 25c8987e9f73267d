//! Cluster mode through the real binaries: relay replicas sharing a real
//! PostgreSQL server (presence, LISTEN/NOTIFY), agents reaching them through
//! a TCP load balancer, callers talking to any replica.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::cluster::{
    agent_of, call, cluster, cluster_of, peer_listen, post_through_failover, replicas_of,
};
use support::hostile_agent::HostileAgent;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reaches_every_agent_and_a_peer_hop_is_measured() {
    let c = cluster(3).await;
    let url = c.balancer.agent_url();
    let _alpha = c.agent_on(&url, "alpha", "alpha", 2);
    let _beta = c.agent_on(&url, "beta", "beta", 2);
    c.wait_total(4).await;
    eprintln!("sessions per replica: {:?}", c.sessions().await);
    for agent in [&_alpha, &_beta] {
        let slots = replicas_of(agent);
        assert_eq!(slots.len(), 2, "{slots:?}");
        let replicas: std::collections::BTreeSet<_> = slots.values().collect();
        assert_eq!(
            replicas.len(),
            2,
            "an agent's sessions on two replicas: {slots:?}"
        );
    }

    for relay in &c.relays {
        for route in ["alpha", "beta"] {
            let target = relay.url(&format!("/v1/routes/{route}/echo"));
            // Presence reaches the other replicas by NOTIFY, a moment after
            // the session registers.
            until(
                Duration::from_secs(10),
                "routed through every replica",
                || async {
                    let (status, headers) = call("GET", &target, &c.key).await;
                    status == StatusCode::OK && agent_of(&headers) == route
                },
            )
            .await;
            let (status, headers) = call("POST", &target, &c.key).await;
            assert_eq!(status, StatusCode::OK, "POST {route} via {}", relay.public);
            assert_eq!(agent_of(&headers), route);
            let id = headers.get("tether-request-id").unwrap().to_str().unwrap();
            assert_eq!(id.len(), 32, "request id kept: {id}");
            assert!(
                headers
                    .keys()
                    .all(|k| !k.as_str().starts_with("tether-peer")),
                "nothing about peers reaches the caller: {headers:?}"
            );
        }
    }

    // Every replica lists every agent: its own sessions, and the others'
    // agents with the replica holding them.
    for relay in &c.relays {
        let (status, _, body) = get(
            &format!("http://{}/v1/admin/agents", relay.admin),
            &[("authorization", "Bearer cluster-test-peer-key-0123456789")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let names: std::collections::BTreeSet<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["replica"].is_string())
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["alpha", "beta"].into(), "{list}");
    }

    // The extra latency of a hop: an agent whose only session is on one
    // replica, called through that replica and through another.
    let _gamma = c.agent_on(&c.relays[0].agent_url(), "gamma", "gamma", 1);
    c.wait_total(5).await;
    let local = c.relays[0].url("/v1/routes/gamma/bytes/64");
    let hop = c.relays[1].url("/v1/routes/gamma/bytes/64");
    until(
        Duration::from_secs(10),
        "gamma known to relay-2",
        || async { call("GET", &hop, &c.key).await.0 == StatusCode::OK },
    )
    .await;
    let mut median = BTreeMap::new();
    for (label, target) in [("local session", &local), ("one peer hop", &hop)] {
        let mut times = Vec::new();
        for _ in 0..200 {
            let start = Instant::now();
            assert_eq!(call("GET", target, &c.key).await.0, StatusCode::OK);
            times.push(start.elapsed());
        }
        times.sort();
        median.insert(label, times[times.len() / 2]);
    }
    eprintln!("median GET latency, 200 sequential requests: {median:?}");
    let forwarded = c.relays[1]
        .metric("tether_relay_peer_forwarded_total{outcome=\"answered\"}")
        .await;
    let served = c.relays[0].metric("tether_relay_peer_served_total").await;
    assert!(
        forwarded >= 200 && served >= 200,
        "{forwarded} forwarded, {served} served"
    );
    assert!(c.relays[1].metric("tether_relay_remote_agents").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_routed_around_and_no_post_is_sent_twice() {
    let mut c = cluster(3).await;
    let url = c.balancer.agent_url();
    let _a = c.agent_on(&url, "agent-a", "sample", 2);
    let _b = c.agent_on(&url, "agent-b", "sample", 2);
    c.wait_total(4).await;
    // Until every replica routes (presence has propagated).
    for relay in &c.relays {
        let target = relay.url("/v1/routes/sample/echo");
        until(Duration::from_secs(10), "every replica routes", || async {
            call("GET", &target, &c.key).await.0 == StatusCode::OK
        })
        .await;
    }
    let before = c.upstream.count().await;
    let victim = 2;
    let survivors: Vec<String> = c.relays[..victim]
        .iter()
        .map(|r| r.url("/v1/routes/sample/echo"))
        .collect();
    let stop = Instant::now() + Duration::from_secs(6);
    let mut callers = Vec::new();
    for i in 0..4 {
        let (target, key) = (survivors[i % survivors.len()].clone(), c.key.clone());
        callers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while Instant::now() < stop {
                // 0: an answer whose body the kill cut.
                let status = post_through_failover(&target, &key).await;
                statuses.push(status.map_or(0, |s| s.as_u16()));
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.relays[victim].kill();
    let killed = Instant::now();
    let moved = until(
        Duration::from_secs(20),
        "sessions moved off the killed replica",
        || async {
            let mut n = 0;
            for relay in &c.relays[..victim] {
                n += relay.sessions().await;
            }
            n == 4
        },
    )
    .await;
    let mut counts = BTreeMap::<u16, u64>::new();
    for caller in callers {
        for status in caller.await.unwrap() {
            *counts.entry(status).or_default() += 1;
        }
    }
    let sent: u64 = counts.values().sum();
    let ok = counts.get(&200).copied().unwrap_or(0);
    let reached = c.upstream.count().await - before;
    eprintln!(
        "kill -9 of one replica of 3: sessions on the others after {moved:?} \
         (since the kill: {:?}); {sent} POSTs: {counts:?}; upstream saw {reached}",
        killed.elapsed()
    );
    assert!(
        counts.keys().all(|s| [0, 200, 502].contains(s)),
        "only answers, agent_lost or an answer cut by the kill: {counts:?}"
    );
    assert!(ok * 10 >= sent * 9, "most POSTs answered: {counts:?}");
    assert!(
        reached <= sent && reached >= ok,
        "no POST sent twice: {sent} sent, {ok} answered, upstream saw {reached}"
    );
    for target in &survivors {
        assert_eq!(call("POST", target, &c.key).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn revoking_on_one_replica_closes_sessions_held_by_another_within_a_second() {
    let c = cluster(2).await;
    let _agent = c.agent_on(&c.relays[1].agent_url(), "agent-a", "sample", 2);
    until(Duration::from_secs(10), "sessions on relay-2", || async {
        c.relays[1].sessions().await == 2
    })
    .await;
    let started = Instant::now();
    c.relays[0].cli_output(&["tokens", "revoke", &c.token[4..20]]);
    let closed = until(Duration::from_secs(5), "sessions closed", || async {
        c.relays[1].sessions().await == 0
    })
    .await;
    eprintln!("revoke via relay-1 → relay-2's sessions closed after {closed:?} (from {started:?})");
    assert!(closed < Duration::from_secs(1), "closed after {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_of_1000_agents_spreads_evenly_over_three_replicas() {
    let c = cluster(3).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &c.token).unwrap();
    let mut swarm = Command::new(bin("tether-swarm"))
        .arg("--relay")
        .arg(c.balancer.agent_url())
        .arg("--token-file")
        .arg(&token_file)
        .args(["--agents", "1000", "--seconds", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.wait_total(1000).await;
    let counts = c.sessions().await;
    let _ = swarm.kill();
    let _ = swarm.wait();
    eprintln!("1,000 agent sessions per replica: {counts:?}");
    for n in &counts {
        assert!(
            (267..=400).contains(n),
            "each replica within ±20 % of 333: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_moves_its_agents_and_finishes_forwarded_requests() {
    let mut c = cluster(3).await;
    let agent = c.agent_on(&c.balancer.agent_url(), "agent-a", "sample", 1);
    c.wait_total(1).await;
    let holder = c.sessions().await.iter().position(|n| *n == 1).unwrap();
    let caller_side = (holder + 1) % 3;
    let target = c.relays[caller_side].url("/v1/routes/sample/slow/1500");
    until(Duration::from_secs(10), "routed through a peer", || async {
        call(
            "GET",
            &c.relays[caller_side].url("/v1/routes/sample/echo"),
            &c.key,
        )
        .await
        .0 == StatusCode::OK
    })
    .await;
    let before = c.upstream.count().await;
    let key = c.key.clone();
    let caller = tokio::spawn(async move { call("POST", &target, &key).await });
    until(
        Duration::from_secs(5),
        "request reaches the upstream",
        || async { c.upstream.count().await > before },
    )
    .await;
    c.relays[holder].signal("TERM");
    let moved = until(
        Duration::from_secs(10),
        "session moved to another replica",
        || async {
            replicas_of(&agent)
                .get("0")
                .is_some_and(|r| *r != format!("relay-{}", holder + 1))
        },
    )
    .await;
    let (status, headers) = caller.await.unwrap();
    assert_eq!(status, StatusCode::OK, "forwarded POST in flight finished");
    assert_eq!(agent_of(&headers), "agent-a");
    let exit = c.relays[holder].wait();
    assert!(exit.success(), "drained replica exits 0: {exit:?}");
    eprintln!("draining replica: agent's session elsewhere after {moved:?}");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    for i in survivors {
        let url = c.relays[i].url("/v1/routes/sample/echo");
        until(
            Duration::from_secs(10),
            "served after the drain",
            || async { call("GET", &url, &c.key).await.0 == StatusCode::OK },
        )
        .await;
    }
    assert!(
        agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("relay replica draining")),
        "the agent was told"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_wiped_from_the_store_is_written_again() {
    let c = cluster(2).await;
    let _agent = c.agent_on(&c.relays[1].agent_url(), "agent-a", "sample", 1);
    let via_peer = c.relays[0].url("/v1/routes/sample/echo");
    let routes = || async { call("GET", &via_peer, &c.key).await.0 == StatusCode::OK };
    until(Duration::from_secs(10), "routed through the peer", routes).await;
    // An operator (or a restore) empties the presence tables.
    c.pg.psql("DELETE FROM cluster_replicas");
    // Past two heartbeats (lease 3 s: one a second), both replicas have
    // noticed; without republishing, relay-1 would know no agent now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let back = until(
        Duration::from_secs(10),
        "relay-2 republishes its sessions",
        routes,
    )
    .await;
    eprintln!("presence written again and routed after {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_peer_key_is_refused_and_the_caller_is_not_blamed() {
    let c = cluster(1).await;
    let dir = tempfile::tempdir().unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, "a-different-peer-key-9876543210\n").unwrap();
    let stranger = Relay::start_replica(&c.pg.url, "relay-x", &other_key);
    let _agent = c.agent_on(&stranger.agent_url(), "agent-a", "sample", 1);
    until(Duration::from_secs(10), "session on relay-x", || async {
        stranger.sessions().await == 1
    })
    .await;
    let target = c.relays[0].url("/v1/routes/sample/echo");
    // Presence may not have reached relay-1 yet: POST until it has tried
    // relay-x (the log lock is not held across the request).
    until(Duration::from_secs(10), "relay-1 tries relay-x", || async {
        let _ = call("POST", &target, &c.key).await;
        let log = c.relays[0].log.lock().unwrap();
        log.iter().any(|l| l.contains("must hold the same key"))
    })
    .await;
    let (status, _) = call("POST", &target, &c.key).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _) = call("GET", &target, &c.key).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "GET tried, then no agent"
    );
    assert!(
        stranger
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("wrong or missing peer key"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_fake_a_peer_miss_or_reach_callers_with_tether_fields() {
    let c = cluster(2).await;
    // An agent that answers with Tether-Peer-Miss, Tether-Peer-Outcome,
    // Tether-Foo and forged Tether-Agent / Tether-Request-Id, held by
    // relay-2; the caller asks relay-1, which forwards.
    let mut agent = HostileAgent::start(c.relays[1].public, &c.token, "hostile", "sample");
    until(Duration::from_secs(10), "session on relay-2", || async {
        c.relays[1].sessions().await == 1
    })
    .await;
    let echo = c.relays[0].url("/v1/routes/sample/echo");
    until(
        Duration::from_secs(10),
        "relay-1 knows the agent",
        || async { call("GET", &echo, &c.key).await.0 == StatusCode::OK },
    )
    .await;

    let target = c.relays[0].url("/v1/routes/sample/tether");
    let req = Request::get(&target)
        .header("proxy-authorization", format!("Bearer {}", c.key))
        .body(tether_wire::empty_body())
        .unwrap();
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(15), send(req))
        .await
        .expect("an answer");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, "served", "the upstream's answer, not a 503");
    agent.stop();
    assert_eq!(agent.requests("/tether"), 1, "served once, never re-sent");
    let tether: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|n| n.starts_with("tether-"))
        .collect();
    assert_eq!(tether, ["tether-agent", "tether-request-id"], "{headers:?}");
    assert_eq!(headers["tether-agent"], "hostile");
    assert_ne!(headers["tether-request-id"], "forged");
}

#[tokio::test]
async fn wrong_peer_keys_are_rate_limited_like_bad_tokens_and_the_right_key_is_not() {
    let c = cluster(1).await;
    let peer = peer_listen(&c.relays[0]);
    let ask = |key: &'static str| async move {
        let req = Request::get(format!("http://{peer}/v1/routes/sample/echo"))
            .header("tether-peer-key", key)
            .header("tether-peer-account", "acme")
            .header("tether-peer-route", "sample")
            .body(tether_wire::empty_body())
            .unwrap();
        send(req).await.0
    };
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(ask("a-guess-at-the-peer-key-000000").await);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "wrong keys from one address get 429 past the budget: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    // The right key from the same address is never locked out: this
    // replica has no agent, so it answers no_agent.
    assert_eq!(
        ask("cluster-test-peer-key-0123456789").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// CONNECT goes through the peer like routes do: a replica that does not
/// hold the forward agent's session relays the tunnel through the one that
/// does (not 503 `no_agent`), and bytes flow end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_a_replica_without_the_agents_session_is_forwarded_to_its_peer() {
    let c = cluster_of(2, true).await;
    let port = c.upstream.addr.port();
    // One session, on relay-1 only.
    let _fwd = Agent::spawn(
        &format!(
            "[relay]\nurl = \"{}\"\ntoken = \"{}\"\nconnections = 1\n\
             [agent]\nname = \"fwd\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [forward]\nallow = [\"127.0.0.1/32\"]\nconnect_ports = [{port}]\n",
            c.relays[0].agent_url(),
            c.token
        ),
        &[],
    );
    c.relays[0].wait_sessions(1).await;
    assert_eq!(c.relays[1].sessions().await, 0);
    // Until relay-2 knows of the agent (presence): forward mode via the peer.
    let forwarded = c.relays[1].url(&format!("/v1/forward/http/127.0.0.1:{port}/echo/f"));
    until(
        Duration::from_secs(10),
        "relay-2 forwards to the peer",
        || async { call("GET", &forwarded, &c.key).await.0 == StatusCode::OK },
    )
    .await;
    let answered = || c.relays[1].metric("tether_relay_peer_forwarded_total{outcome=\"answered\"}");
    let before = answered().await;

    let proxy = c.relays[1].proxy.unwrap();
    let target = format!("127.0.0.1:{port}");
    let (head, tunnel) = raw_http::connect(proxy, &target, &c.key, Duration::from_secs(15)).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("tether-agent"), Some("fwd"));
    assert!(head.header("tether-request-id").is_some(), "{head:?}");
    assert_eq!(answered().await, before + 1, "the CONNECT went to the peer");
    let request =
        format!("GET /echo/tunnelled HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let echoed =
        raw_http::exchange_on(tunnel.unwrap(), request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(echoed.status, 200, "{echoed:?}");
    let doc: serde_json::Value = serde_json::from_slice(&echoed.body).unwrap();
    assert_eq!(doc["path"], "/echo/tunnelled");
}
