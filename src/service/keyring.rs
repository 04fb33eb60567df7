//! The signing-key ring (DESIGN §5): key lifecycle by timestamps, rotation (scheduled and on
//! demand), revocation, erasure, KEK re-wrapping, and the in-memory key set that signs
//! tokens and serves the JWKS pre-serialised.
//!
//! Lifecycle. A key is *pending* from `created_at` (published, not signing), *active* from
//! `activates_at`, *retired* from `retires_at` (published, not signing), *removed* from
//! `removes_at` (unpublished, private half erased); `revoked_at` ends it at once. The signer
//! at instant t is the unrevoked key with the latest `activates_at <= t` (ties by kid), so
//! every replica switches at the same instant from the same rows, without messaging. A
//! successor activates `publish_lead` after creation: at least one JWKS cache lifetime plus
//! one reload interval, so no verifier holding a cached JWKS meets an unknown kid. A key
//! retires when its successor activates and is removed `retire_grace` (access-token lifetime
//! plus leeway) later, when every token it signed has expired.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ring::digest;

use crate::crypto::b64url;
use crate::crypto::jwt::{Signer, Verifier, VerifyingKey};
use crate::crypto::keys::{public_jwk, KeyAlg, KeyMaterial};
use crate::crypto::seal::{KekRing, SealError};
use crate::domain::{Clock, UnixTime};
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::keys::{self as key_store, KeyRecord};
use crate::store::{Db, DbConnection, StoreError};

/// The lock row that serialises every change to signing keys across replicas.
const KEYS_LOCK: &str = "signing_keys";

#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key {kid} is sealed under KEK {sealed_with}, but the configured KEK ids are {configured}: configure the KEK this key was sealed with")]
    WrongKek {
        kid: String,
        sealed_with: String,
        configured: String,
    },
    #[error("signing key {kid} does not open under its KEK ({source})")]
    Unseal { kid: String, source: SealError },
    #[error("signing key {kid} is unusable: {problem}")]
    BadKey { kid: String, problem: String },
    #[error("could not generate a signing key: {0}")]
    Generate(String),
    #[error("a rotation is already in progress: key {kid} activates at {activates_at}")]
    RotationInProgress { kid: String, activates_at: UnixTime },
    #[error("no signing key {0}")]
    NotFound(String),
}

/// Where a key is in its life at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Pending,
    Active,
    Retired,
    Removed,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Removed => "removed",
            KeyState::Revoked => "revoked",
        }
    }

    /// Whether the key is in the JWKS (and trusted for verification).
    pub fn published(self) -> bool {
        matches!(
            self,
            KeyState::Pending | KeyState::Active | KeyState::Retired
        )
    }
}

/// The state of `r` at `t`, from its timestamps alone.
pub fn state_at(r: &KeyRecord, t: UnixTime) -> KeyState {
    if r.revoked_at.is_some_and(|x| x <= t) {
        KeyState::Revoked
    } else if r.removes_at.is_some_and(|x| x <= t) {
        KeyState::Removed
    } else if t < r.activates_at {
        KeyState::Pending
    } else if r.retires_at.is_some_and(|x| x <= t) {
        KeyState::Retired
    } else {
        KeyState::Active
    }
}

/// The key that signs at `t`: of the keys Active at `t` (activated, not retired, removed
/// or revoked) with a private half, the latest activated, ties broken by kid.
pub fn signer_at(records: &[KeyRecord], t: UnixTime) -> Option<&KeyRecord> {
    // Only an Active key signs: a retired key never signs again, even when the key that
    // retired it is revoked (then a fresh key is made instead).
    records
        .iter()
        .filter(|r| r.private_key_sealed.is_some() && state_at(r, t) == KeyState::Active)
        .max_by(|a, b| {
            a.activates_at
                .cmp(&b.activates_at)
                .then_with(|| a.kid.cmp(&b.kid))
        })
}

