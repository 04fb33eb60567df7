//! Registration, login and the caller's profile.

use std::sync::Arc;
use std::time::Duration;

use crate::crypto::jwt::AccessClaims;
use crate::crypto::password::{HashError, Hasher};
use crate::domain::{
    now, Email, EmailError, Password, PasswordPolicy, PasswordProblem, Role, UnixTime,
};
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::users::{self, UserRecord};
use crate::store::{Db, StoreError};

use super::keyring::KeyRing;
use crate::domain::RefreshToken;
use crate::limits::Revocations;
use crate::store::sessions::{self as session_store, RefreshRecord, SessionRecord};

pub(super) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// One invalid field, as reported to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}

/// Errors of the account use-cases. `InvalidCredentials` is deliberately one variant for
/// unknown e-mail, wrong password and disabled account (DESIGN §8.2).
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("e-mail already registered")]
    EmailTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("token no longer valid")]
    TokenRevoked,
    #[error("no such user")]
    UserNotFound,
    /// An admin acting on their own account in a way that could lock them out.
    #[error("refused on the caller's own account: {0}")]
    OwnAccount(&'static str),
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
    #[error("password hashing is saturated")]
    Overloaded,
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => AccountError::Unavailable(m),
            StoreError::Conflict
            | StoreError::NotFound
            | StoreError::Query(_)
            | StoreError::Migration(_) => AccountError::Internal(e.to_string()),
        }
    }
}

impl From<HashError> for AccountError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => AccountError::Overloaded,
            HashError::Stopped
            | HashError::Params(_)
            | HashError::BadStoredHash
            | HashError::Random => AccountError::Internal(e.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: String,
    pub email: Email,
    pub created_at: UnixTime,
}

/// What a login or a refresh hands out: an access token and the session's next refresh
/// token (shown once; only its hash is stored). `Debug` shows neither token.
pub struct TokenGrant {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: RefreshToken,
    pub session_id: String,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub id: String,
    pub email: Email,
    pub roles: Vec<String>,
    pub created_at: UnixTime,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("session_id", &self.session_id)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Token settings the use-cases need.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
}

#[derive(Clone)]
pub struct Accounts {
    pub(super) db: Db,
    pub(super) hasher: Hasher,
    pub(super) keys: Arc<KeyRing>,
    pub(super) policy: PasswordPolicy,
    pub(super) tokens: TokenPolicy,
    pub(super) sessions: SessionPolicy,
    pub(super) revocations: Arc<Revocations>,
}

/// Refresh-token lifetimes (DESIGN §4).
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    /// A refresh token unused this long expires (each refresh starts a new period).
    pub idle_ttl: Duration,
    /// No session outlives this, however often it refreshes.
    pub absolute_ttl: Duration,
    /// A rotated token presented again within this window (two tabs refreshing at once) is
    /// refused without revoking the family.
    pub reuse_grace: Duration,
}

impl Accounts {
    pub fn new(
        db: Db,
        hasher: Hasher,
        keys: Arc<KeyRing>,
        policy: PasswordPolicy,
        tokens: TokenPolicy,
        sessions: SessionPolicy,
        revocations: Arc<Revocations>,
    ) -> Accounts {
        Accounts {
            db,
            hasher,
            keys,
            policy,
            tokens,
            sessions,
            revocations,
        }
    }

    /// What the hashing pool has done (for `/metrics`).
    pub fn hashing_stats(&self) -> &crate::crypto::password::PoolStats {
        self.hasher.stats()
    }

