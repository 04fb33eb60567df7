//! The signing-key ring: loads keys from the database, unseals the one that signs, and keeps
//! the JWKS pre-serialised in memory with its ETag.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ring::digest;

use crate::crypto::b64url;
use crate::crypto::jwt::{Signer, Verifier, VerifyingKey};
use crate::crypto::keys::{public_jwk, KeyAlg, KeyMaterial};
use crate::crypto::seal::{Kek, SealError};
use crate::domain::{now, UnixTime};
use crate::store::audit::{self, AuditEvent, AuditKind};
use crate::store::keys::{self as key_store, KeyRecord};
use crate::store::{Db, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key {kid} is sealed under KEK {sealed_with}, but the configured KEK is {configured}: configure the KEK this database was created with")]
    WrongKek {
        kid: String,
        sealed_with: String,
        configured: String,
    },
    #[error("signing key {kid} does not open under the configured KEK ({source})")]
    Unseal { kid: String, source: SealError },
    #[error("signing key {kid} is unusable: {problem}")]
    BadKey { kid: String, problem: String },
    #[error("could not generate a signing key: {0}")]
    Generate(String),
}

/// What verifiers and signers see at one moment. Replaced whole on reload.
pub struct KeySet {
    signer: Option<Signer>,
    verifier: Verifier,
    jwks: Vec<u8>,
    etag: String,
    algs: Vec<KeyAlg>,
}

impl KeySet {
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
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
}

/// Settings the key ring needs.
#[derive(Debug, Clone)]
pub struct KeyRingSettings {
    pub algorithm: KeyAlg,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
}

pub struct KeyRing {
    db: Db,
    kek: Arc<Kek>,
    settings: KeyRingSettings,
    current: RwLock<Arc<KeySet>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({:?})", self.kek)
    }
}

impl KeyRing {
    /// Loads the key set, generating the first signing key when the database has none.
    pub async fn load_or_init(
        db: Db,
        kek: Arc<Kek>,
        settings: KeyRingSettings,
    ) -> Result<Arc<KeyRing>, KeyRingError> {
        let t = now();
        let records = db.run(move |c| key_store::list_live(c, t)).await?;
        if records.is_empty() {
            generate_first(&db, &kek, settings.algorithm).await?;
        }
        let set = load(&db, &kek, &settings).await?;
        Ok(Arc::new(KeyRing {
            db,
            kek,
            settings,
            current: RwLock::new(Arc::new(set)),
        }))
    }

    /// The key set in force now.
    pub fn current(&self) -> Arc<KeySet> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&guard)
    }

    /// Re-reads keys from the database.
    pub async fn reload(&self) -> Result<(), KeyRingError> {
        let set = load(&self.db, &self.kek, &self.settings).await?;
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(set);
        Ok(())
    }
}

async fn generate_first(db: &Db, kek: &Kek, alg: KeyAlg) -> Result<(), KeyRingError> {
    let material = KeyMaterial::generate(alg).map_err(|e| KeyRingError::Generate(e.to_string()))?;
    // UUIDv7: time-ordered with 74 random bits, so a kid is never reused for other material.
    let kid = uuid::Uuid::now_v7().to_string();
    let sealed = kek
        .seal(kid.as_bytes(), &material.private_pkcs8)
        .map_err(|e| KeyRingError::Generate(e.to_string()))?;
    let t = now();
    let record = KeyRecord {
        kid: kid.clone(),
        alg: alg.as_str().to_owned(),
        public_key: material.public.clone(),
        private_key_sealed: Some(sealed),
        kek_id: kek.id().to_owned(),
        created_at: t,
        // No verifier can hold a cached JWKS of a deployment that had no key, so the first
        // key may sign at once.
        activates_at: t,
        retires_at: None,
        removes_at: None,
        revoked_at: None,
    };
    let event = AuditEvent {
        kind: AuditKind::KeyGenerated,
        at: t,
        actor: Some("system".into()),
        subject: Some(kid.clone()),
        ip: None,
        detail: Some(alg.as_str().to_owned()),
    };
    db.transaction(move |c| {
        key_store::insert(c, &record)?;
        audit::record(c, &event)
    })
    .await?;
    tracing::info!(kid = %kid, alg = %alg, "generated the first signing key");
    Ok(())
}

