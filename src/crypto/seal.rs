//! AES-256-GCM sealing of signing keys at rest under a key-encryption key (KEK).
//! The key id is bound as associated data, so a sealed blob cannot be moved to another row.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::digest;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the KEK must be base64 of exactly 32 bytes")]
    BadKek,
    #[error("sealed key is truncated")]
    Truncated,
    #[error("sealed key does not open under this KEK (wrong KEK, or the data was altered)")]
    Open,
    #[error("system random generator failed")]
    Random,
}

/// A key-encryption key. Its id is a fingerprint, so a row can say which KEK sealed it
/// and a wrong KEK is named as such instead of surfacing as a decryption failure.
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl Kek {
    pub fn from_base64(text: &str) -> Result<Kek, SealError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| SealError::BadKek)?,
        );
        Kek::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Kek, SealError> {
        if bytes.len() != 32 {
            return Err(SealError::BadKek);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::BadKek)?;
        // Domain-separated so the fingerprint can never equal a hash computed elsewhere.
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"tessera kek id v1\0");
        ctx.update(bytes);
        let fp = ctx.finish();
        let id = format!("kek-{}", hex(&fp.as_ref()[..8]));
        Ok(Kek {
            id,
            key: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random KEK, base64-encoded (for the development profile).
    pub fn generate_base64() -> Result<Zeroizing<String>, SealError> {
        let bytes = Zeroizing::new(super::random_bytes(32).map_err(|_| SealError::Random)?);
        Ok(Zeroizing::new(STANDARD.encode(&*bytes)))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Returns `nonce || ciphertext || tag`. Nonces are random: 96 bits is ample for the
    /// handful of keys a deployment ever seals under one KEK.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes = super::random_bytes(NONCE_LEN).map_err(|_| SealError::Random)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&nonce_bytes);
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        in_out.iter_mut().for_each(|b| *b = 0);
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Truncated);
        }
        let (nonce_bytes, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| SealError::Truncated)?;
        let mut in_out = Zeroizing::new(body.to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| SealError::Open)?
            .len();
        in_out.truncate(plain_len);
        Ok(in_out)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

/// The KEK that seals new keys, plus older KEKs still accepted for opening rows sealed
/// before a KEK rotation (until `tessera keys rewrap` has moved them).
#[derive(Debug)]
pub struct KekRing {
    current: Kek,
    previous: Vec<Kek>,
}

impl KekRing {
    pub fn new(current: Kek, previous: Vec<Kek>) -> KekRing {
        let previous = previous
            .into_iter()
            .filter(|k| k.id != current.id)
            .collect();
        KekRing { current, previous }
    }

    pub fn current(&self) -> &Kek {
        &self.current
    }

    /// The KEK with this id, if configured.
    pub fn get(&self, id: &str) -> Option<&Kek> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// Ids of every configured KEK, current first (for error messages).
    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.id.as_str())
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sealed_key_opens_only_with_same_kek_and_kid() {
        let kek = Kek::from_base64(&Kek::generate_base64().unwrap()).unwrap();
        let other = Kek::from_base64(&Kek::generate_base64().unwrap()).unwrap();
        let sealed = kek.seal(b"kid-1", b"private key bytes").unwrap();
        assert_eq!(&*kek.open(b"kid-1", &sealed).unwrap(), b"private key bytes");
        assert!(matches!(kek.open(b"kid-2", &sealed), Err(SealError::Open)));
        assert!(matches!(
            other.open(b"kid-1", &sealed),
            Err(SealError::Open)
        ));
        assert!(matches!(
            kek.open(b"kid-1", &sealed[..10]),
            Err(SealError::Truncated)
        ));
        assert_ne!(kek.id(), other.id());
    }

    #[test]
    fn kek_must_be_32_bytes_and_never_prints() {
        assert!(Kek::from_base64("c2hvcnQ=").is_err());
        assert!(Kek::from_base64("not base64 !!").is_err());
        let text = Kek::generate_base64().unwrap();
        let kek = Kek::from_base64(&text).unwrap();
        assert!(!format!("{kek:?}").contains(text.as_str()));
    }
}
