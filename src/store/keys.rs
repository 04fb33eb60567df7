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
