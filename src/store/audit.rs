//! The audit trail of security events (DESIGN §7). Details never carry secrets.

use diesel::prelude::*;

use super::schema::audit_events;
use super::{db_error, DbConnection, StoreError};
use crate::domain::UnixTime;

/// Kinds of security event, as stored in `audit_events.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    UserRegistered,
    LoginSucceeded,
    LoginFailed,
    RoleGranted,
    RoleRevoked,
    UserDisabled,
    UserEnabled,
    SessionsRevoked,
    KeyGenerated,
    KeyRotated,
    KeyRevoked,
    KeyRemoved,
    KeyRewrapped,
    RefreshReuse,
    Logout,
    PasswordChanged,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::UserRegistered => "user_registered",
            AuditKind::LoginSucceeded => "login_succeeded",
            AuditKind::LoginFailed => "login_failed",
            AuditKind::RoleGranted => "role_granted",
            AuditKind::RoleRevoked => "role_revoked",
            AuditKind::UserDisabled => "user_disabled",
            AuditKind::UserEnabled => "user_enabled",
            AuditKind::SessionsRevoked => "sessions_revoked",
            AuditKind::KeyGenerated => "key_generated",
            AuditKind::KeyRotated => "key_rotated",
            AuditKind::KeyRevoked => "key_revoked",
            AuditKind::KeyRemoved => "key_removed",
            AuditKind::KeyRewrapped => "key_rewrapped",
            AuditKind::RefreshReuse => "refresh_reuse",
            AuditKind::Logout => "logout",
            AuditKind::PasswordChanged => "password_changed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub at: UnixTime,
    /// Who did it (a user id, `cli`, `system`).
    pub actor: Option<String>,
    /// What it was done to (a user id, a kid).
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<String>,
}

pub fn record(conn: &mut DbConnection, event: &AuditEvent) -> Result<(), StoreError> {
    diesel::insert_into(audit_events::table)
        .values((
            audit_events::id.eq(uuid::Uuid::now_v7().to_string()),
            audit_events::at.eq(event.at),
            audit_events::kind.eq(event.kind.as_str()),
            audit_events::actor.eq(event.actor.as_deref()),
            audit_events::subject.eq(event.subject.as_deref()),
            audit_events::ip.eq(event.ip.as_deref()),
            audit_events::detail.eq(event.detail.as_deref()),
        ))
        .execute(conn)
        .map_err(db_error)?;
    Ok(())
}

/// Events of one kind about one subject, newest first (tests and the future admin API).
pub fn list_for_subject(
    conn: &mut DbConnection,
    kind: AuditKind,
    subject: &str,
) -> Result<Vec<(UnixTime, Option<String>)>, StoreError> {
    audit_events::table
        .filter(audit_events::kind.eq(kind.as_str()))
        .filter(audit_events::subject.eq(subject))
        .order(audit_events::at.desc())
        .select((audit_events::at, audit_events::actor))
        .load(conn)
        .map_err(db_error)
}