/// The retirement times the live keys should have: each key retires when the next one (by
/// activation) activates, and is removed `grace` later; the newest never retires. Keys
/// already retired at `t` keep their history. Returns only the rows that must change.
pub fn retirement_changes(
    records: &[KeyRecord],
    t: UnixTime,
    grace: i64,
) -> Vec<(String, Option<UnixTime>, Option<UnixTime>)> {
    let mut live: Vec<&KeyRecord> = records
        .iter()
        .filter(|r| r.revoked_at.is_none() && !matches!(state_at(r, t), KeyState::Removed))
        .collect();
    live.sort_by(|a, b| {
        a.activates_at
            .cmp(&b.activates_at)
            .then_with(|| a.kid.cmp(&b.kid))
    });
    let mut changes = Vec::new();
    for (i, r) in live.iter().enumerate() {
        if r.retires_at.is_some_and(|x| x <= t) {
            continue;
        }
        let retires = live.get(i + 1).map(|next| next.activates_at);
        let removes = retires.map(|x| x + grace);
        if r.retires_at != retires || r.removes_at != removes {
            changes.push((r.kid.clone(), retires, removes));
        }
    }
    changes
}

/// Whether a scheduled rotation is due at `t`: the signer has signed for `interval` and no
/// successor is pending.
pub fn rotation_due(records: &[KeyRecord], t: UnixTime, interval: i64) -> bool {
    let pending = records.iter().any(|r| state_at(r, t) == KeyState::Pending);
    match signer_at(records, t) {
        Some(current) => !pending && current.activates_at + interval <= t,
        None => !pending,
    }
}

/// What the key ring needs from configuration.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// Algorithm of keys made by scheduled rotation.
    pub algorithm: KeyAlg,
    pub rotation_interval: Duration,
    /// How long a new key is published before it signs.
    pub publish_lead: Duration,
    /// How long a retired key stays published (token lifetime plus leeway).
    pub retire_grace: Duration,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// What verifiers and signers see. Replaced whole on reload.
pub struct KeySet {
    /// Keys that sign now or will, by activation time: the switch happens at the instant
    /// without a reload.
    signers: Vec<(UnixTime, Signer)>,
    verifier: Verifier,
    jwks: Vec<u8>,
    etag: String,
    algs: Vec<KeyAlg>,
    /// The next instant at which the published set changes (a removal).
    next_change: Option<UnixTime>,
}

impl KeySet {
    /// The signer at instant `t`.
    pub fn signer_at(&self, t: UnixTime) -> Option<&Signer> {
        self.signers
            .iter()
            .rev()
            .find(|(activates, _)| *activates <= t)
            .map(|(_, s)| s)
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The JWKS document, serialised once per key-set change.
    pub fn jwks(&self) -> &[u8] {
        &self.jwks
    }

    /// A strong ETag over the JWKS bytes (quoted, RFC 9110 §8.8.3).
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// Algorithms of the published keys.
    pub fn algorithms(&self) -> &[KeyAlg] {
        &self.algs
    }

    pub fn next_change(&self) -> Option<UnixTime> {
        self.next_change
    }
}

/// Something that tells the other replicas that keys changed (Redis pub/sub).
pub trait KeyEvents: Send + Sync {
    fn keys_changed(&self);
}

/// The outcome of revoking a key.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub revoked: KeyRecord,
    /// A key activated at once because the revoked one was signing.
    pub replacement: Option<KeyRecord>,
    pub already_revoked: bool,
}

pub struct KeyRing {
    db: Db,
    keks: Arc<KekRing>,
    policy: KeyPolicy,
    clock: Arc<dyn Clock>,
    current: RwLock<Arc<KeySet>>,
    events: OnceLock<Arc<dyn KeyEvents>>,
    instance: String,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({})", self.instance)
    }
}

impl KeyRing {
    /// Loads the key set, first making a signing key if none can sign (a new database).
    pub async fn load_or_init(
        db: Db,
        keks: Arc<KekRing>,
        policy: KeyPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<KeyRing>, KeyRingError> {
        let instance = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let t = clock.now();
        let records = db.run(move |c| key_store::list_live(c, t)).await?;
        let set = if signer_at(&records, t).is_none() {
            None
        } else {
            Some(build_set(&records, &keks, &policy, t, Arc::clone(&clock))?)
        };
        let placeholder = match set {
            Some(s) => s,
            None => empty_set(&policy, Arc::clone(&clock)),
        };
        let ring = Arc::new(KeyRing {
            db,
            keks,
            policy,
            clock,
            current: RwLock::new(Arc::new(placeholder)),
            events: OnceLock::new(),
            instance,
        });
        if ring.current().signers.is_empty() {
            ring.maintain().await?;
        }
        Ok(ring)
    }

    /// Installs the notifier used after every change (once).
    pub fn set_events(&self, events: Arc<dyn KeyEvents>) {
        let _ = self.events.set(events);
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// The clock, for work that must read the time inside a database transaction.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// The key set in force.
    pub fn current(&self) -> Arc<KeySet> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&guard)
    }

