//! Applies credential changes to live sessions and caches.
//!
//! Every 250 ms — and at once when Postgres notifies (LISTEN/NOTIFY) — the
//! relay reads the store's credential events after the last one it saw. So `tokens revoke` (from any CLI, or from another relay
//! process sharing the store) closes the sessions opened with that token
//! within well under a second, a rotation re-times the sessions opened with
//! the old secret to the end of its grace, and cached records of changed
//! keys and tokens are dropped. The same tick closes sessions whose secret
//! reached its expiry or the end of its rotation grace.

use std::sync::Arc;
use std::time::Duration;

use crate::State;
use crate::credential::Kind;
use crate::store::unix_now;

const TICK: Duration = Duration::from_millis(250);

pub(crate) async fn run(state: Arc<State>) {
    let store = state.auth.store().clone();
    let mut seen = match store.last_event().await {
        Ok(seq) => seq,
        Err(e) => {
            tracing::error!(error = %e, "cannot read credential events; revocations will not close sessions");
            return;
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener = match store.listen().await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN for credential events; polling only");
            None
        }
    };
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            notified = async { listener.as_mut()?.recv().await.err() }, if listener.is_some() => {
                if let Some(e) = notified {
                    tracing::warn!(error = %e, "credential event listener failed; polling only");
                    listener = None;
                }
            }
            () = state.shutdown.cancelled() => return,
        }
        match store.events_after(seen).await {
            Ok(events) => {
                failing = false;
                for event in events {
                    seen = event.seq;
                    state.auth.forget(event.kind, &event.credential_id);
                    if event.kind == Kind::ApiKey && event.event == "revoked" {
                        let closed = state.upgraded.close_key(&event.credential_id);
                        if closed > 0 {
                            tracing::info!(key_id = %event.credential_id, closed,
                                "closing upgraded connections: their API key was revoked");
                        }
                    }
                    if event.kind == Kind::AgentToken && event.event != "created" {
                        recheck_token(&state, &event.credential_id).await;
                    }
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read credential events");
            }
            Err(_) => {}
        }
        let now = unix_now();
        for session in state.registry.sessions() {
            if session.valid_until().is_some_and(|t| now >= t) {
                tracing::info!(session = session.id, token_id = %session.token_id,
                    "closing session: its token expired or its rotation grace ended");
                session.closed.cancel();
            }
        }
    }
}

/// Tells the agent on `session` that its secret now ends at `until`, so it
/// can say so in its log (it picks up a new secret from its token file),
/// and, when known, hands it the new token (stored only if it opted in).
pub(crate) fn notify_rotation(
    session: &Arc<crate::registry::AgentSession>,
    until: Option<i64>,
    token: Option<String>,
) {
    use tether_wire::protocol::{self, RotationNotice};
    let notice = RotationNotice {
        token_id: session.token_id.clone(),
        valid_until: until,
        token,
    };
    control_post(
        session,
        protocol::CONTROL_ROTATED_PATH,
        serde_json::to_vec(&notice).unwrap_or_default(),
    );
}

/// POSTs `body` (JSON) to the agent's control `path` on `session`, in the
/// background; the answer does not matter.
pub(crate) fn control_post(
    session: &Arc<crate::registry::AgentSession>,
    path: &str,
    body: Vec<u8>,
) {
    use tether_wire::protocol;
    let Ok(request) = http::Request::post(format!("http://{}{path}", protocol::CONTROL_AUTHORITY))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(tether_wire::full_body(body))
    else {
        return;
    };
    let (mut sender, in_flight) = session.begin_request();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        if sender.ready().await.is_ok() {
            let _ = sender.send_request(request).await;
        }
    });
}

/// Re-reads token `id` and closes or re-times the sessions it opened.
async fn recheck_token(state: &State, id: &str) {
    let sessions: Vec<_> = state
        .registry
        .sessions()
        .into_iter()
        .filter(|s| s.token_id == id)
        .collect();
    if sessions.is_empty() {
        return;
    }
    let record = match state.auth.store().token(id).await {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(error = %e, token_id = %id, "cannot re-read a changed token");
            return;
        }
    };
    let now = unix_now();
    for session in sessions {
        match &record {
            Some(r) if r.accepts_hash(&session.secret_hash, now) => {
                let until = r.valid_until(&session.secret_hash);
                if until.is_some() && until != session.valid_until() {
                    notify_rotation(&session, until, None);
                }
                session.set_valid_until(until);
            }
            _ => {
                tracing::info!(session = session.id, token_id = %id, agent = %session.info.name,
                    "closing session: its token was revoked");
                session.closed.cancel();
            }
        }
    }
}
