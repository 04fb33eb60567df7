//! Hot revocation lists (DESIGN §6): the database is the truth; a mirror answers the common
//! case fast. With Redis the mirror is shared with sibling services (key layout in
//! proto-docs/redis.md); embedded, it is SQLite plus an in-process cache of revoked ids.
//! Nothing revoked ever becomes valid because the mirror is down, empty or behind: every
//! doubt is settled by the database.

pub mod memory;
pub mod rate;
pub mod redis;

use std::sync::Arc;

use crate::domain::{now, UnixTime};
use crate::store::sessions as session_store;
use crate::store::{Db, StoreError};

/// What a mirror knows about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Revoked,
    NotRevoked,
    /// The mirror cannot say (unreachable, or lost its data): ask the database.
    Unknown,
}

/// How the mirror is doing, for `/readyz` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorState {
    /// In-process cache (embedded deployment).
    Memory,
    Ok,
    /// Redis is unreachable: checks use the database.
    Unavailable,
    /// Redis lost its data or missed writes: re-publication pending.
    Rebuilding,
}

impl MirrorState {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorState::Memory => "memory",
            MirrorState::Ok => "ok",
            MirrorState::Unavailable => "unavailable",
            MirrorState::Rebuilding => "rebuilding",
        }
    }
}

enum Mirror {
    Memory(memory::MemoryMirror),
    Redis(redis::RedisMirror),
}

/// The revocation list: revoked access-token ids until they expire, and per-user
/// "tokens issued before T are invalid" marks.
pub struct Revocations {
    db: Db,
    mirror: Mirror,
    /// How long a user mark matters: the access-token lifetime plus leeway.
    retain: i64,
    /// Verifiers accept a token until `exp + leeway`, so a revocation is kept that long.
    leeway: i64,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revocations({})", self.state().as_str())
    }
}

impl Revocations {
    pub fn in_memory(db: Db, retain: i64, leeway: i64) -> Arc<Revocations> {
        Arc::new(Revocations {
            db,
            mirror: Mirror::Memory(memory::MemoryMirror::default()),
            retain,
            leeway,
        })
    }

    pub fn with_redis(
        db: Db,
        mirror: redis::RedisMirror,
        retain: i64,
        leeway: i64,
    ) -> Arc<Revocations> {
        Arc::new(Revocations {
            db,
            mirror: Mirror::Redis(mirror),
            retain,
            leeway,
        })
    }

    pub fn state(&self) -> MirrorState {
        match &self.mirror {
            Mirror::Memory(_) => MirrorState::Memory,
            Mirror::Redis(r) => r.state(),
        }
    }

    /// Revokes one access token until it expires: durably first, then in the mirror.
    pub async fn revoke_token(
        &self,
        jti: &str,
        user_id: &str,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        let (j, u, t) = (jti.to_owned(), user_id.to_owned(), now());
        self.db
            .run(move |c| session_store::revoke_jti(c, &j, &u, expires_at, t))
            .await?;
        let keep_until = expires_at + self.leeway;
        match &self.mirror {
            Mirror::Memory(m) => m.insert(jti, keep_until),
            Mirror::Redis(r) => r.put_token(jti, keep_until - t).await,
        }
        Ok(())
    }

    /// Mirrors a user's "tokens issued before `mark` are invalid" mark, which the caller has
    /// written with `store::sessions::mark_user` inside the transaction of the change that
    /// called for it (so the change and its mark commit together). The embedded mirror needs
    /// nothing: the online check reads the mark from the account row.
    pub async fn publish_mark(&self, user_id: &str, mark: UnixTime) {
        if let Mirror::Redis(r) = &self.mirror {
            r.put_mark(user_id, mark, mark + self.retain - now()).await;
        }
    }

    /// Whether a token (by id, subject and issue time) has been revoked.
    pub async fn is_revoked(
        &self,
        jti: &str,
        user_id: &str,
        iat: UnixTime,
    ) -> Result<bool, StoreError> {
        let answer = match &self.mirror {
            Mirror::Memory(m) => m.check(jti),
            Mirror::Redis(r) => r.check(jti, user_id, iat).await,
        };
        match answer {
            Answer::Revoked => Ok(true),
            Answer::NotRevoked => Ok(false),
            Answer::Unknown => self.check_database(jti, user_id, iat).await,
        }
    }

    async fn check_database(
        &self,
        jti: &str,
        user_id: &str,
        iat: UnixTime,
    ) -> Result<bool, StoreError> {
        let (j, u) = (jti.to_owned(), user_id.to_owned());
        self.db
            .run(move |c| {
                if session_store::is_jti_revoked(c, &j)? {
                    return Ok(true);
                }
                let user = crate::store::users::find(c, &u)?;
                Ok(user.is_some_and(|u| u.tokens_valid_after.is_some_and(|mark| iat < mark)))
            })
            .await
    }

    /// Deletes revocations no verifier can need any more (token expired beyond the leeway)
    /// and expired refresh tokens.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let (t, leeway) = (now(), self.leeway);
        self.db
            .run(move |c| session_store::prune(c, t, leeway))
            .await
    }

    /// Re-publishes every unexpired revocation from the database when the mirror lost data
    /// or missed writes; a no-op for the in-process mirror or a healthy Redis.
    pub async fn maintain(&self) -> Result<(), StoreError> {
        let Mirror::Redis(r) = &self.mirror else {
            return Ok(());
        };
        if !r.needs_republish().await {
            return Ok(());
        }
        let (t, leeway) = (now(), self.leeway);
        let since = t - self.retain;
        let (tokens, marks) = self
            .db
            .run(move |c| {
                Ok((
                    session_store::unexpired_revocations(c, t - leeway)?,
                    session_store::recent_user_marks(c, since)?,
                ))
            })
            .await?;
        let tokens: Vec<(String, UnixTime)> = tokens
            .into_iter()
            .map(|(jti, exp)| (jti, exp + leeway))
            .collect();
        r.republish(&tokens, &marks, t, self.retain).await;
        Ok(())
    }

    /// Loads the in-process mirror from the database (embedded start-up).
    pub async fn warm(&self) -> Result<(), StoreError> {
        match &self.mirror {
            Mirror::Memory(m) => {
                let (t, leeway) = (now(), self.leeway);
                let tokens = self
                    .db
                    .run(move |c| session_store::unexpired_revocations(c, t - leeway))
                    .await?;
                for (jti, exp) in tokens {
                    m.insert(&jti, exp + leeway);
                }
                Ok(())
            }
            Mirror::Redis(_) => self.maintain().await,
        }
    }
}