    /// The kid that signs now, if any.
    pub fn active_kid(&self) -> Option<String> {
        self.current()
            .signer_at(self.now())
            .map(|s| s.kid().to_owned())
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    /// Re-reads keys from the database. On failure the previous set stays in force.
    pub async fn reload(&self) -> Result<(), KeyRingError> {
        let t = self.now();
        let records = self.db.run(move |c| key_store::list_live(c, t)).await?;
        let set = build_set(
            &records,
            &self.keks,
            &self.policy,
            t,
            Arc::clone(&self.clock),
        )?;
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(set);
        Ok(())
    }

    async fn changed(&self) -> Result<(), KeyRingError> {
        self.reload().await?;
        if let Some(events) = self.events.get() {
            events.keys_changed();
        }
        Ok(())
    }

    /// Every key with its state now, newest first.
    pub async fn list(&self) -> Result<Vec<(KeyRecord, KeyState)>, KeyRingError> {
        let t = self.now();
        let all = self.db.run(key_store::list_all).await?;
        Ok(all
            .into_iter()
            .map(|r| {
                let s = state_at(&r, t);
                (r, s)
            })
            .collect())
    }

    /// Starts a rotation: a new key is published now and signs after `publish_lead` (at
    /// once if nothing signs). Refused while another rotation is pending, so two concurrent
    /// requests give one new key and one `RotationInProgress`.
    pub async fn rotate(
        &self,
        alg: Option<KeyAlg>,
        actor: &str,
    ) -> Result<KeyRecord, KeyRingError> {
        let material = generate(alg.unwrap_or(self.policy.algorithm)).await?;
        self.rotate_to(material, actor).await
    }

    /// As [`KeyRing::rotate`], to an imported key (e.g. an RSA key a gateway already trusts).
    pub async fn rotate_to(
        &self,
        material: KeyMaterial,
        actor: &str,
    ) -> Result<KeyRecord, KeyRingError> {
        let alg = material.alg;
        let (t, policy, keks, holder, actor) = (
            self.now(),
            self.policy.clone(),
            Arc::clone(&self.keks),
            self.instance.clone(),
            actor.to_owned(),
        );
        let created = self
            .db
            .transaction(move |c| {
                key_store::lock(c, KEYS_LOCK, &holder, t)?;
                let records = key_store::list_live(c, t)?;
                if let Some(p) = records.iter().find(|r| state_at(r, t) == KeyState::Pending) {
                    return Ok(Err(KeyRingError::RotationInProgress {
                        kid: p.kid.clone(),
                        activates_at: p.activates_at,
                    }));
                }
                let activates_at = if signer_at(&records, t).is_some() {
                    t + secs(policy.publish_lead)
                } else {
                    t
                };
                let record = insert_key(c, &keks, &material, t, activates_at)?;
                finish_change(c, &policy, t)?;
                audit::record(
                    c,
                    &AuditEvent {
                        kind: AuditKind::KeyRotated,
                        at: t,
                        actor: Some(actor),
                        subject: Some(record.kid.clone()),
                        ip: None,
                        detail: Some(format!("{alg}, signs from {activates_at}")),
                    },
                )?;
                Ok(Ok(record))
            })
            .await??;
        tracing::info!(kid = %created.kid, alg = %alg, activates_at = created.activates_at, "signing key rotation started");
        self.changed().await?;
        Ok(created)
    }

    /// Revokes a key at once (compromise): it leaves the JWKS, its tokens stop verifying, its
    /// private half is erased, and if it was signing a fresh key signs from this instant.
    pub async fn revoke(&self, kid: &str, actor: &str) -> Result<Revocation, KeyRingError> {
        let (t, policy, keks, holder, actor, kid) = (
            self.now(),
            self.policy.clone(),
            Arc::clone(&self.keks),
            self.instance.clone(),
            actor.to_owned(),
            kid.to_owned(),
        );
        let default_alg = self.policy.algorithm;
        let outcome = self
            .db
            .transaction(move |c| {
                key_store::lock(c, KEYS_LOCK, &holder, t)?;
                let Some(record) = key_store::find(c, &kid)? else {
                    return Ok(Err(KeyRingError::NotFound(kid)));
                };
                if record.revoked_at.is_some() {
                    return Ok(Ok(Revocation {
                        revoked: record,
                        replacement: None,
                        already_revoked: true,
                    }));
                }
                key_store::revoke(c, &kid, t)?;
                let records = key_store::list_live(c, t)?;
                let replacement = if signer_at(&records, t).is_none() {
                    let alg = KeyAlg::parse(&record.alg).unwrap_or(default_alg);
                    let material = KeyMaterial::generate(alg)
                        .map_err(|e| StoreError::Query(format!("key generation: {e}")))?;
                    Some(insert_key(c, &keks, &material, t, t)?)
                } else {
                    None
                };
                finish_change(c, &policy, t)?;
                let detail = replacement
                    .as_ref()
                    .map(|r| format!("replaced by {}", r.kid));
                audit::record(
                    c,
                    &AuditEvent {
                        kind: AuditKind::KeyRevoked,
                        at: t,
                        actor: Some(actor),
                        subject: Some(kid.clone()),
                        ip: None,
                        detail,
                    },
                )?;
                let revoked = key_store::find(c, &kid)?.ok_or(StoreError::NotFound)?;
                Ok(Ok(Revocation {
                    revoked,
                    replacement,
                    already_revoked: false,
                }))
            })
            .await??;
        if !outcome.already_revoked {
            tracing::warn!(kid = %outcome.revoked.kid, replacement = ?outcome.replacement.as_ref().map(|r| &r.kid), "signing key revoked");
            self.changed().await?;
        }
        Ok(outcome)
    }

    /// The periodic duty of every replica, serialised by the lock so exactly one acts:
    /// start a scheduled rotation when due (or make a key when none can sign), and erase the
    /// private halves of removed keys. Returns whether anything changed.
    pub async fn maintain(&self) -> Result<bool, KeyRingError> {
        let (t, policy, keks, holder) = (
            self.now(),
            self.policy.clone(),
            Arc::clone(&self.keks),
            self.instance.clone(),
        );
        // A cheap unlocked look first: most ticks have nothing to do, and key generation
        // (RSA especially) is not free. The decision is re-made under the lock.
        let interval = secs(self.policy.rotation_interval);
        let (due, erasable) = self
            .db
            .run(move |c| {
                Ok((
                    rotation_due(&key_store::list_live(c, t)?, t, interval),
                    !key_store::due_for_erasure(c, t)?.is_empty(),
                ))
            })
            .await?;
        if !due && !erasable {
            return Ok(false);
        }
        let material = if due {
            Some(generate(self.policy.algorithm).await?)
        } else {
            None
        };
        let changed = self
            .db
            .transaction(move |c| {
                key_store::lock(c, KEYS_LOCK, &holder, t)?;
                let mut changed = false;
                for kid in key_store::due_for_erasure(c, t)? {
                    key_store::erase_private(c, &kid)?;
                    audit::record(c, &AuditEvent { kind: AuditKind::KeyRemoved, at: t, actor: Some("scheduler".into()), subject: Some(kid.clone()), ip: None, detail: None })?;
                    tracing::info!(kid = %kid, "retired signing key removed and its private half erased");
                    changed = true;
                }
                let records = key_store::list_live(c, t)?;
                if let (true, Some(material)) = (rotation_due(&records, t, secs(policy.rotation_interval)), &material) {
                    let first = signer_at(&records, t).is_none();
                    let activates_at = if first { t } else { t + secs(policy.publish_lead) };
                    let record = insert_key(c, &keks, material, t, activates_at)?;
                    let kind = if first { AuditKind::KeyGenerated } else { AuditKind::KeyRotated };
                    audit::record(c, &AuditEvent { kind, at: t, actor: Some("scheduler".into()), subject: Some(record.kid.clone()), ip: None, detail: Some(format!("{}, signs from {activates_at}", record.alg)) })?;
                    if first {
                        tracing::info!(kid = %record.kid, "generated a signing key: none could sign");
                    } else {
                        tracing::info!(kid = %record.kid, activates_at, "scheduled signing key rotation started");
                    }
                    changed = true;
                }
                if changed {
                    finish_change(c, &policy, t)?;
                }
                Ok(changed)
            })
            .await?;
        if changed {
            self.changed().await?;
        }
        Ok(changed)
    }

    /// Re-seals every stored private key under the current KEK (after a KEK rotation).
    /// Returns how many keys moved.
    pub async fn rewrap(&self, actor: &str) -> Result<usize, KeyRingError> {
        let (t, keks, holder, actor) = (
            self.now(),
            Arc::clone(&self.keks),
            self.instance.clone(),
            actor.to_owned(),
        );
        let moved = self
            .db
            .transaction(move |c| {
                key_store::lock(c, KEYS_LOCK, &holder, t)?;
                let mut moved = 0;
                for r in key_store::list_all(c)? {
                    let Some(sealed) = r.private_key_sealed.as_deref() else {
                        continue;
                    };
                    if r.kek_id == keks.current().id() {
                        continue;
                    }
                    let plain = match open(&keks, &r, sealed) {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(e)),
                    };
                    let resealed = keks
                        .current()
                        .seal(r.kid.as_bytes(), &plain)
                        .map_err(|e| StoreError::Query(e.to_string()))?;
                    key_store::rewrap(c, &r.kid, &resealed, keks.current().id())?;
                    audit::record(
                        c,
                        &AuditEvent {
                            kind: AuditKind::KeyRewrapped,
                            at: t,
                            actor: Some(actor.clone()),
                            subject: Some(r.kid.clone()),
                            ip: None,
                            detail: Some(format!("{} -> {}", r.kek_id, keks.current().id())),
                        },
                    )?;
                    moved += 1;
                }
                Ok(Ok(moved))
            })
            .await??;
        if moved > 0 {
            self.changed().await?;
        }
        Ok(moved)
    }
}

