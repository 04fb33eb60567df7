//! Sessions (refresh-token families), refresh tokens (hashes only) and revoked access
//! tokens: the durable truth of revocation.

use diesel::prelude::*;

use super::schema::{refresh_tokens, revoked_tokens, sessions, user_roles, users};
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

/// What a refresh decides on, read in one query: the presented token, its session, whether
/// the account is disabled, and the account's roles (sorted).
#[derive(Debug, Clone)]
pub struct RefreshView {
    pub token: RefreshRecord,
    pub session: SessionRecord,
    pub user_disabled: bool,
    pub roles: Vec<String>,
}

/// The refresh token with this hash, with its session, account flag and roles: one round
/// trip (a row per role, the account's roles joined in).
pub fn find_refresh_view(
    conn: &mut DbConnection,
    hash: &str,
) -> Result<Option<RefreshView>, StoreError> {
    let rows: Vec<(RefreshRecord, SessionRecord, bool, Option<String>)> = refresh_tokens::table
        .inner_join(sessions::table.inner_join(users::table))
        .left_join(user_roles::table.on(user_roles::user_id.eq(sessions::user_id)))
        .filter(refresh_tokens::token_hash.eq(hash))
        .select((
            refresh_tokens::all_columns,
            sessions::all_columns,
            users::disabled,
            user_roles::role.nullable(),
        ))
        .order(user_roles::role.asc())
        .load(conn)
        .map_err(db_error)?;
    let mut rows = rows.into_iter();
    let Some((token, session, user_disabled, first_role)) = rows.next() else {
        return Ok(None);
    };
    let roles = first_role
        .into_iter()
        .chain(rows.filter_map(|(_, _, _, role)| role))
        .collect();
    Ok(Some(RefreshView {
        token,
        session,
        user_disabled,
        roles,
    }))
}

/// How an attempt to rotate a refresh token ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was marked used, its session touched and `next` stored; the account's
    /// roles, read in the same transaction after the account row was locked.
    Rotated(Vec<String>),
    /// Another request marked the token used first; nothing was written.
    Lost,
    /// The session was revoked after it was read; no successor was stored.
    SessionEnded,
}

/// A refresh token rotated by [`rotate_if_valid`]: whose it was, and the account's roles.
#[derive(Debug, Clone, QueryableByName)]
pub struct Rotated {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub user_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub session_id: String,
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Text>)]
    pub roles: Vec<String>,
}

/// PostgreSQL: the whole common case of a refresh as one statement, so one round trip, atomic
/// without BEGIN/COMMIT. The token is marked used only if it is unused and unexpired, its
/// session live and unexpired and its account enabled; of concurrent refreshes one wins (the
/// others wait on the row lock, then find it used). The session is touched only if still
/// unrevoked, and the successor is inserted only when both matched. The binds (hash, now,
/// successor hash, idle TTL) go in the first CTE, each once, because diesel writes the
/// placeholder where a bind is pushed.
const ROTATE_POSTGRES: [&str; 5] = [
    "WITH p AS (SELECT ",
    "::text AS hash, ",
    "::bigint AS now, ",
    "::text AS next_hash, ",
    "::bigint AS idle_ttl
), claimed AS (
    UPDATE refresh_tokens r SET used_at = p.now
    FROM p, sessions s, users u
    WHERE r.token_hash = p.hash AND r.used_at IS NULL AND r.expires_at > p.now
      AND s.id = r.session_id AND s.revoked_at IS NULL AND s.expires_at > p.now
      AND u.id = s.user_id AND NOT u.disabled
    RETURNING r.session_id
), live AS (
    UPDATE sessions s SET last_used_at = p.now
    FROM p, claimed c
    WHERE s.id = c.session_id AND s.revoked_at IS NULL
    RETURNING s.id, s.user_id, s.expires_at
), inserted AS (
    INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, used_at)
    SELECT p.next_hash, live.id, p.now, LEAST(p.now + p.idle_ttl, live.expires_at), NULL
    FROM p, live
    RETURNING session_id
)
SELECT live.user_id, live.id AS session_id,
       ARRAY(SELECT role FROM user_roles WHERE user_id = live.user_id ORDER BY role) AS roles
FROM live JOIN inserted ON inserted.session_id = live.id",
];

/// `ROTATE_POSTGRES` with its binds, as a query of its own type. diesel prepares a query
/// once per connection and reuses it only when it can tell the query by its type; a
/// `sql_query` (and any UPDATE built with the DSL) is parsed and planned again on every
/// call, which on the refresh path was most of PostgreSQL's CPU time.
#[derive(Debug)]
struct RotatePostgres<'a> {
    hash: &'a str,
    now: UnixTime,
    next_hash: &'a str,
    idle_ttl: i64,
}

