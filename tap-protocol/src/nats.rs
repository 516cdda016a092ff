//! NATS helpers both sides need (feature `nats`).

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::REGISTRY_BUCKET;

/// Opens (or creates) a KV bucket.
///
/// The bucket's stream is created directly with the KV conventions (ADR-8: `KV_<bucket>`,
/// `$KV.<bucket>.>`, roll-ups allowed, direct get) rather than through `create_key_value`, whose
/// answer parsing in async-nats 0.51 does not accept the reply of nats-server 2.9 (Debian 12's).
pub async fn open_kv(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
) -> Result<kv::Store, String> {
    open_kv_aged(js, bucket, description, Duration::ZERO).await
}

/// Opens (or creates) a KV bucket whose entries expire `max_age` after their last write (zero:
/// never). An existing bucket is opened as it is: its `max_age` is the one that counts.
pub async fn open_kv_aged(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        max_age,
        storage: jetstream::stream::StorageType::File,
        // The server refuses a duplicate window longer than the age limit.
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create the KV bucket {bucket}: {e}"))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| format!("cannot open the KV bucket {bucket}: {e}"))
}

/// Opens (or creates) the model registry.
pub async fn open_registry(js: &jetstream::Context) -> Result<kv::Store, String> {
    open_kv(
        js,
        REGISTRY_BUCKET,
        "kurento-tap model registry (protocol v1)",
    )
    .await
}

/// Opens (or creates) the lease bucket, entries expiring `ttl` after their last write.
pub async fn open_leases(js: &jetstream::Context, ttl: Duration) -> Result<kv::Store, String> {
    open_kv_aged(
        js,
        crate::lease::LEASE_BUCKET,
        "kurento-tap room leases and daemon members (protocol v1)",
        ttl,
    )
    .await
}

/// Returns once the server has processed every command this client sent before the call.
///
/// `Client::flush` only writes the socket: a subscription it "flushed" may not be registered on the
/// server yet, and a request sent at once from another connection gets "no responders". The server
/// handles one connection's commands in order, so a message to our own fresh inbox coming back
/// proves that the subscriptions sent before it are live (the round trip a NATS PING would give).
pub async fn confirm_with_server(
    client: &async_nats::Client,
    timeout: Duration,
) -> Result<(), String> {
    use futures_util::StreamExt;
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("cannot subscribe to confirm with the server: {e}"))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| format!("cannot publish to confirm with the server: {e}"))?;
    client
        .flush()
        .await
        .map_err(|e| format!("cannot flush to confirm with the server: {e}"))?;
    let answered = tokio::time::timeout(timeout, echo.next()).await;
    let _ = echo.unsubscribe().await;
    match answered {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the connection closed before the server confirmed".into()),
        Err(_) => Err(format!(
            "the server did not confirm within {} ms",
            timeout.as_millis()
        )),
    }
}
