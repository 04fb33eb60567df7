//! Sessions: refresh-token rotation with reuse detection, logout, token revocation (RFC
//! 7009) and password change.

use crate::crypto::jwt::AccessClaims;
use crate::domain::{Password, RefreshToken};
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::in_transaction;
use crate::store::sessions::{self as session_store, RefreshRecord, Rotation};
use crate::store::users;

use super::accounts::{secs, AccountError, Accounts, FieldError, TokenGrant};

/// The refusal of a token rotated a moment ago (another tab won the race): the session
/// lives on, so a browser's cookie, already replaced by the winner, must not be cleared.
pub const ALREADY_USED: &str = "the refresh token was already used";

/// What a refresh attempt found: by the one PostgreSQL statement, or by the general path's
/// read and transaction.
enum Refresh {
    Rotated {
        user_id: String,
        sid: String,
        roles: Vec<String>,
        next: RefreshToken,
    },
    /// A rotated token presented again after the grace window: the family was revoked.
    ReuseDetected,
    /// Presented again within the grace window, or lost a race: refused, family intact.
    AlreadyUsed,
    Invalid(&'static str),
}

impl Accounts {
    /// `grant_type=refresh_token`: rotates the token. Reuse of a rotated token revokes the
    /// whole family (it means the token leaked and two parties hold it, RFC 9700 §4.14.2),
    /// except within `reuse_grace`, where two tabs refreshing at once get one new pair and
    /// one refusal.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, presented: &str) -> Result<TokenGrant, AccountError> {
        let token = RefreshToken::parse(presented)
            .map_err(|_| AccountError::InvalidGrant("the refresh token is invalid"))?;
        let next = RefreshToken::generate().map_err(|e| AccountError::Internal(e.to_string()))?;
        let (hash, t) = (token.hash(), self.keys.now());
        let (grace, idle) = (
            secs(self.sessions.reuse_grace),
            secs(self.sessions.idle_ttl),
        );
        // One pooled connection. On PostgreSQL the common case is one statement that rotates
        // the token if it can be rotated as it stands; otherwise (and always on SQLite) the
        // token is read to tell why, then rotated in a transaction that re-checks what can
        // change meanwhile (used, session revoked). A refusal writes nothing, except that a token
        // claimed while its session was being revoked stays used (its session is over anyway).
        let next_hash = next.hash();
        let outcome = self
            .db
            .run(move |c| {
                if let Some(done) = session_store::rotate_if_valid(c, &hash, t, &next_hash, idle)? {
                    return Ok(Refresh::Rotated {
                        user_id: done.user_id,
                        sid: done.session_id,
                        roles: done.roles,
                        next,
                    });
                }
                let Some(view) = session_store::find_refresh_view(c, &hash)? else {
                    return Ok(Refresh::Invalid("the refresh token is invalid"));
                };
                let session = view.session;
                if session.revoked_at.is_some() {
                    return Ok(Refresh::Invalid("the session has ended"));
                }
                if let Some(used) = view.token.used_at {
                    if t - used < grace {
                        return Ok(Refresh::AlreadyUsed);
                    }
                    return in_transaction(c, |c| {
                        if !session_store::revoke_session(c, &session.id, t, "refresh_token_reuse")?
                        {
                            // Revoked meanwhile by another request: nothing left to do.
                            return Ok(Refresh::Invalid("the session has ended"));
                        }
                        audit::record(
                            c,
                            &AuditEvent {
                                kind: AuditKind::RefreshReuse,
                                at: t,
                                actor: None,
                                subject: Some(session.user_id.clone()),
                                ip: None,
                                detail: Some(format!("session {} revoked", session.id)),
                            },
                        )?;
                        Ok(Refresh::ReuseDetected)
                    });
                }
                if view.token.expires_at <= t || session.expires_at <= t {
                    return Ok(Refresh::Invalid("the refresh token has expired"));
                }
                if view.user_disabled {
                    return Ok(Refresh::Invalid("the refresh token is invalid"));
                }
                let successor = RefreshRecord {
                    token_hash: next_hash,
                    session_id: session.id.clone(),
                    created_at: t,
                    expires_at: (t + idle).min(session.expires_at),
                    used_at: None,
                };
                Ok(
                    match session_store::rotate_refresh(c, &hash, &session.user_id, &successor)? {
                        Rotation::Rotated(roles) => Refresh::Rotated {
                            user_id: session.user_id,
                            sid: session.id,
                            roles,
                            next,
                        },
                        Rotation::Lost => Refresh::AlreadyUsed,
                        Rotation::SessionEnded => Refresh::Invalid("the session has ended"),
                    },
                )
            })
            .await?;
        match outcome {
            Refresh::Rotated {
                user_id,
                sid,
                roles,
                next,
            } => self.issue(t, &user_id, &sid, roles, next),
            Refresh::ReuseDetected => {
                tracing::warn!("refresh token reuse detected: session revoked");
                Err(AccountError::InvalidGrant(
                    "the refresh token was already used; the session has been ended",
                ))
            }
            Refresh::AlreadyUsed => Err(AccountError::InvalidGrant(ALREADY_USED)),
            Refresh::Invalid(why) => Err(AccountError::InvalidGrant(why)),
        }
    }