/// Generates key material off the async workers (RSA generation takes a while).
async fn generate(alg: KeyAlg) -> Result<KeyMaterial, KeyRingError> {
    tokio::task::spawn_blocking(move || KeyMaterial::generate(alg))
        .await
        .map_err(|e| KeyRingError::Generate(e.to_string()))?
        .map_err(|e| KeyRingError::Generate(e.to_string()))
}

fn insert_key(
    c: &mut DbConnection,
    keks: &KekRing,
    material: &KeyMaterial,
    t: UnixTime,
    activates_at: UnixTime,
) -> Result<KeyRecord, StoreError> {
    // UUIDv7: time-ordered with 74 random bits, so a kid is never reused for other material,
    // even for two keys made in the same second.
    let kid = uuid::Uuid::now_v7().to_string();
    let sealed = keks
        .current()
        .seal(kid.as_bytes(), &material.private_der)
        .map_err(|e| StoreError::Query(e.to_string()))?;
    let record = KeyRecord {
        kid,
        alg: material.alg.as_str().to_owned(),
        public_key: material.public.clone(),
        private_key_sealed: Some(sealed),
        kek_id: keks.current().id().to_owned(),
        created_at: t,
        activates_at,
        retires_at: None,
        removes_at: None,
        revoked_at: None,
    };
    key_store::insert(c, &record)?;
    Ok(record)
}

