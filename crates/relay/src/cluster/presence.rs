//! Presence: this replica's lease and sessions in Postgres, and its view
//! of the agents the other replicas hold (LISTEN/NOTIFY plus a reload per
//! heartbeat).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tether_wire::protocol::AgentInfo;

use super::{Cluster, RemoteAgent};
use crate::State;

/// Postgres channel told of every change to a replica's presence.
const PRESENCE_CHANNEL: &str = "tether_presence";

/// Gathering presence changes for this long makes one write of a burst.
const DEBOUNCE: Duration = Duration::from_millis(25);

/// A row of presence: replica, advertise URL, heartbeat, account, agent
/// name, instance, tags and routes (JSON), forward mode.
type PresenceRow = (
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    bool,
);

impl Cluster {
    async fn register(&self) -> Result<(), sqlx::Error> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO cluster_replicas (replica_id, advertise, heartbeat, lease_until) \
             VALUES ($1, $2, (extract(epoch from now()) * 1000)::bigint, \
                     (extract(epoch from now()) * 1000)::bigint + $3) \
             ON CONFLICT (replica_id) DO UPDATE SET advertise = EXCLUDED.advertise, \
                heartbeat = EXCLUDED.heartbeat, lease_until = EXCLUDED.lease_until",
        )
        .bind(&self.replica_id)
        .bind(&self.advertise)
        .bind(lease_ms)
        .execute(&mut *tx)
        .await?;
        // Sessions of this replica's previous life are gone.
        sqlx::query("DELETE FROM cluster_sessions WHERE replica_id = $1")
            .bind(&self.replica_id)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, &self.replica_id).await?;
        tx.commit().await
    }

    /// Renews the lease; `true` if the replica's row had gone and was
    /// registered again (its sessions must then be published anew).
    async fn heartbeat(&self) -> Result<bool, sqlx::Error> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let updated = sqlx::query(
            "UPDATE cluster_replicas SET heartbeat = (extract(epoch from now()) * 1000)::bigint, \
             lease_until = (extract(epoch from now()) * 1000)::bigint + $2 WHERE replica_id = $1",
        )
        .bind(&self.replica_id)
        .bind(lease_ms)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            // Removed under us (another replica with our id drained): put
            // it back, sessions and all.
            self.register().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes the difference between the sessions this replica holds and
    /// those it last published.
    async fn sync(
        &self,
        state: &State,
        published: &mut HashSet<u64>,
        force: bool,
    ) -> Result<(), sqlx::Error> {
        let sessions = state.registry.sessions();
        let current: HashSet<u64> = sessions.iter().map(|s| s.id).collect();
        let gone: Vec<i64> = published
            .difference(&current)
            .filter_map(|id| i64::try_from(*id).ok())
            .collect();
        let new: Vec<_> = sessions
            .iter()
            .filter(|s| force || !published.contains(&s.id))
            .collect();
        if gone.is_empty() && new.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if force {
            sqlx::query("DELETE FROM cluster_sessions WHERE replica_id = $1")
                .bind(&self.replica_id)
                .execute(&mut *tx)
                .await?;
        } else if !gone.is_empty() {
            sqlx::query(
                "DELETE FROM cluster_sessions WHERE replica_id = $1 AND session_id = ANY($2)",
            )
            .bind(&self.replica_id)
            .bind(&gone)
            .execute(&mut *tx)
            .await?;
        }
        if !new.is_empty() {
            let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "INSERT INTO cluster_sessions \
                 (replica_id, session_id, account, agent, instance, tags, routes, forward) \
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], \
                                          $6::text[], $7::text[], $8::bool[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.replica_id)
            .bind(
                new.iter()
                    .map(|s| i64::try_from(s.id).unwrap_or(i64::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|s| s.account.clone()).collect::<Vec<_>>())
            .bind(new.iter().map(|s| s.info.name.clone()).collect::<Vec<_>>())
            .bind(
                new.iter()
                    .map(|s| s.info.instance.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|s| json(&s.info.tags)).collect::<Vec<_>>())
            .bind(new.iter().map(|s| json(&s.info.routes)).collect::<Vec<_>>())
            .bind(new.iter().map(|s| s.info.forward).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        notify(&mut tx, &self.replica_id).await?;
        tx.commit().await?;
        *published = current;
        Ok(())
    }

    /// Re-reads the agents other live replicas hold.
    async fn reload(&self) -> Result<(), sqlx::Error> {
        let rows: Vec<PresenceRow> = sqlx::query_as(
            "SELECT DISTINCT s.replica_id, r.advertise, r.heartbeat, s.account, s.agent, \
                        s.instance, s.tags, s.routes, s.forward \
                 FROM cluster_sessions s JOIN cluster_replicas r USING (replica_id) \
                 WHERE r.lease_until > (extract(epoch from now()) * 1000)::bigint \
                   AND s.replica_id <> $1",
        )
        .bind(&self.replica_id)
        .fetch_all(&self.pool)
        .await?;
        let remote: Vec<RemoteAgent> = rows
            .into_iter()
            .map(
                |(
                    replica,
                    advertise,
                    heartbeat,
                    account,
                    name,
                    instance,
                    tags,
                    routes,
                    forward,
                )| {
                    RemoteAgent {
                        load: self.load_of(&replica),
                        replica,
                        advertise,
                        heartbeat,
                        account,
                        info: AgentInfo {
                            name,
                            instance,
                            version: String::new(),
                            tags: serde_json::from_str(&tags).unwrap_or_default(),
                            routes: serde_json::from_str(&routes).unwrap_or_default(),
                            forward,
                        },
                    }
                },
            )
            .collect();
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(remote);
        Ok(())
    }

    async fn leave(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM cluster_replicas WHERE replica_id = $1")
            .bind(&self.replica_id)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, &self.replica_id).await?;
        tx.commit().await
    }
}

async fn notify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    replica: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PRESENCE_CHANNEL)
        .bind(replica)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Keeps this replica's presence: registers it, publishes its sessions as