    /// Ends the caller's session (its refresh family) and revokes the presented access
    /// token; `everywhere` ends every session of the user and invalidates every token
    /// issued until now.
    pub async fn logout(
        &self,
        claims: &AccessClaims,
        everywhere: bool,
    ) -> Result<(), AccountError> {
        // Online check first: a token already revoked (or of an ended session) must not be
        // able to end the user's other sessions.
        self.profile(claims).await?;
        let (t, user_id, sid) = (self.keys.now(), claims.sub.clone(), claims.sid.clone());
        let event = AuditEvent {
            kind: AuditKind::Logout,
            at: t,
            actor: Some(user_id.clone()),
            subject: Some(user_id.clone()),
            ip: None,
            detail: Some(if everywhere {
                "everywhere".into()
            } else {
                format!("session {}", sid.as_deref().unwrap_or("-"))
            }),
        };
        let uid = user_id.clone();
        let mark = self
            .db
            .transaction(move |c| {
                let mark = match (&sid, everywhere) {
                    (_, true) => {
                        session_store::revoke_user_sessions(c, &uid, None, t, "logout_everywhere")?;
                        Some(session_store::mark_user(c, &uid, t)?)
                    }
                    (Some(sid), false) => {
                        session_store::revoke_session(c, sid, t, "logout")?;
                        None
                    }
                    (None, false) => None,
                };
                audit::record(c, &event)?;
                Ok(mark)
            })
            .await?;
        self.revocations
            .revoke_token(&claims.jti, &claims.sub, claims.exp)
            .await?;
        if let Some(mark) = mark {
            self.revocations.publish_mark(&user_id, mark).await;
        }
        Ok(())
    }

    /// RFC 7009: revokes a refresh token's whole family, or an access token by its id. A
    /// token that is unknown, malformed or already invalid is not an error (§2.2).
    pub async fn revoke(&self, token: &str) -> Result<(), AccountError> {
        if let Ok(refresh) = RefreshToken::parse(token) {
            let (hash, t) = (refresh.hash(), self.keys.now());
            self.db
                .transaction(move |c| {
                    if let Some((_, session)) = session_store::find_refresh(c, &hash)? {
                        if session_store::revoke_session(c, &session.id, t, "revoked")? {
                            audit::record(
                                c,
                                &AuditEvent {
                                    kind: AuditKind::Logout,
                                    at: t,
                                    actor: Some(session.user_id.clone()),
                                    subject: Some(session.user_id.clone()),
                                    ip: None,
                                    detail: Some(format!(
                                        "session {} revoked (RFC 7009)",
                                        session.id
                                    )),
                                },
                            )?;
                        }
                    }
                    Ok(())
                })
                .await?;
            return Ok(());
        }
        // Only a token that verifies names a jti worth storing; anything else is ignored.
        if let Ok(claims) = self.keys.current().verifier().verify(token) {
            self.revocations
                .revoke_token(&claims.jti, &claims.sub, claims.exp)
                .await?;
        }
        Ok(())
    }

    /// Changes the password after checking the current one; ends every other session and
    /// invalidates every access token issued before now (the caller refreshes for a new one).
    #[tracing::instrument(skip_all)]
    pub async fn change_password(
        &self,
        claims: &AccessClaims,
        current: &str,
        new: &str,
    ) -> Result<(), AccountError> {
        let profile = self.profile(claims).await?;
        let uid = profile.id.clone();
        let stored = self
            .db
            .run(move |c| users::find(c, &uid))
            .await?
            .ok_or(AccountError::TokenRevoked)?;
        let verified = self
            .hasher
            .verify(
                Password::normalize(current).expose(),
                Some(&stored.password_hash),
            )
            .await?;
        let mut errors = Vec::new();
        if !verified.matches {
            errors.push(FieldError {
                field: "current_password",
                code: "incorrect",
                message: "is not the current password".into(),
            });
        }
        let new_password = match self.policy.check(new, Some(&profile.email)) {
            Ok(p) => Some(p),
            Err(problems) => {
                errors.extend(problems.into_iter().map(|p| FieldError {
                    field: "new_password",
                    code: super::accounts::password_code(&p),
                    message: p.to_string(),
                }));
                None
            }
        };
        let Some(new_password) = new_password.filter(|_| errors.is_empty()) else {
            return Err(AccountError::Invalid(errors));
        };
        let hash = self.hasher.hash(new_password.expose()).await?;
        let (t, uid, keep) = (self.keys.now(), profile.id.clone(), claims.sid.clone());
        let event = AuditEvent {
            kind: AuditKind::PasswordChanged,
            at: t,
            actor: Some(uid.clone()),
            subject: Some(uid.clone()),
            ip: None,
            detail: None,
        };
        let id = uid.clone();
        let mark = self
            .db
            .transaction(move |c| {
                users::set_password_hash(c, &id, &hash, t)?;
                session_store::revoke_user_sessions(
                    c,
                    &id,
                    keep.as_deref(),
                    t,
                    "password_changed",
                )?;
                let mark = session_store::mark_user(c, &id, t)?;
                audit::record(c, &event)?;
                Ok(mark)
            })
            .await?;
        self.revocations.publish_mark(&uid, mark).await;
        tracing::info!(user_id = %uid, "password changed; other sessions ended");
        Ok(())
    }
}
