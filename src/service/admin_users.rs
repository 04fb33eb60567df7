//! User administration (DESIGN §3, `/v1/admin/users…`): list and read accounts, disable and
//! enable them, replace their roles, end their sessions.
//!
//! Disabling an account, changing its roles and ending its sessions each set the account's
//! "tokens issued before T are invalid" mark (DESIGN §6), so access tokens already out there
//! fail at Tessera at once and at every sibling that checks the Redis mirror; only a sibling
//! that verifies offline alone keeps accepting them until they expire (`access_ttl`).

use std::collections::BTreeSet;

use crate::domain::{Email, Role, UnixTime};
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::sessions as session_store;
use crate::store::users::{self, UserRecord};
use crate::store::StoreError;

use super::accounts::{AccountError, Accounts, FieldError};

/// An account as admins see it: never the password hash.
#[derive(Debug, Clone)]
pub struct UserView {
    pub id: String,
    pub email: Email,
    pub disabled: bool,
    pub roles: Vec<String>,
    pub created_at: UnixTime,
    /// Tokens issued before this instant are invalid.
    pub tokens_valid_after: Option<UnixTime>,
}

impl UserView {
    fn new(user: UserRecord, roles: Vec<String>) -> UserView {
        UserView {
            id: user.id,
            email: user.email,
            disabled: user.disabled,
            roles,
            created_at: user.created_at,
            tokens_valid_after: user.tokens_valid_after,
        }
    }
}

/// A page of accounts and, when more may follow, the id to ask for the next page after.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<UserView>,
    pub next: Option<String>,
}

/// Every role goes into every access token of the account: a bound keeps tokens small.
pub const MAX_ROLES: usize = 32;

fn not_found(e: StoreError) -> AccountError {
    match e {
        StoreError::NotFound => AccountError::UserNotFound,
        other => other.into(),
    }
}

fn view(c: &mut crate::store::DbConnection, id: &str) -> Result<UserView, StoreError> {
    let user = users::find(c, id)?.ok_or(StoreError::NotFound)?;
    let roles = users::roles(c, id)?;
    Ok(UserView::new(user, roles))
}

fn event(
    kind: AuditKind,
    at: UnixTime,
    actor: &str,
    subject: &str,
    detail: Option<String>,
) -> AuditEvent {
    AuditEvent {
        kind,
        at,
        actor: Some(actor.to_owned()),
        subject: Some(subject.to_owned()),
        ip: None,
        detail,
    }
}

