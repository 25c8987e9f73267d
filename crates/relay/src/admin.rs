//! The admin HTTP API, on the admin listener only.
//!
//! Off unless `[admin] key_file` (or `TETHER_RELAY_ADMIN_KEY`) gives a key;
//! every call then needs `Authorization: Bearer <admin key>`, compared in
//! constant time. Health, readiness and metrics stay open on the admin
//! listener either way; nothing here is ever routed on the public listener.
//!
//! | call | does |
//! |---|---|
//! | `GET /v1/admin/agents` | connected sessions |
//! | `GET /v1/admin/tokens[?account=A]` | tokens, never their secrets |
//! | `POST /v1/admin/tokens` `{"account","name"?,"expires_in"?}` | `{"id","token"}` |
//! | `POST /v1/admin/tokens/{id}/rotate` `{"grace"?}` | `{"id","token"}` |
//! | `POST /v1/admin/tokens/{id}/revoke` | 204 |
//! | `GET /v1/admin/keys[?account=A]`, `POST /v1/admin/keys`, `POST /v1/admin/keys/{id}/revoke` | the same for API keys |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tether_wire::{BoxBody, ErrorCode, Problem, full_body};

use crate::State;
use crate::credential::{self, Kind};
use crate::store::unix_now;

/// The admin key, kept as its hash.
pub(crate) struct AdminKey([u8; 32]);

impl AdminKey {
    pub(crate) fn new(key: &str) -> Self {
        Self(Sha256::digest(key.trim().as_bytes()).into())
    }

    fn accepts(&self, presented: &str) -> bool {
        credential::same_hash(&Sha256::digest(presented.as_bytes()), &self.0)
    }
}

/// Handles `/v1/admin/...` on the admin listener.
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let Some(key) = &state.admin_key else {
        return problem(
            ErrorCode::NoSuchRoute,
            "the admin API is off: set [admin] key_file",
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(credential::bearer);
    if !presented.is_some_and(|p| key.accepts(p)) {
        if state.limiter.failed(remote.ip()) {
            return problem(ErrorCode::RateLimited, "too many failed authentications");
        }
        return problem(
            ErrorCode::Unauthorized,
            "admin key required (Authorization: Bearer)",
        );
    }
    let path = req.uri().path().to_owned();
    let query_account = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("account="))
            .map(str::to_owned)
    });
    let segments: Vec<&str> = path.trim_start_matches("/v1/admin/").split('/').collect();
    let method = req.method().clone();
    let store = state.auth.store().clone();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["agents"]) => Ok(json(StatusCode::OK, &agents(&state))),
        (&Method::GET, ["tokens"]) => store
            .list_tokens(query_account.as_deref())
            .await
            .map(|list| json(StatusCode::OK, &listing(&list))),
        (&Method::GET, ["keys"]) => store
            .list_keys(query_account.as_deref())
            .await
            .map(|list| json(StatusCode::OK, &listing(&list))),
        (&Method::POST, ["tokens"]) => {
            let Some(body) = read::<CreateBody>(req).await else {
                return problem(
                    ErrorCode::BadRequest,
                    "expected {\"account\": …, \"name\"?, \"expires_in\"?: \"90d\"}",
                );
            };
            let expires = match body.expires_in.as_deref().map(humantime::parse_duration) {
                Some(Ok(d)) => Some(SystemTime::now() + d),
                Some(Err(e)) => return problem(ErrorCode::BadRequest, &format!("expires_in: {e}")),
                None => None,
            };
            store
                .create_token(&body.account, body.name.as_deref(), expires)
                .await
                .map(|t| {
                    tracing::info!(account = %body.account, id = %t.id, "agent token created (admin API)");
                    json(StatusCode::CREATED, &serde_json::json!({ "id": t.id, "token": t.secret }))
                })
        }
        (&Method::POST, ["keys"]) => {
            let Some(body) = read::<CreateBody>(req).await else {
                return problem(
                    ErrorCode::BadRequest,
                    "expected {\"account\": …, \"name\"?}",
                );
            };
            store.create_key(&body.account, body.name.as_deref()).await.map(|k| {
                tracing::info!(account = %body.account, id = %k.id, "API key created (admin API)");
                json(StatusCode::CREATED, &serde_json::json!({ "id": k.id, "key": k.secret }))
            })
        }
        (&Method::POST, ["tokens", id, "rotate"]) => {
            let id = (*id).to_owned();
            let grace = match read::<RotateBody>(req).await.and_then(|b| b.grace) {
                Some(g) => match humantime::parse_duration(&g) {
                    Ok(d) => d,
                    Err(e) => return problem(ErrorCode::BadRequest, &format!("grace: {e}")),
                },
                None => Duration::from_secs(3600),
            };
            match store.rotate_token(&id, grace).await {
                Ok(Some(t)) => {
                    tracing::info!(id = %t.id, "agent token rotated (admin API)");
                    push_rotation(&state, &t.id, &t.secret, grace);
                    Ok(json(
                        StatusCode::OK,
                        &serde_json::json!({ "id": t.id, "token": t.secret }),
                    ))
                }
                Ok(None) => return problem(ErrorCode::NoSuchRoute, "no active token with that id"),
                Err(e) => Err(e),
            }
        }
        (&Method::POST, [kind @ ("tokens" | "keys"), id, "revoke"]) => {
            let kind = if *kind == "tokens" {
                Kind::AgentToken
            } else {
                Kind::ApiKey
            };
            match store.revoke(kind, id).await {
                Ok(true) => {
                    tracing::info!(id = %id, "revoked (admin API)");
                    let mut r = Response::new(tether_wire::empty_body());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    Ok(r)
                }
                Ok(false) => {
                    return problem(ErrorCode::NoSuchRoute, "nothing to revoke with that id");
                }
                Err(e) => Err(e),
            }
        }
        _ => return problem(ErrorCode::NoSuchRoute, "no such admin call"),
    };
    result.unwrap_or_else(|e| match e {
        crate::store::StoreError::InvalidAccount(_) => {
            problem(ErrorCode::BadRequest, &e.to_string())
        }
        other => {
            tracing::error!(error = %other, "admin API: store error");
            problem(ErrorCode::Internal, "store unavailable")
        }
    })
}

