//! The Redis mirror of the revocation list, shared with sibling services.
//!
//! Keys (proto-docs/redis.md): `{prefix}revoked:jti:{jti}` (value "1", expires with the
//! token), `{prefix}revoked:user:{user_id}` (value: the Unix time before which that user's
//! tokens are invalid, expires one token lifetime after it), and `{prefix}revocations:ready`
//! (no expiry), written last by a full re-publication. A check reads all three in one
//! `MGET`: without the `ready` key Redis has lost its data (restart, FLUSHALL), and the
//! answer is "ask the database".

use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::ConnectionManager;

use super::{Answer, MirrorState};
use crate::domain::UnixTime;

pub struct RedisMirror {
    conn: ConnectionManager,
    prefix: String,
    /// A write failed (Redis down): the mirror misses something until re-published.
    dirty: AtomicBool,
    /// The last contact failed.
    unreachable: AtomicBool,
    /// The last check found no `ready` key.
    lost: AtomicBool,
}

impl RedisMirror {
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisMirror {
        RedisMirror {
            conn,
            prefix: prefix.to_owned(),
            // A new process re-publishes once: it cannot know what it missed while down.
            dirty: AtomicBool::new(true),
            unreachable: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        }
    }

    pub fn jti_key(&self, jti: &str) -> String {
        format!("{}revoked:jti:{jti}", self.prefix)
    }

    pub fn user_key(&self, user_id: &str) -> String {
        format!("{}revoked:user:{user_id}", self.prefix)
    }

    pub fn ready_key(&self) -> String {
        format!("{}revocations:ready", self.prefix)
    }

    pub fn state(&self) -> MirrorState {
        if self.unreachable.load(Ordering::Relaxed) {
            MirrorState::Unavailable
        } else if self.lost.load(Ordering::Relaxed) || self.dirty.load(Ordering::Relaxed) {
            MirrorState::Rebuilding
        } else {
            MirrorState::Ok
        }
    }

    fn contact<T>(&self, result: Result<T, redis::RedisError>, what: &str) -> Option<T> {
        match result {
            Ok(v) => {
                if self.unreachable.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again");
                }
                Some(v)
            }
            Err(e) => {
                if !self.unreachable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, what, "Redis unreachable: revocation checks use the database");
                }
                None
            }
        }
    }

    /// One round trip: the `ready` key, the token's key and the user's mark.
    pub async fn check(&self, jti: &str, user_id: &str, iat: UnixTime) -> Answer {
        let mut conn = self.conn.clone();
        let keys = [self.ready_key(), self.jti_key(jti), self.user_key(user_id)];
        let got: Result<(Option<String>, Option<String>, Option<i64>), _> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
        let Some((ready, token, mark)) = self.contact(got, "check") else {
            return Answer::Unknown;
        };
        if ready.is_none() {
            if !self.lost.swap(true, Ordering::Relaxed) {
                tracing::warn!("Redis has lost the revocation list (restart or flush): using the database until it is re-published");
            }
            return Answer::Unknown;
        }
        if token.is_some() || mark.is_some_and(|m| iat < m) {
            Answer::Revoked
        } else {
            Answer::NotRevoked
        }
    }

    pub async fn put_token(&self, jti: &str, ttl: i64) {
        if ttl <= 0 {
            return;
        }
        let mut conn = self.conn.clone();
        let r: Result<(), _> = redis::cmd("SET")
            .arg(self.jti_key(jti))
            .arg("1")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn)
            .await;
        if self.contact(r, "write").is_none() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    pub async fn put_mark(&self, user_id: &str, mark: UnixTime, ttl: i64) {
        if ttl <= 0 {
            return;
        }
        let mut conn = self.conn.clone();
        // Never move a mark back: a replica that is behind must not undo a later mark.
        let script = redis::Script::new(
            "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') \
             if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end return 1",
        );
        let r: Result<i64, _> = script
            .key(self.user_key(user_id))
            .arg(mark)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await;
        if self.contact(r, "write").is_none() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a full re-publication is due: a write was missed, or the `ready` key is gone.
    pub async fn needs_republish(&self) -> bool {
        if self.dirty.load(Ordering::Relaxed) || self.lost.load(Ordering::Relaxed) {
            return true;
        }
        let mut conn = self.conn.clone();
        let r: Result<bool, _> = redis::cmd("EXISTS")
            .arg(self.ready_key())
            .query_async(&mut conn)
            .await;
        match self.contact(r, "probe") {
            Some(exists) => !exists,
            None => false,
        }
    }

    /// Writes every entry, then the `ready` key, in one pipeline.
    pub async fn republish(
        &self,
        tokens: &[(String, UnixTime)],
        marks: &[(String, UnixTime)],
        t: UnixTime,
        retain: i64,
    ) {
        let mut pipe = redis::pipe();
        for (jti, exp) in tokens {
            if exp - t > 0 {
                pipe.cmd("SET")
                    .arg(self.jti_key(jti))
                    .arg("1")
                    .arg("EX")
                    .arg(exp - t)
                    .ignore();
            }
        }
        for (user, mark) in marks {
            let ttl = mark + retain - t;
            if ttl > 0 {
                pipe.cmd("SET")
                    .arg(self.user_key(user))
                    .arg(mark)
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
            }
        }
        pipe.cmd("SET").arg(self.ready_key()).arg(t).ignore();
        let mut conn = self.conn.clone();
        let r: Result<(), _> = pipe.query_async(&mut conn).await;
        if self.contact(r, "republish").is_some() {
            self.dirty.store(false, Ordering::Relaxed);
            self.lost.store(false, Ordering::Relaxed);
            tracing::info!(
                tokens = tokens.len(),
                user_marks = marks.len(),
                "revocation list re-published to Redis"
            );
        }
    }
}