impl diesel::query_builder::QueryId for RotatePostgres<'_> {
    type QueryId = RotatePostgres<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for RotatePostgres<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for RotatePostgres<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Text};
        let [with, after_hash, after_now, after_next_hash, rest] = ROTATE_POSTGRES;
        out.push_sql(with);
        out.push_bind_param::<Text, _>(self.hash)?;
        out.push_sql(after_hash);
        out.push_bind_param::<BigInt, _>(&self.now)?;
        out.push_sql(after_now);
        out.push_bind_param::<Text, _>(self.next_hash)?;
        out.push_sql(after_next_hash);
        out.push_bind_param::<BigInt, _>(&self.idle_ttl)?;
        out.push_sql(rest);
        Ok(())
    }
}

impl<Conn> RunQueryDsl<Conn> for RotatePostgres<'_> {}

/// The common case of a refresh in one round trip, where the backend allows it (PostgreSQL):
/// rotates `hash` into `next_hash` if the token can be rotated as it stands. `None` means it
/// could not (unknown, used, expired, session ended, account disabled; nothing was written,
/// except a token claimed while its session was being revoked, which stays used),
/// and always on SQLite, whose two-step path costs no network round trip: the caller then
/// reads the token with [`find_refresh_view`] to tell which, and rotates with
/// [`rotate_refresh`].
pub fn rotate_if_valid(
    conn: &mut DbConnection,
    hash: &str,
    now: UnixTime,
    next_hash: &str,
    idle_ttl: i64,
) -> Result<Option<Rotated>, StoreError> {
    let DbConnection::Postgres(pg) = conn else {
        return Ok(None);
    };
    RotatePostgres {
        hash,
        now,
        next_hash,
        idle_ttl,
    }
    .get_result(pg)
    .optional()
    .map_err(db_error)
}

/// Rotates `hash` into `next` (whose session is the token's, of account `user_id`): marks the
/// token used if nobody did first, touches its session if it is still live, and stores the
/// successor, all or nothing. The account row is locked first (shared, on PostgreSQL), in
/// the order the admin actions lock (account, then sessions), so the roles returned are
/// those of any role change that committed before, and one in flight waits for this.
pub fn rotate_refresh(
    conn: &mut DbConnection,
    hash: &str,
    user_id: &str,
    next: &RefreshRecord,
) -> Result<Rotation, StoreError> {
    let t = next.created_at;
    super::in_transaction(conn, |c| {
        if super::users::find_locked(c, user_id)?.is_none_or(|u| u.disabled) {
            return Ok(Rotation::SessionEnded);
        }
        let claimed = diesel::update(
            refresh_tokens::table
                .find(hash)
                .filter(refresh_tokens::used_at.is_null()),
        )
        .set(refresh_tokens::used_at.eq(Some(t)))
        .execute(c)
        .map_err(db_error)?;
        if claimed != 1 {
            return Ok(Rotation::Lost);
        }
        let live = diesel::update(
            sessions::table
                .find(&next.session_id)
                .filter(sessions::revoked_at.is_null()),
        )
        .set(sessions::last_used_at.eq(t))
        .execute(c)
        .map_err(db_error)?;
        if live != 1 {
            return Ok(Rotation::SessionEnded);
        }
        // The roles as they are now, read behind the account's lock (taken first, above).
        let roles = super::users::roles(c, user_id)?;
        insert_refresh(c, next)?;
        Ok(Rotation::Rotated(roles))
    })
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

/// Moves a user's mark forward to `t` (never back); returns the mark in force. One
/// conditional UPDATE, so two concurrent marks cannot leave the earlier one in place.
pub fn mark_user(
    conn: &mut DbConnection,
    user_id: &str,
    t: UnixTime,
) -> Result<UnixTime, StoreError> {
    diesel::update(
        users::table.find(user_id).filter(
            users::tokens_valid_after
                .is_null()
                .or(users::tokens_valid_after.lt(t)),
        ),
    )
    .set(users::tokens_valid_after.eq(Some(t)))
    .execute(conn)
    .map_err(db_error)?;
    let mark: Option<Option<i64>> = users::table
        .find(user_id)
        .select(users::tokens_valid_after)
        .first(conn)
        .optional()
        .map_err(db_error)?;
    match mark {
        Some(Some(mark)) => Ok(mark),
        Some(None) | None => Err(StoreError::NotFound),
    }
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