/// they come and go, heartbeats, and keeps the view of the others fresh
/// (LISTEN/NOTIFY, and a reload every heartbeat to drop expired replicas).
/// Removes the replica's presence when the relay shuts down.
pub(crate) async fn run(state: Arc<State>, cluster: Arc<Cluster>) {
    let beat = cluster.lease / 3;
    let mut registered = false;
    let mut published = HashSet::new();
    let mut listener: Option<PgListener> = None;
    let mut tick = tokio::time::interval(beat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let mut reload = false;
        let mut force = false;
        tokio::select! {
            _ = tick.tick() => {
                reload = true;
                if listener.is_none() {
                    listener = listen(&cluster.url).await;
                }
                let beat = if registered {
                    cluster.heartbeat().await
                } else {
                    cluster.register().await.map(|()| true)
                };
                match beat {
                    Ok(anew) => {
                        force = anew;
                        registered = true;
                        if failing {
                            tracing::info!("cluster presence store reachable again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot renew this replica's presence lease");
                        }
                        failing = true;
                    }
                }
            }
            () = state.registry.changed().notified() => {
                tokio::time::sleep(DEBOUNCE).await;
            }
            got = async { listener.as_mut()?.recv().await.ok() }, if listener.is_some() => {
                match got {
                    Some(_) => {
                        tokio::time::sleep(DEBOUNCE).await;
                        // Everything that arrived meanwhile is covered by one reload.
                        while listener.as_mut().and_then(PgListener::next_buffered).is_some() {}
                        reload = true;
                    }
                    None => {
                        tracing::warn!("presence listener lost; reconnecting at the next heartbeat");
                        listener = None;
                    }
                }
            }
            () = state.shutdown.cancelled() => {
                if let Err(e) = cluster.leave().await {
                    tracing::warn!(error = %e, "cannot remove this replica's presence; it ends with its lease");
                }
                return;
            }
        }
        if registered && let Err(e) = cluster.sync(&state, &mut published, force).await {
            tracing::warn!(error = %e, "cannot publish this replica's sessions");
        }
        if reload && let Err(e) = cluster.reload().await {
            tracing::warn!(error = %e, "cannot read the cluster's presence");
        }
    }
}

async fn listen(url: &str) -> Option<PgListener> {
    let mut listener = PgListener::connect(url)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "cannot LISTEN for presence changes"))
        .ok()?;
    listener.listen(PRESENCE_CHANNEL).await.ok()?;
    Some(listener)
}
