//! Users and their roles.

use diesel::prelude::*;

use super::schema::{user_roles, users};
use super::{db_error, DbConnection, StoreError};
use crate::domain::{Email, Role, UnixTime};

/// A stored account. The password hash is a PHC string; it never leaves the service layer.
#[derive(Clone)]
pub struct UserRecord {
    pub id: String,
    pub email: Email,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: UnixTime,
    pub tokens_valid_after: Option<UnixTime>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

#[derive(Queryable)]
struct UserRow {
    id: String,
    email: String,
    password_hash: String,
    disabled: bool,
    created_at: i64,
    #[allow(dead_code)]
    updated_at: i64,
    tokens_valid_after: Option<i64>,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        UserRecord {
            id: r.id,
            email: Email::from_trusted(r.email),
            password_hash: r.password_hash,
            disabled: r.disabled,
            created_at: r.created_at,
            tokens_valid_after: r.tokens_valid_after,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = users)]
struct NewUserRow<'a> {
    id: &'a str,
    email: &'a str,
    password_hash: &'a str,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
}

/// Inserts a user; `Conflict` when the normalised e-mail is taken.
pub fn insert(conn: &mut DbConnection, user: &UserRecord) -> Result<(), StoreError> {
    diesel::insert_into(users::table)
        .values(NewUserRow {
            id: &user.id,
            email: user.email.as_str(),
            password_hash: &user.password_hash,
            disabled: user.disabled,
            created_at: user.created_at,
            updated_at: user.created_at,
        })
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

pub fn find_by_email(
    conn: &mut DbConnection,
    email: &Email,
) -> Result<Option<UserRecord>, StoreError> {
    users::table
        .filter(users::email.eq(email.as_str()))
        .first::<UserRow>(conn)
        .optional()
        .map(|r| r.map(UserRecord::from))
        .map_err(db_error)
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<UserRecord>, StoreError> {
    users::table
        .find(id)
        .first::<UserRow>(conn)
        .optional()
        .map(|r| r.map(UserRecord::from))
        .map_err(db_error)
}

/// The user, read inside a write transaction so that what it says still holds at commit: on
/// PostgreSQL the row is share-locked (a concurrent disable or password change waits for this
/// transaction, or this read waits for it and sees its result); SQLite's `BEGIN IMMEDIATE`
/// already holds the database's write lock.
pub fn find_locked(conn: &mut DbConnection, id: &str) -> Result<Option<UserRecord>, StoreError> {
    let row = match conn {
        DbConnection::Postgres(pg) => users::table
            .find(id)
            .for_share()
            .first::<UserRow>(pg)
            .optional(),
        DbConnection::Sqlite(lite) => users::table.find(id).first::<UserRow>(lite).optional(),
    };
    row.map(|r| r.map(UserRecord::from)).map_err(db_error)
}

/// The account, locked for a change of the row (PostgreSQL `FOR UPDATE`; on SQLite the
/// caller's `BEGIN IMMEDIATE` transaction already holds the write lock): concurrent changes
/// of one account then run one after the other, each seeing the previous one's result.
pub fn find_for_update(
    conn: &mut DbConnection,
    id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    let row = match conn {
        DbConnection::Postgres(pg) => users::table
            .find(id)
            .for_update()
            .first::<UserRow>(pg)
            .optional(),
        DbConnection::Sqlite(lite) => users::table.find(id).first::<UserRow>(lite).optional(),
    };
    row.map(|r| r.map(UserRecord::from)).map_err(db_error)
}

pub fn count(conn: &mut DbConnection) -> Result<i64, StoreError> {
    users::table.count().get_result(conn).map_err(db_error)
}

/// Replaces the stored hash (rehash on login after a parameter change).
pub fn set_password_hash(
    conn: &mut DbConnection,
    id: &str,
    hash: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    let n = diesel::update(users::table.find(id))
        .set((users::password_hash.eq(hash), users::updated_at.eq(now)))
        .execute(conn)
        .map_err(db_error)?;
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

/// The user's roles, sorted.
pub fn roles(conn: &mut DbConnection, user_id: &str) -> Result<Vec<String>, StoreError> {
    user_roles::table
        .filter(user_roles::user_id.eq(user_id))
        .select(user_roles::role)
        .order(user_roles::role.asc())
        .load::<String>(conn)
        .map_err(db_error)
}

/// Grants a role; returns false when the user already had it. `ON CONFLICT DO NOTHING`
/// rather than catching the unique violation: on PostgreSQL a failed statement aborts the
/// whole transaction, so a concurrent grant of the same role would turn the caller's next
/// statement into an error.
pub fn grant_role(
    conn: &mut DbConnection,
    user_id: &str,
    role: &Role,
    now: UnixTime,
) -> Result<bool, StoreError> {
    use diesel::sql_types::{BigInt, Text};
    let n = diesel::sql_query(
        "INSERT INTO user_roles (user_id, role, granted_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(user_id)
    .bind::<Text, _>(role.as_str())
    .bind::<BigInt, _>(now)
    .execute(conn)
    .map_err(db_error)?;
    Ok(n == 1)
}

/// Users in id order after `after` (keyset paging: ids are UUIDv7, so this is roughly the
/// order of registration), at most `limit`.
pub fn list(
    conn: &mut DbConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UserRecord>, StoreError> {
    let rows = match after {
        Some(after) => users::table
            .filter(users::id.gt(after))
            .order(users::id.asc())
            .limit(limit)
            .load::<UserRow>(conn),
        None => users::table
            .order(users::id.asc())
            .limit(limit)
            .load::<UserRow>(conn),
    }
    .map_err(db_error)?;
    Ok(rows.into_iter().map(UserRecord::from).collect())
}

/// The roles of each of `ids`, as (user id, role) pairs sorted by user and role.
pub fn roles_of(
    conn: &mut DbConnection,
    ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    user_roles::table
        .filter(user_roles::user_id.eq_any(ids))
        .select((user_roles::user_id, user_roles::role))
        .order((user_roles::user_id.asc(), user_roles::role.asc()))
        .load(conn)
        .map_err(db_error)
}

/// Sets the disabled flag; false when there is no such user.
pub fn set_disabled(
    conn: &mut DbConnection,
    id: &str,
    disabled: bool,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let n = diesel::update(users::table.find(id))
        .set((users::disabled.eq(disabled), users::updated_at.eq(now)))
        .execute(conn)
        .map_err(db_error)?;
    Ok(n == 1)
}

/// Revokes a role; returns false when the user did not have it.
pub fn revoke_role(conn: &mut DbConnection, user_id: &str, role: &str) -> Result<bool, StoreError> {
    let n = diesel::delete(
        user_roles::table
            .filter(user_roles::user_id.eq(user_id))
            .filter(user_roles::role.eq(role)),
    )
    .execute(conn)
    .map_err(db_error)?;
    Ok(n == 1)
}