/// Brings every live key's retirement times in line with the keys that follow it.
fn finish_change(c: &mut DbConnection, policy: &KeyPolicy, t: UnixTime) -> Result<(), StoreError> {
    let records = key_store::list_live(c, t)?;
    for (kid, retires, removes) in retirement_changes(&records, t, secs(policy.retire_grace)) {
        key_store::set_retirement(c, &kid, retires, removes)?;
    }
    Ok(())
}

fn empty_set(policy: &KeyPolicy, clock: Arc<dyn Clock>) -> KeySet {
    let verifier = Verifier::new(
        HashMap::new(),
        &policy.issuer,
        &policy.audience,
        policy.leeway,
        clock,
    );
    let jwks = br#"{"keys":[]}"#.to_vec();
    let etag = etag_of(&jwks);
    KeySet {
        signers: Vec::new(),
        verifier,
        jwks,
        etag,
        algs: Vec::new(),
        next_change: None,
    }
}

fn etag_of(body: &[u8]) -> String {
    let digest = digest::digest(&digest::SHA256, body);
    format!("\"{}\"", b64url(&digest.as_ref()[..16]))
}

fn bad(kid: &str, problem: impl ToString) -> KeyRingError {
    KeyRingError::BadKey {
        kid: kid.to_owned(),
        problem: problem.to_string(),
    }
}

