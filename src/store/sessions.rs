//! Sessions (refresh-token families), refresh tokens (hashes only) and revoked access
//! tokens: the durable truth of revocation.

use diesel::prelude::*;

use super::schema::{refresh_tokens, revoked_tokens, sessions, users};
use super::{db_error, DbConnection, StoreError};
use crate::domain::UnixTime;

#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = sessions)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub created_at: UnixTime,
    pub last_used_at: UnixTime,
    pub expires_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
    pub revoke_reason: Option<String>,
}

/// A stored refresh token: the SHA-256 of the token, never the token.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshRecord {
    pub token_hash: String,
    pub session_id: String,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
}

pub fn create_session(conn: &mut DbConnection, s: &SessionRecord) -> Result<(), StoreError> {
    diesel::insert_into(sessions::table)
        .values(s.clone())
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

pub fn insert_refresh(conn: &mut DbConnection, r: &RefreshRecord) -> Result<(), StoreError> {
    diesel::insert_into(refresh_tokens::table)
        .values(r.clone())
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

/// A refresh token and its session, by token hash.
pub fn find_refresh(
    conn: &mut DbConnection,
    hash: &str,
) -> Result<Option<(RefreshRecord, SessionRecord)>, StoreError> {
    refresh_tokens::table
        .inner_join(sessions::table)
        .filter(refresh_tokens::token_hash.eq(hash))
        .first::<(RefreshRecord, SessionRecord)>(conn)
        .optional()
        .map_err(db_error)
}

/// Marks a token used if nobody did first; false when another request won the race.
pub fn claim_refresh(conn: &mut DbConnection, hash: &str, t: UnixTime) -> Result<bool, StoreError> {
    let n = diesel::update(
        refresh_tokens::table
            .find(hash)
            .filter(refresh_tokens::used_at.is_null()),
    )
    .set(refresh_tokens::used_at.eq(Some(t)))
    .execute(conn)
    .map_err(db_error)?;
    Ok(n == 1)
}

pub fn touch_session(conn: &mut DbConnection, id: &str, t: UnixTime) -> Result<(), StoreError> {
    diesel::update(sessions::table.find(id))
        .set(sessions::last_used_at.eq(t))
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

pub fn find_session(
    conn: &mut DbConnection,
    id: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    sessions::table
        .find(id)
        .first::<SessionRecord>(conn)
        .optional()
        .map_err(db_error)
}

/// Revokes one session; false when it was already revoked or does not exist.
pub fn revoke_session(
    conn: &mut DbConnection,
    id: &str,
    t: UnixTime,
    reason: &str,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        sessions::table
            .find(id)
            .filter(sessions::revoked_at.is_null()),
    )
    .set((
        sessions::revoked_at.eq(Some(t)),
        sessions::revoke_reason.eq(Some(reason)),
    ))
    .execute(conn)
    .map_err(db_error)?;
    Ok(n == 1)
}

/// Revokes every live session of a user, except `keep`; returns how many.
pub fn revoke_user_sessions(
    conn: &mut DbConnection,
    user_id: &str,
    keep: Option<&str>,
    t: UnixTime,
    reason: &str,
) -> Result<usize, StoreError> {
    let target = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null());
    let n = match keep {
        Some(keep) => diesel::update(target.filter(sessions::id.ne(keep)))
            .set((
                sessions::revoked_at.eq(Some(t)),
                sessions::revoke_reason.eq(Some(reason)),
            ))
            .execute(conn),
        None => diesel::update(target)
            .set((
                sessions::revoked_at.eq(Some(t)),
                sessions::revoke_reason.eq(Some(reason)),
            ))
            .execute(conn),
    }
    .map_err(db_error)?;
    Ok(n)
}

/// Records a revoked access token (idempotent).
pub fn revoke_jti(
    conn: &mut DbConnection,
    jti: &str,
    user_id: &str,
    expires_at: UnixTime,
    t: UnixTime,
) -> Result<(), StoreError> {
    let inserted = diesel::insert_into(revoked_tokens::table)
        .values((
            revoked_tokens::jti.eq(jti),
            revoked_tokens::user_id.eq(user_id),
            revoked_tokens::expires_at.eq(expires_at),
            revoked_tokens::revoked_at.eq(t),
        ))
        .execute(conn)
        .map_err(db_error);
    match inserted {
        Ok(_) | Err(StoreError::Conflict) => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn is_jti_revoked(conn: &mut DbConnection, jti: &str) -> Result<bool, StoreError> {
    let n: i64 = revoked_tokens::table
        .filter(revoked_tokens::jti.eq(jti))
        .count()
        .get_result(conn)
        .map_err(db_error)?;
    Ok(n > 0)
}

/// Revocations of tokens expiring after `t`: (jti, expires_at). Callers pass `now - leeway`.
pub fn unexpired_revocations(
    conn: &mut DbConnection,
    t: UnixTime,
) -> Result<Vec<(String, UnixTime)>, StoreError> {
    revoked_tokens::table
        .filter(revoked_tokens::expires_at.gt(t))
        .select((revoked_tokens::jti, revoked_tokens::expires_at))
        .load(conn)
        .map_err(db_error)
}

/// Users whose "tokens issued before T are invalid" mark is later than `since`.
pub fn recent_user_marks(
    conn: &mut DbConnection,
    since: UnixTime,
) -> Result<Vec<(String, UnixTime)>, StoreError> {
    users::table
        .filter(users::tokens_valid_after.gt(since))
        .select((users::id, users::tokens_valid_after.assume_not_null()))
        .load(conn)
        .map_err(db_error)
}

/// Moves a user's mark forward to `t` (never back); returns the mark in force.
pub fn mark_user(
    conn: &mut DbConnection,
    user_id: &str,
    t: UnixTime,
) -> Result<UnixTime, StoreError> {
    let current: Option<Option<i64>> = users::table
        .find(user_id)
        .select(users::tokens_valid_after)
        .first(conn)
        .optional()
        .map_err(db_error)?;
    let Some(current) = current else {
        return Err(StoreError::NotFound);
    };
    let mark = current.map_or(t, |c| c.max(t));
    diesel::update(users::table.find(user_id))
        .set(users::tokens_valid_after.eq(Some(mark)))
        .execute(conn)
        .map_err(db_error)?;
    Ok(mark)
}

/// Deletes what can no longer matter: revocations of expired tokens, expired refresh tokens.
/// A revocation is kept until its token's `exp + leeway`, the last instant a verifier with
/// that leeway could still accept the token.
pub fn prune(conn: &mut DbConnection, t: UnixTime, leeway: i64) -> Result<usize, StoreError> {
    let a = diesel::delete(revoked_tokens::table.filter(revoked_tokens::expires_at.le(t - leeway)))
        .execute(conn)
        .map_err(db_error)?;
    let b = diesel::delete(refresh_tokens::table.filter(refresh_tokens::expires_at.le(t)))
        .execute(conn)
        .map_err(db_error)?;
    Ok(a + b)
}
