use super::*;
use std::time::Duration;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sub.db").display());
    (dir, Store::open(&url).await.unwrap())
}

#[tokio::test]
async fn created_token_is_found_and_accepts_only_its_secret() {
    let (_dir, store) = store().await;
    let token = store.create_token("acme", Some("eu"), None).await.unwrap();
    let record = store.token(&token.id).await.unwrap().expect("stored");
    assert_eq!(record.account, "acme");
    assert_eq!(record.name.as_deref(), Some("eu"));
    let presented = credential::parse(Kind::AgentToken, &token.secret).unwrap();
    assert!(record.accepts(&presented, unix_now()));
    let other = store.create_token("acme", None, None).await.unwrap();
    let other = credential::parse(Kind::AgentToken, &other.secret).unwrap();
    assert!(!record.accepts(&other, unix_now()));
}

#[tokio::test]
async fn the_secret_is_not_in_the_database_file() {
    let (dir, store) = store().await;
    let key = store.create_key("acme", None).await.unwrap();
    drop(store);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let secret_part = &key.secret.as_bytes()[21..];
        assert!(!bytes.windows(secret_part.len()).any(|w| w == secret_part));
    }
}

#[tokio::test]
async fn expired_token_is_refused() {
    let (_dir, store) = store().await;
    let past = SystemTime::now() - Duration::from_secs(10);
    let token = store.create_token("acme", None, Some(past)).await.unwrap();
    let record = store.token(&token.id).await.unwrap().unwrap();
    let presented = credential::parse(Kind::AgentToken, &token.secret).unwrap();
    assert!(!record.accepts(&presented, unix_now()));
}

#[tokio::test]
async fn keys_and_tokens_live_apart() {
    let (_dir, store) = store().await;
    let key = store.create_key("acme", None).await.unwrap();
    assert!(store.token(&key.id).await.unwrap().is_none());
    assert!(store.key(&key.id).await.unwrap().is_some());
    store.touch(Kind::ApiKey, &key.id).await.unwrap();
    assert!(
        store
            .key(&key.id)
            .await
            .unwrap()
            .unwrap()
            .last_used
            .is_some()
    );
}

#[tokio::test]
async fn rotation_keeps_the_id_and_both_secrets_work_during_grace() {
    let (_dir, store) = store().await;
    let old = store.create_token("acme", None, None).await.unwrap();
    let new = store
        .rotate_token(&old.id, Duration::from_secs(3600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.id, old.id);
    assert_ne!(new.secret, old.secret);
    let record = store.token(&old.id).await.unwrap().unwrap();
    let now = unix_now();
    assert!(record.accepts_hash(&old.hash, now));
    assert!(record.accepts_hash(&new.hash, now));
    assert!(matches!(record.status(now), Status::Rotating { .. }));
    assert_eq!(record.valid_until(&new.hash), None);
    assert!(record.valid_until(&old.hash).is_some());
    // After the grace only the new secret works.
    assert!(!record.accepts_hash(&old.hash, now + 3601));
    assert!(record.accepts_hash(&new.hash, now + 3601));
    // Revocation covers both.
    assert!(store.revoke(Kind::AgentToken, &old.id).await.unwrap());
    let record = store.token(&old.id).await.unwrap().unwrap();
    assert!(!record.accepts_hash(&new.hash, now) && !record.accepts_hash(&old.hash, now));
    assert_eq!(record.status(now), Status::Revoked);
    assert!(
        !store.revoke(Kind::AgentToken, &old.id).await.unwrap(),
        "already revoked"
    );
    assert!(
        store
            .rotate_token(&old.id, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    let events: Vec<String> = store
        .events_after(0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events, ["created", "rotated", "revoked"]);
}

#[tokio::test]
async fn listing_shows_status_and_never_a_hash() {
    let (_dir, store) = store().await;
    store.create_token("acme", Some("eu"), None).await.unwrap();
    let k = store.create_key("globex", None).await.unwrap();
    store.revoke(Kind::ApiKey, &k.id).await.unwrap();
    let tokens = store.list_tokens(Some("acme")).await.unwrap();
    assert_eq!(tokens.len(), 1);
    let json = tokens[0].to_json(unix_now());
    assert_eq!(json["status"], "active");
    assert_eq!(json["name"], "eu");
    assert_eq!(json.as_object().unwrap().len(), 7);
    assert!(store.list_tokens(Some("globex")).await.unwrap().is_empty());
    let keys = store.list_keys(None).await.unwrap();
    assert_eq!(keys[0].to_json(unix_now())["status"], "revoked");
}

#[tokio::test]
async fn bad_account_names_are_refused_and_nothing_is_written() {
    let (_dir, store) = store().await;
    assert!(matches!(
        store.create_key("a b", None).await,
        Err(StoreError::InvalidAccount(_))
    ));
    assert!(Store::open("mysql://x").await.is_err());
}