fn build_set(
    records: &[KeyRecord],
    keks: &KekRing,
    policy: &KeyPolicy,
    t: UnixTime,
    clock: Arc<dyn Clock>,
) -> Result<KeySet, KeyRingError> {
    let mut verifying = HashMap::new();
    let mut jwks = Vec::new();
    let mut algs = Vec::new();
    let mut signers = Vec::new();
    let mut next_change: Option<UnixTime> = None;
    let mut sorted: Vec<&KeyRecord> = records.iter().collect();
    sorted.sort_by(|a, b| {
        a.activates_at
            .cmp(&b.activates_at)
            .then_with(|| a.kid.cmp(&b.kid))
    });
    let signing_now = signer_at(records, t).map(|r| r.kid.clone());
    for r in sorted {
        let state = state_at(r, t);
        if !state.published() {
            continue;
        }
        let alg = KeyAlg::parse(&r.alg)
            .map_err(|_| bad(&r.kid, format!("unknown algorithm {}", r.alg)))?;
        jwks.push(public_jwk(&r.kid, alg, &r.public_key).map_err(|e| bad(&r.kid, e))?);
        verifying.insert(
            r.kid.clone(),
            VerifyingKey::new(alg, &r.public_key).map_err(|e| bad(&r.kid, e))?,
        );
        if !algs.contains(&alg) {
            algs.push(alg);
        }
        if let Some(removes) = r.removes_at {
            next_change = Some(next_change.map_or(removes, |n| n.min(removes)));
        }
        // The current signer and every pending successor are unsealed now, so the switch
        // at `activates_at` needs no reload.
        let will_sign =
            state == KeyState::Pending || signing_now.as_deref() == Some(r.kid.as_str());
        if will_sign {
            if let Some(sealed) = r.private_key_sealed.as_deref() {
                let plain = open(keks, r, sealed)?;
                let material = KeyMaterial::from_der(alg, plain).map_err(|e| bad(&r.kid, e))?;
                material
                    .check_public(&r.public_key)
                    .map_err(|e| bad(&r.kid, e))?;
                signers.push((
                    r.activates_at,
                    Signer::new(&r.kid, &material).map_err(|e| bad(&r.kid, e))?,
                ));
            }
        }
    }
    let body = serde_json::to_vec(&serde_json::json!({ "keys": jwks })).map_err(|e| bad("", e))?;
    let etag = etag_of(&body);
    let verifier = Verifier::new(
        verifying,
        &policy.issuer,
        &policy.audience,
        policy.leeway,
        clock,
    );
    Ok(KeySet {
        signers,
        verifier,
        jwks: body,
        etag,
        algs,
        next_change,
    })
}