    /// Registers an account. Both fields are checked before anything is reported, so the
    /// client sees every problem at once.
    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        ip: Option<String>,
    ) -> Result<NewAccount, AccountError> {
        let mut errors = Vec::new();
        let email = match Email::parse(email) {
            Ok(e) => Some(e),
            Err(e) => {
                errors.push(FieldError {
                    field: "email",
                    code: email_code(&e),
                    message: e.to_string(),
                });
                None
            }
        };
        let password = match self.policy.check(password, email.as_ref()) {
            Ok(p) => Some(p),
            Err(problems) => {
                errors.extend(problems.into_iter().map(|p| FieldError {
                    field: "password",
                    code: password_code(&p),
                    message: p.to_string(),
                }));
                None
            }
        };
        let (Some(email), Some(password)) = (email, password) else {
            return Err(AccountError::Invalid(errors));
        };
        let hash = self.hasher.hash(password.expose()).await?;
        let t = now();
        let user = UserRecord {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.clone(),
            password_hash: hash,
            disabled: false,
            created_at: t,
            tokens_valid_after: None,
        };
        let event = AuditEvent {
            kind: AuditKind::UserRegistered,
            at: t,
            actor: Some(user.id.clone()),
            subject: Some(user.id.clone()),
            ip,
            detail: None,
        };
        let record = user.clone();
        // The unique index on the normalised e-mail decides races: of fifty concurrent
        // registrations of one address exactly one insert commits.
        self.db
            .transaction(move |c| {
                users::insert(c, &record)?;
                audit::record(c, &event)
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict => AccountError::EmailTaken,
                other => other.into(),
            })?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(NewAccount {
            id: user.id,
            email,
            created_at: t,
        })
    }

    /// Logs in with e-mail and password and issues an access token.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        ip: Option<String>,
    ) -> Result<TokenGrant, AccountError> {
        let password = Password::normalize(password);
        // The stored hash may change while the check waits in the hashing queue: another
        // login stored a rehash of the same password, or the password was changed. The
        // password is then checked once more against the new hash, which tells the two apart.
        if let Some(grant) = self.login_once(email, &password, ip.clone(), false).await? {
            return Ok(grant);
        }
        self.login_once(email, &password, ip, true)
            .await?
            .ok_or(AccountError::InvalidCredentials)
    }

    /// One login attempt. `None` when the account's hash changed after it was read (only
    /// when `last` is false; the last attempt answers 401 then).
    async fn login_once(
        &self,
        email: &str,
        password: &Password,
        ip: Option<String>,
        last: bool,
    ) -> Result<Option<TokenGrant>, AccountError> {
        // A string that is not an address cannot name an account: it takes the same path as
        // an unknown one, including the dummy hash.
        let user = match Email::parse(email) {
            Ok(email) => {
                self.db
                    .run(move |c| users::find_by_email(c, &email))
                    .await?
            }
            Err(_) => None,
        };
        let verified = self
            .hasher
            .verify(
                password.expose(),
                user.as_ref().map(|u| u.password_hash.as_str()),
            )
            .await;
        let verified = match verified {
            Ok(v) => v,
            Err(HashError::BadStoredHash) => {
                tracing::error!(
                    user_id = user.as_ref().map_or("-", |u| u.id.as_str()),
                    "stored password hash is unreadable"
                );
                return Err(self.fail_login(user.as_ref(), ip).await);
            }
            Err(e) => return Err(e.into()),
        };
        let user = match user {
            Some(u) if verified.matches && !u.disabled => u,
            other => return Err(self.fail_login(other.as_ref(), ip).await),
        };
        let rehashed = if verified.needs_rehash {
            self.rehash(password).await
        } else {
            None
        };
        let refresh =
            RefreshToken::generate().map_err(|e| AccountError::Internal(e.to_string()))?;
        let t = self.keys.now();
        let session = SessionRecord {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user.id.clone(),
            created_at: t,
            last_used_at: t,
            expires_at: t + secs(self.sessions.absolute_ttl),
            revoked_at: None,
            revoke_reason: None,
        };
        let stored = RefreshRecord {
            token_hash: refresh.hash(),
            session_id: session.id.clone(),
            created_at: t,
            expires_at: (t + secs(self.sessions.idle_ttl)).min(session.expires_at),
            used_at: None,
        };
        let ip_again = ip.clone();
        let event = AuditEvent {
            kind: AuditKind::LoginSucceeded,
            at: t,
            actor: Some(user.id.clone()),
            subject: Some(user.id.clone()),
            ip,
            detail: Some(format!("session {}", session.id)),
        };
        let (user_id, sid, verified_hash) = (
            user.id.clone(),
            session.id.clone(),
            user.password_hash.clone(),
        );
        // The password was checked against a row read before the hash, which may have waited
        // in the hashing queue for seconds: the session is created only if the account is, at
        // commit, still enabled and still has the password that was checked. Otherwise a
        // disable or password change that ended every session meanwhile would miss this one.
        // A login that stores a rehash locks the row for update (PostgreSQL), so two of them
        // run one after the other instead of deadlocking on two share locks.
        let rehash_stored = rehashed.is_some();
        let outcome = self
            .db
            .transaction(move |c| {
                let now = if rehashed.is_some() {
                    users::find_for_update(c, &user_id)?
                } else {
                    users::find_locked(c, &user_id)?
                };
                let Some(now) = now.filter(|u| !u.disabled) else {
                    return Ok(Committed::Refused);
                };
                if now.password_hash != verified_hash {
                    return Ok(Committed::HashChanged);
                }
                if let Some(hash) = &rehashed {
                    users::set_password_hash(c, &user_id, hash, t)?;
                }
                session_store::create_session(c, &session)?;
                session_store::insert_refresh(c, &stored)?;
                audit::record(c, &event)?;
                users::roles(c, &user_id).map(Committed::Roles)
            })
            .await?;
        let roles = match outcome {
            Committed::Roles(roles) => roles,
            Committed::HashChanged if !last => return Ok(None),
            Committed::HashChanged | Committed::Refused => {
                return Err(self.fail_login(Some(&user), ip_again).await)
            }
        };
        if rehash_stored {
            tracing::info!(user_id = %user.id, "password rehashed with current parameters");
        }
        // The token's times are those the roles were read after, never later: a change of
        // roles committed after this read sets a mark no earlier than `t`.
        let grant = self.issue(t, &user.id, &sid, roles, refresh)?;
        tracing::info!(user_id = %user.id, "login succeeded");
        Ok(Some(grant))
    }

    async fn fail_login(&self, user: Option<&UserRecord>, ip: Option<String>) -> AccountError {
        let subject = user.map(|u| u.id.clone());
        let event = AuditEvent {
            kind: AuditKind::LoginFailed,
            at: now(),
            actor: None,
            subject: subject.clone(),
            ip,
            detail: None,
        };
        if let Err(e) = self.db.run(move |c| audit::record(c, &event)).await {
            tracing::error!(error = %e, "could not record a failed login");
        }
        tracing::info!(user_id = subject.as_deref().unwrap_or("-"), "login failed");
        AccountError::InvalidCredentials
    }

    /// A new hash of the password with the current parameters, stored by the login's
    /// transaction; a failure only costs another try at the next login.
    async fn rehash(&self, password: &Password) -> Option<String> {
        match self.hasher.hash(password.expose()).await {
            Ok(hash) => Some(hash),
            Err(e) => {
                tracing::warn!(error = %e, "could not rehash the password");
                None
            }
        }
    }

    /// Signs an access token issued at `t`: the instant before the token's contents (roles,
    /// session) were read, so a "tokens issued before T" mark set by a change that those
    /// reads missed covers it. One instant for both the choice of key and the token's
    /// times, so tokens issued in the same second by any replica carry the same kid.
    pub(super) fn issue(
        &self,
        t: UnixTime,
        subject: &str,
        sid: &str,
        roles: Vec<String>,
        refresh_token: RefreshToken,
    ) -> Result<TokenGrant, AccountError> {
        let keys = self.keys.current();
        let signer = keys
            .signer_at(t)
            .ok_or_else(|| AccountError::Unavailable("no active signing key".into()))?;
        let ttl = self.tokens.access_ttl.as_secs();
        let claims = AccessClaims {
            iss: self.tokens.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.tokens.audience.clone(),
            exp: t + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
            iat: t,
            nbf: t,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: Some(sid.to_owned()),
            roles,
            scope: None,
            kid: None,
        };
        let access_token = signer
            .sign(&claims)
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        Ok(TokenGrant {
            access_token,
            expires_in: ttl,
            refresh_token,
            session_id: sid.to_owned(),
        })
    }

    /// The caller's profile. This is an online check: a token of a user that is gone,
    /// disabled or marked "tokens before T invalid" is refused even though it verifies.
    pub async fn profile(&self, claims: &AccessClaims) -> Result<Profile, AccountError> {
        // The revocation list first (one Redis round trip, or the database when Redis is
        // down or has lost its data), then the account and session rows.
        if self
            .revocations
            .is_revoked(&claims.jti, &claims.sub, claims.iat)
            .await?
        {
            return Err(AccountError::TokenRevoked);
        }
        let (id, sid, kid) = (claims.sub.clone(), claims.sid.clone(), claims.kid.clone());
        let found = self
            .db
            .run(move |c| {
                let Some(user) = users::find(c, &id)? else {
                    return Ok(None);
                };
                // A key revoked a moment ago on another replica is refused here before this
                // replica's key set has reloaded.
                if let Some(kid) = &kid {
                    if crate::store::keys::find(c, kid)?.is_none_or(|k| k.revoked_at.is_some()) {
                        return Ok(None);
                    }
                }
                // Every user token names its session; one that does not was not issued here.
                let session_live = match &sid {
                    Some(sid) => {
                        session_store::find_session(c, sid)?.is_some_and(|s| s.revoked_at.is_none())
                    }
                    None => false,
                };
                let roles = users::roles(c, &id)?;
                Ok(Some((user, roles, session_live)))
            })
            .await?;
        let Some((user, roles, session_live)) = found else {
            return Err(AccountError::TokenRevoked);
        };
        if user.disabled || !session_live || user.tokens_valid_after.is_some_and(|t| claims.iat < t)
        {
            return Err(AccountError::TokenRevoked);
        }
        Ok(Profile {
            id: user.id,
            email: user.email,
            roles,
            created_at: user.created_at,
        })
    }
}

