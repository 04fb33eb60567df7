//! Domain newtypes shared by every layer. This module imports no other module of the crate:
//! values are parsed once at the edge (`parse`) and carried in types that cannot hold an
//! invalid value afterwards.

mod email;
mod password;
mod role;

pub use email::{Email, EmailError};
pub use password::{Password, PasswordPolicy, PasswordProblem};
pub use role::{Role, RoleError};

/// Seconds since the Unix epoch. Instants are stored as BIGINT seconds so that SQLite and
/// PostgreSQL hold identical values.
pub type UnixTime = i64;

/// Reads the wall clock as Unix seconds.
pub fn now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