fn open(
    keks: &KekRing,
    r: &KeyRecord,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyRingError> {
    let kek = keks.get(&r.kek_id).ok_or_else(|| KeyRingError::WrongKek {
        kid: r.kid.clone(),
        sealed_with: r.kek_id.clone(),
        configured: keks.ids().join(", "),
    })?;
    kek.open(r.kid.as_bytes(), sealed)
        .map_err(|source| KeyRingError::Unseal {
            kid: r.kid.clone(),
            source,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: UnixTime = 1_800_000_000;
    const LEAD: i64 = 600;
    const GRACE: i64 = 960;

    fn key(kid: &str, activates_at: UnixTime) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            public_key: vec![],
            private_key_sealed: Some(vec![1]),
            kek_id: "kek".into(),
            created_at: activates_at - LEAD,
            activates_at,
            retires_at: None,
            removes_at: None,
            revoked_at: None,
        }
    }

    fn apply(records: &mut [KeyRecord], t: UnixTime) {
        for (kid, retires, removes) in retirement_changes(records, t, GRACE) {
            let r = records.iter_mut().find(|r| r.kid == kid).unwrap();
            r.retires_at = retires;
            r.removes_at = removes;
        }
    }

    #[test]
    fn a_key_moves_through_every_state_at_its_exact_instants() {
        let mut keys = vec![key("a", T0), key("b", T0 + 1000)];
        apply(&mut keys, T0);
        let a = &keys[0];
        assert_eq!(a.retires_at, Some(T0 + 1000));
        assert_eq!(a.removes_at, Some(T0 + 1000 + GRACE));
        assert_eq!(state_at(a, T0 - 1), KeyState::Pending);
        assert_eq!(state_at(a, T0), KeyState::Active);
        assert_eq!(state_at(a, T0 + 999), KeyState::Active);
        assert_eq!(state_at(a, T0 + 1000), KeyState::Retired);
        assert_eq!(state_at(a, T0 + 1000 + GRACE - 1), KeyState::Retired);
        assert_eq!(state_at(a, T0 + 1000 + GRACE), KeyState::Removed);
        let b = &keys[1];
        assert_eq!(state_at(b, T0 + 999), KeyState::Pending);
        assert_eq!(state_at(b, T0 + 1000), KeyState::Active);
        assert_eq!(b.retires_at, None);
        assert!(
            state_at(b, T0 + 999).published()
                && !KeyState::Removed.published()
                && !KeyState::Revoked.published()
        );
    }

    #[test]
    fn exactly_one_key_signs_at_every_instant_and_the_switch_is_at_activation() {
        let mut keys = vec![key("a", T0), key("b", T0 + 1000), key("c", T0 + 5000)];
        apply(&mut keys, T0);
        assert_eq!(signer_at(&keys, T0 - 1).map(|r| r.kid.as_str()), None);
        for t in [T0, T0 + 999] {
            assert_eq!(signer_at(&keys, t).unwrap().kid, "a");
        }
        for t in [T0 + 1000, T0 + 4999] {
            assert_eq!(signer_at(&keys, t).unwrap().kid, "b");
        }
        assert_eq!(signer_at(&keys, T0 + 5000).unwrap().kid, "c");
        // At every instant the signer is the one key whose state is Active.
        for t in (T0..T0 + 7000).step_by(250) {
            let active: Vec<_> = keys
                .iter()
                .filter(|r| state_at(r, t) == KeyState::Active)
                .map(|r| r.kid.clone())
                .collect();
            assert_eq!(
                active,
                vec![signer_at(&keys, t).unwrap().kid.clone()],
                "t = {t}"
            );
        }
        // Ties at the same activation instant are broken by kid, identically everywhere.
        let tie = vec![key("x", T0), key("y", T0)];
        assert_eq!(signer_at(&tie, T0).unwrap().kid, "y");
    }

    #[test]
    fn revoking_a_pending_successor_restores_the_signer_s_tenure() {
        let mut keys = vec![key("a", T0), key("b", T0 + 1000)];
        apply(&mut keys, T0);
        keys[1].revoked_at = Some(T0 + 10);
        apply(&mut keys, T0 + 10);
        assert_eq!(
            keys[0].retires_at, None,
            "a signs on until a new successor exists"
        );
        assert_eq!(signer_at(&keys, T0 + 2000).unwrap().kid, "a");
        assert_eq!(state_at(&keys[1], T0 + 10), KeyState::Revoked);
    }

    #[test]
    fn revoking_the_signer_never_revives_its_retired_predecessor() {
        let mut keys = vec![key("a", T0), key("b", T0 + 1000)];
        apply(&mut keys, T0);
        // b signs from T0+1000; revoked two seconds later, while a is retired but published.
        keys[1].revoked_at = Some(T0 + 1002);
        assert_eq!(state_at(&keys[0], T0 + 1002), KeyState::Retired);
        assert!(
            signer_at(&keys, T0 + 1002).is_none(),
            "nothing may sign: the revocation must make a fresh key"
        );
        assert!(
            rotation_due(&keys, T0 + 1002, 100_000),
            "and the duty would make one too"
        );
    }

    #[test]
    fn retired_history_is_not_rewritten() {
        let mut keys = vec![key("a", T0), key("b", T0 + 1000)];
        apply(&mut keys, T0);
        // b is revoked after a retired; a new key c replaces it at once.
        keys[1].revoked_at = Some(T0 + 1500);
        keys.push(key("c", T0 + 1500));
        apply(&mut keys, T0 + 1500);
        assert_eq!(
            keys[0].retires_at,
            Some(T0 + 1000),
            "a stays retired as it was"
        );
        assert_eq!(signer_at(&keys, T0 + 1500).unwrap().kid, "c");
    }

    #[test]
    fn rotation_is_due_after_the_interval_unless_a_successor_is_pending() {
        let keys = vec![key("a", T0)];
        assert!(!rotation_due(&keys, T0 + 99, 100));
        assert!(rotation_due(&keys, T0 + 100, 100));
        let keys = vec![key("a", T0), key("b", T0 + 150)];
        assert!(!rotation_due(&keys, T0 + 120, 100), "b is pending");
        assert!(rotation_due(&[], T0, 100), "nothing signs: make a key");
        let mut erased = key("a", T0);
        erased.private_key_sealed = None;
        assert!(
            signer_at(&[erased], T0).is_none(),
            "a key without its private half cannot sign"
        );
    }
}