/// The key that signs at `t`: the latest activated, unretired one (ties broken by kid, so
/// every replica picks the same one).
fn signing_record(records: &[KeyRecord], t: UnixTime) -> Option<&KeyRecord> {
    records
        .iter()
        .filter(|r| {
            r.activates_at <= t
                && r.retires_at.is_none_or(|x| x > t)
                && r.private_key_sealed.is_some()
        })
        .max_by(|a, b| {
            a.activates_at
                .cmp(&b.activates_at)
                .then_with(|| a.kid.cmp(&b.kid))
        })
}

async fn load(db: &Db, kek: &Kek, settings: &KeyRingSettings) -> Result<KeySet, KeyRingError> {
    let t = now();
    let records = db.run(move |c| key_store::list_live(c, t)).await?;
    let mut verifying = HashMap::new();
    let mut jwks = Vec::new();
    let mut algs = Vec::new();
    for r in &records {
        let alg = KeyAlg::parse(&r.alg).map_err(|_| KeyRingError::BadKey {
            kid: r.kid.clone(),
            problem: format!("unknown algorithm {}", r.alg),
        })?;
        let jwk = public_jwk(&r.kid, alg, &r.public_key).map_err(|e| KeyRingError::BadKey {
            kid: r.kid.clone(),
            problem: e.to_string(),
        })?;
        jwks.push(jwk);
        verifying.insert(r.kid.clone(), VerifyingKey::new(alg, &r.public_key));
        if !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    let signer = match signing_record(&records, t) {
        Some(r) => Some(unseal(kek, r)?),
        None => None,
    };
    let body = serde_json::to_vec(&serde_json::json!({ "keys": jwks })).map_err(|e| {
        KeyRingError::BadKey {
            kid: String::new(),
            problem: e.to_string(),
        }
    })?;
    let digest = digest::digest(&digest::SHA256, &body);
    let etag = format!("\"{}\"", b64url(&digest.as_ref()[..16]));
    let verifier = Verifier::new(
        verifying,
        &settings.issuer,
        &settings.audience,
        settings.leeway,
    );
    Ok(KeySet {
        signer,
        verifier,
        jwks: body,
        etag,
        algs,
    })
}

fn unseal(kek: &Kek, record: &KeyRecord) -> Result<Signer, KeyRingError> {
    let kid = record.kid.clone();
    if record.kek_id != kek.id() {
        return Err(KeyRingError::WrongKek {
            kid,
            sealed_with: record.kek_id.clone(),
            configured: kek.id().to_owned(),
        });
    }
    let sealed = record
        .private_key_sealed
        .as_deref()
        .ok_or_else(|| KeyRingError::BadKey {
            kid: kid.clone(),
            problem: "private key erased".into(),
        })?;
    let pkcs8 = kek
        .open(kid.as_bytes(), sealed)
        .map_err(|source| KeyRingError::Unseal {
            kid: kid.clone(),
            source,
        })?;
    let alg = KeyAlg::parse(&record.alg).map_err(|e| KeyRingError::BadKey {
        kid: kid.clone(),
        problem: e.to_string(),
    })?;
    let material = KeyMaterial::from_pkcs8(alg, pkcs8).map_err(|e| KeyRingError::BadKey {
        kid: kid.clone(),
        problem: e.to_string(),
    })?;
    material
        .check_public(&record.public_key)
        .map_err(|e| KeyRingError::BadKey {
            kid: kid.clone(),
            problem: e.to_string(),
        })?;
    Signer::new(&kid, &material).map_err(|e| KeyRingError::BadKey {
        kid,
        problem: e.to_string(),
    })
}
