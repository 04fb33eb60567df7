//! Use-cases: registration, login, profile, the signing-key ring. No HTTP and no SQL here;
//! errors of this layer are `AccountError` and `KeyRingError`.

pub mod accounts;
pub mod admin_users;
pub mod keyring;
pub mod sessions;

pub use accounts::{AccountError, Accounts, FieldError, NewAccount, Profile, TokenGrant};
pub use keyring::{KeyRing, KeyRingError, KeySet};