/// Grants a role by e-mail (CLI, before any admin exists). Returns false when the user
/// already had it.
pub async fn grant_role(
    db: &Db,
    email: &str,
    role: &str,
    actor: &str,
) -> Result<bool, AccountError> {
    let email = Email::parse(email).map_err(|e| {
        AccountError::Invalid(vec![FieldError {
            field: "email",
            code: email_code(&e),
            message: e.to_string(),
        }])
    })?;
    let role = Role::parse(role).map_err(|e| {
        AccountError::Invalid(vec![FieldError {
            field: "role",
            code: "invalid",
            message: e.to_string(),
        }])
    })?;
    let actor = actor.to_owned();
    db.transaction(move |c| {
        let user = users::find_by_email(c, &email)?.ok_or(StoreError::NotFound)?;
        let t = now();
        let granted = users::grant_role(c, &user.id, &role, t)?;
        if granted {
            audit::record(
                c,
                &AuditEvent {
                    kind: AuditKind::RoleGranted,
                    at: t,
                    actor: Some(actor),
                    subject: Some(user.id.clone()),
                    ip: None,
                    detail: Some(role.to_string()),
                },
            )?;
        }
        Ok(granted)
    })
    .await
    .map_err(|e| match e {
        StoreError::NotFound => AccountError::Invalid(vec![FieldError {
            field: "email",
            code: "not_found",
            message: "no account has this e-mail".into(),
        }]),
        other => other.into(),
    })
}

fn email_code(e: &EmailError) -> &'static str {
    match e {
        EmailError::Empty => "required",
        EmailError::TooLong => "too_long",
        EmailError::Malformed | EmailError::BadDomain => "invalid",
    }
}

pub(super) fn password_code(p: &PasswordProblem) -> &'static str {
    match p {
        PasswordProblem::TooShort(_) => "too_short",
        PasswordProblem::TooLong => "too_long",
        PasswordProblem::TooWeak => "too_weak",
        PasswordProblem::ContainsEmail => "contains_email",
    }
}

/// How a login's transaction ended.
enum Committed {
    /// The session was created; the account's roles.
    Roles(Vec<String>),
    /// The account is gone or disabled.
    Refused,
    /// The account's hash is no longer the one the password was checked against.
    HashChanged,
}