impl Accounts {
    /// Accounts in id order, `limit` per page, after the account `after`.
    pub async fn list_users(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<UserPage, AccountError> {
        // One row more than the page: whether it exists says whether a next page does, so
        // the last page never points at an empty one.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let (mut records, roles) = self
            .db
            .run(move |c| {
                let records = users::list(c, after.as_deref(), fetch)?;
                let ids: Vec<String> = records.iter().map(|u| u.id.clone()).collect();
                Ok((records, users::roles_of(c, &ids)?))
            })
            .await?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next = more.then(|| records.last().map(|u| u.id.clone())).flatten();
        let users = records
            .into_iter()
            .map(|u| {
                let mine = roles
                    .iter()
                    .filter(|(id, _)| *id == u.id)
                    .map(|(_, role)| role.clone())
                    .collect();
                UserView::new(u, mine)
            })
            .collect();
        Ok(UserPage { users, next })
    }

    pub async fn user(&self, id: &str) -> Result<UserView, AccountError> {
        let id = id.to_owned();
        self.db.run(move |c| view(c, &id)).await.map_err(not_found)
    }

    /// Disables or enables an account. Disabling ends every session and invalidates every
    /// token issued until now; enabling lets the account log in again (old tokens stay
    /// invalid). An admin cannot disable their own account.
    pub async fn set_disabled(
        &self,
        id: &str,
        disabled: bool,
        actor: &str,
    ) -> Result<UserView, AccountError> {
        if disabled && id == actor {
            return Err(AccountError::OwnAccount(
                "an admin cannot disable their own account",
            ));
        }
        let (uid, who, clock) = (id.to_owned(), actor.to_owned(), self.keys.clock());
        let (changed, mark) = self
            .db
            .transaction(move |c| {
                // Locked first, and the mark's time read after the lock: a change that waited
                // for another one must not set a mark older than what it waited for.
                let before = users::find_for_update(c, &uid)?.ok_or(StoreError::NotFound)?;
                let t = clock.now();
                users::set_disabled(c, &uid, disabled, t)?;
                let changed = before.disabled != disabled;
                let mark = if disabled {
                    session_store::revoke_user_sessions(c, &uid, None, t, "account_disabled")?;
                    Some(session_store::mark_user(c, &uid, t)?)
                } else {
                    None
                };
                if changed {
                    let kind = if disabled {
                        AuditKind::UserDisabled
                    } else {
                        AuditKind::UserEnabled
                    };
                    audit::record(c, &event(kind, t, &who, &uid, None))?;
                }
                Ok((changed, mark))
            })
            .await
            .map_err(not_found)?;
        if let Some(mark) = mark {
            self.revocations.publish_mark(id, mark).await;
        }
        if changed {
            tracing::info!(user_id = %id, actor = %actor, disabled, "account disabled flag changed");
        }
        self.user(id).await
    }

    /// Replaces an account's roles with `roles`. A change invalidates the account's tokens
    /// issued until now (they carry the old roles; the client refreshes for new ones). An
    /// admin cannot take the `admin` role from their own account.
    pub async fn set_roles(
        &self,
        id: &str,
        roles: &[String],
        actor: &str,
    ) -> Result<UserView, AccountError> {
        if roles.len() > MAX_ROLES {
            return Err(AccountError::Invalid(vec![FieldError {
                field: "roles",
                code: "too_many",
                message: format!("at most {MAX_ROLES} roles"),
            }]));
        }
        let mut wanted = BTreeSet::new();
        let mut errors = Vec::new();
        for raw in roles {
            match Role::parse(raw) {
                Ok(role) => {
                    wanted.insert(role.as_str().to_owned());
                }
                Err(e) => errors.push(FieldError {
                    field: "roles",
                    code: "invalid",
                    message: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(AccountError::Invalid(errors));
        }
        if id == actor && !wanted.contains(Role::ADMIN) {
            return Err(AccountError::OwnAccount(
                "an admin cannot remove the admin role from their own account",
            ));
        }
        let (uid, who, clock) = (id.to_owned(), actor.to_owned(), self.keys.clock());
        let mark = self
            .db
            .transaction(move |c| {
                // Locked first: two concurrent replacements run one after the other, the
                // second replacing what the first wrote (not adding to it).
                users::find_for_update(c, &uid)?.ok_or(StoreError::NotFound)?;
                let t = clock.now();
                let current: BTreeSet<String> = users::roles(c, &uid)?.into_iter().collect();
                // Only what this transaction itself changed is audited and marked: a
                // concurrent request may have made the same change first.
                let mut changed = false;
                for gone in current.difference(&wanted) {
                    if users::revoke_role(c, &uid, gone)? {
                        changed = true;
                        audit::record(
                            c,
                            &event(AuditKind::RoleRevoked, t, &who, &uid, Some(gone.clone())),
                        )?;
                    }
                }
                for new in wanted.difference(&current) {
                    // Parsed above; parse again to hold a `Role`, the store's input type.
                    let role = Role::parse(new).map_err(|e| StoreError::Query(e.to_string()))?;
                    if users::grant_role(c, &uid, &role, t)? {
                        changed = true;
                        audit::record(
                            c,
                            &event(AuditKind::RoleGranted, t, &who, &uid, Some(new.clone())),
                        )?;
                    }
                }
                // The mark commits with the change: tokens carrying the old roles must not
                // outlive a change that is already in force.
                changed
                    .then(|| session_store::mark_user(c, &uid, t))
                    .transpose()
            })
            .await
            .map_err(not_found)?;
        if let Some(mark) = mark {
            self.revocations.publish_mark(id, mark).await;
            tracing::info!(user_id = %id, actor = %actor, "roles replaced");
        }
        self.user(id).await
    }

    /// Ends every session of an account and invalidates every token issued until now;
    /// returns how many sessions were live.
    pub async fn end_sessions(&self, id: &str, actor: &str) -> Result<usize, AccountError> {
        let (uid, who, clock) = (id.to_owned(), actor.to_owned(), self.keys.clock());
        let (ended, mark) = self
            .db
            .transaction(move |c| {
                users::find_for_update(c, &uid)?.ok_or(StoreError::NotFound)?;
                let t = clock.now();
                let n = session_store::revoke_user_sessions(c, &uid, None, t, "ended_by_admin")?;
                let mark = session_store::mark_user(c, &uid, t)?;
                audit::record(
                    c,
                    &event(
                        AuditKind::SessionsRevoked,
                        t,
                        &who,
                        &uid,
                        Some(format!("{n} sessions")),
                    ),
                )?;
                Ok((n, mark))
            })
            .await
            .map_err(not_found)?;
        self.revocations.publish_mark(id, mark).await;
        tracing::info!(user_id = %id, actor = %actor, sessions = ended, "sessions ended by an admin");
        Ok(ended)
    }
}
