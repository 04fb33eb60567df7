//! Signing keys, stored with the private half sealed under a KEK.

use diesel::prelude::*;

use super::schema::signing_keys;
use super::{db_error, DbConnection, StoreError};
use crate::domain::UnixTime;

/// A stored signing key. `private_key_sealed` is AES-256-GCM ciphertext; `None` once erased.
#[derive(Clone, Queryable, Insertable)]
#[diesel(table_name = signing_keys)]
pub struct KeyRecord {
    pub kid: String,
    pub alg: String,
    pub public_key: Vec<u8>,
    pub private_key_sealed: Option<Vec<u8>>,
    pub kek_id: String,
    pub created_at: UnixTime,
    pub activates_at: UnixTime,
    pub retires_at: Option<UnixTime>,
    pub removes_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kek_id", &self.kek_id)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

pub fn insert(conn: &mut DbConnection, key: &KeyRecord) -> Result<(), StoreError> {
    diesel::insert_into(signing_keys::table)
        .values(key.clone())
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

/// Every key that is still published or may still sign: not revoked, not removed.
pub fn list_live(conn: &mut DbConnection, now: UnixTime) -> Result<Vec<KeyRecord>, StoreError> {
    signing_keys::table
        .filter(signing_keys::revoked_at.is_null())
        .filter(
            signing_keys::removes_at
                .is_null()
                .or(signing_keys::removes_at.gt(now)),
        )
        .order((signing_keys::activates_at.asc(), signing_keys::kid.asc()))
        .load::<KeyRecord>(conn)
        .map_err(db_error)
}

/// Every key ever made, newest first (admin listing).
pub fn list_all(conn: &mut DbConnection) -> Result<Vec<KeyRecord>, StoreError> {
    signing_keys::table
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .load::<KeyRecord>(conn)
        .map_err(db_error)
}

pub fn find(conn: &mut DbConnection, kid: &str) -> Result<Option<KeyRecord>, StoreError> {
    signing_keys::table
        .find(kid)
        .first::<KeyRecord>(conn)
        .optional()
        .map_err(db_error)
}

/// Sets when a key stops signing and when it leaves the JWKS.
pub fn set_retirement(
    conn: &mut DbConnection,
    kid: &str,
    retires_at: Option<UnixTime>,
    removes_at: Option<UnixTime>,
) -> Result<(), StoreError> {
    diesel::update(signing_keys::table.find(kid))
        .set((
            signing_keys::retires_at.eq(retires_at),
            signing_keys::removes_at.eq(removes_at),
        ))
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

/// Marks a key revoked and erases its private half in the same statement.
pub fn revoke(conn: &mut DbConnection, kid: &str, at: UnixTime) -> Result<(), StoreError> {
    diesel::update(signing_keys::table.find(kid))
        .set((
            signing_keys::revoked_at.eq(Some(at)),
            signing_keys::private_key_sealed.eq(None::<Vec<u8>>),
        ))
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

/// Keys whose removal time has passed but whose private half is still stored.
pub fn due_for_erasure(conn: &mut DbConnection, t: UnixTime) -> Result<Vec<String>, StoreError> {
    signing_keys::table
        .filter(signing_keys::removes_at.le(t))
        .filter(signing_keys::private_key_sealed.is_not_null())
        .select(signing_keys::kid)
        .load(conn)
        .map_err(db_error)
}

pub fn erase_private(conn: &mut DbConnection, kid: &str) -> Result<(), StoreError> {
    diesel::update(signing_keys::table.find(kid))
        .set(signing_keys::private_key_sealed.eq(None::<Vec<u8>>))
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

/// Replaces a key's sealed private half (KEK rotation).
pub fn rewrap(
    conn: &mut DbConnection,
    kid: &str,
    sealed: &[u8],
    kek_id: &str,
) -> Result<(), StoreError> {
    diesel::update(signing_keys::table.find(kid))
        .set((
            signing_keys::private_key_sealed.eq(Some(sealed)),
            signing_keys::kek_id.eq(kek_id),
        ))
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

/// Takes the named lock for the rest of the current transaction: call it first in a
/// transaction. Another transaction taking the same lock waits until this one ends.
pub fn lock(
    conn: &mut DbConnection,
    name: &str,
    holder: &str,
    t: UnixTime,
) -> Result<(), StoreError> {
    use super::schema::locks;
    let n = diesel::update(locks::table.find(name))
        .set((locks::holder.eq(holder), locks::acquired_at.eq(t)))
        .execute(conn)
        .map_err(db_error)?;
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::Query(format!("lock row {name} is missing")))
    }
}
