//! Domain newtypes shared by every layer. This module imports no other module of the crate:
//! values are parsed once at the edge (`parse`) and carried in types that cannot hold an
//! invalid value afterwards.

mod email;
mod password;
mod refresh;
mod role;
mod user_id;

pub use email::{Email, EmailError};
pub use password::{Password, PasswordPolicy, PasswordProblem};
pub use refresh::{NotARefreshToken, RefreshToken, REFRESH_PREFIX};
pub use role::{Role, RoleError};
pub use user_id::{NotAUserId, UserId};

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

/// A source of "now", injectable so time-driven behaviour (key lifecycle) can be tested at
/// any instant.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> UnixTime;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        now()
    }
}

/// A clock that moves only when told to (tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(t: UnixTime) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(t))
    }

    pub fn set(&self, t: UnixTime) {
        self.0.store(t, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