/// Hands the new token to this relay's sessions opened with the old one
/// (agents store it only with `accept_rotation = true`), and re-times them
/// to the end of the grace.
fn push_rotation(state: &State, id: &str, token: &str, grace: Duration) {
    let until = crate::store::unix_ceil(SystemTime::now() + grace);
    for session in state.registry.sessions() {
        if session.token_id == id {
            session.set_valid_until(Some(until));
            crate::watcher::notify_rotation(&session, Some(until), Some(token.to_owned()));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    account: String,
    name: Option<String>,
    expires_in: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    grace: Option<String>,
}

async fn read<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Option<T> {
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}").ok();
    }
    serde_json::from_slice(&bytes).ok()
}

/// This replica's sessions and, in cluster mode, the agent instances the
/// other live replicas hold (from presence: no session id or load).
fn agents(state: &State) -> serde_json::Value {
    let mut sessions = state.registry.sessions();
    sessions.sort_by_key(|s| s.id);
    let replica = state.cluster.as_ref().map(|c| c.replica_id.clone());
    let mut list: Vec<serde_json::Value> = sessions
        .iter()
        .map(|s| {
            serde_json::json!({
                "replica": replica,
                "session": s.id,
                "account": s.account,
                "name": s.info.name,
                "instance": s.info.instance,
                "version": crate::version::label(&s.info.version),
                "tags": s.info.tags,
                "routes": s.info.routes,
                "token_id": s.token_id,
                "remote": s.remote.to_string(),
                "in_flight": s.in_flight(),
            })
        })
        .collect();
    if let Some(cluster) = state.cluster.as_ref() {
        list.extend(cluster.remote_agents().into_iter().map(|a| {
            serde_json::json!({
                "replica": a.replica,
                "account": a.account,
                "name": a.info.name,
                "instance": a.info.instance,
                "tags": a.info.tags,
                "routes": a.info.routes,
            })
        }));
    }
    serde_json::Value::Array(list)
}

fn listing(records: &[crate::store::CredentialRecord]) -> serde_json::Value {
    let now = unix_now();
    records.iter().map(|r| r.to_json(now)).collect()
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<BoxBody> {
    let mut r = Response::new(full_body(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn problem(code: ErrorCode, detail: &str) -> Response<BoxBody> {
    Problem::new(code, detail).into_response()
}
