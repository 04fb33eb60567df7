//! Replicas telling each other that signing keys changed, over Redis pub/sub. This only
//! hastens what the reload timer does anyway: a lost message delays a reload by at most one
//! `keys.reload_interval`, and every lifecycle switch is timestamped, so correctness never
//! depends on delivery.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::service::keyring::{KeyEvents, KeyRing};

/// The channel on which key changes are announced (documented in proto-docs/redis.md).
pub const KEYS_CHANNEL: &str = "tessera:keys:changed";

/// Publishes key changes. Publishing is fire-and-forget: the change is already durable.
pub struct RedisKeyEvents {
    conn: ConnectionManager,
}

impl RedisKeyEvents {
    pub fn new(conn: ConnectionManager) -> RedisKeyEvents {
        RedisKeyEvents { conn }
    }
}

impl KeyEvents for RedisKeyEvents {
    fn keys_changed(&self) {
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            let sent: Result<i64, redis::RedisError> = conn.publish(KEYS_CHANNEL, "changed").await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not announce a key change over Redis; replicas will reload on their timer");
            }
        });
    }
}

/// Announces a key change and waits until Redis has taken it (the CLI, which exits next).
pub async fn announce(conn: &ConnectionManager) -> Result<(), redis::RedisError> {
    let mut conn = conn.clone();
    let _receivers: i64 = conn.publish(KEYS_CHANNEL, "changed").await?;
    Ok(())
}

/// Follows key-change announcements until the process ends, reloading the key ring on each.
/// Reconnects after a Redis outage, reloading once on reconnect in case a message was missed.
pub async fn follow_key_changes(client: redis::Client, ring: Arc<KeyRing>) {
    let mut failing = false;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(KEYS_CHANNEL).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("Redis is back: following key changes again");
                        failing = false;
                    }
                    reload(&ring).await;
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        reload(&ring).await;
                    }
                }
                Err(e) => failing = outage(failing, &e),
            },
            Err(e) => failing = outage(failing, &e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn reload(ring: &KeyRing) {
    if let Err(e) = ring.reload().await {
        tracing::warn!(error = %e, "key reload after a Redis announcement failed; keeping the current key set");
    }
}

/// Logs an outage once, not once a second.
fn outage(already: bool, e: &redis::RedisError) -> bool {
    if !already {
        tracing::warn!(error = %e, "Redis unreachable: key changes are picked up by the reload timer until it is back");
    }
    true
}
