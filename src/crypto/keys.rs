//! Signing-key generation (ring, PKCS#8) and public JWK export (RFC 7517, RFC 7518 §6,
//! RFC 8037 for Ed25519).

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::b64url;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported signing algorithm")]
    UnsupportedAlg,
    #[error("key generation failed")]
    Generate,
    #[error("private key is not a valid PKCS#8 document for its algorithm")]
    BadPrivateKey,
    #[error("stored public key does not match the private key")]
    Mismatch,
}

/// The algorithms Tessera signs with. Verification accepts exactly the one recorded with
/// each key (DESIGN §8.1), never whatever a token header claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    Es256,
    EdDsa,
}

impl KeyAlg {
    pub const ALL: [KeyAlg; 2] = [KeyAlg::Es256, KeyAlg::EdDsa];

    pub fn parse(s: &str) -> Result<KeyAlg, KeyError> {
        match s {
            "ES256" => Ok(KeyAlg::Es256),
            "EdDSA" => Ok(KeyAlg::EdDsa),
            _ => Err(KeyError::UnsupportedAlg),
        }
    }

    /// The JOSE `alg` name (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::Es256 => "ES256",
            KeyAlg::EdDsa => "EdDSA",
        }
    }

    pub fn jwt_algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyAlg::Es256 => jsonwebtoken::Algorithm::ES256,
            KeyAlg::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key as PKCS#8 DER plus its public half in the raw form JWKs and jsonwebtoken's
/// `DecodingKey::from_*_der` use (65-byte SEC1 point for P-256, 32 bytes for Ed25519).
pub struct KeyMaterial {
    pub alg: KeyAlg,
    pub private_pkcs8: Zeroizing<Vec<u8>>,
    pub public: Vec<u8>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial({}, private: [redacted])", self.alg)
    }
}

impl KeyMaterial {
    pub fn generate(alg: KeyAlg) -> Result<KeyMaterial, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            KeyAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
            KeyAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|_| KeyError::Generate)?;
        KeyMaterial::from_pkcs8(alg, Zeroizing::new(pkcs8.as_ref().to_vec()))
    }

    /// Parses (and so validates) a private key, deriving its public half.
    pub fn from_pkcs8(
        alg: KeyAlg,
        private_pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<KeyMaterial, KeyError> {
        let public = match alg {
            KeyAlg::Es256 => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &private_pkcs8,
                &SystemRandom::new(),
            )
            .map_err(|_| KeyError::BadPrivateKey)?
            .public_key()
            .as_ref()
            .to_vec(),
            KeyAlg::EdDsa => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&private_pkcs8)
                .map_err(|_| KeyError::BadPrivateKey)?
                .public_key()
                .as_ref()
                .to_vec(),
        };
        Ok(KeyMaterial {
            alg,
            private_pkcs8,
            public,
        })
    }

    /// Checks that a stored public key belongs to this private key.
    pub fn check_public(&self, stored_public: &[u8]) -> Result<(), KeyError> {
        if self.public == stored_public {
            Ok(())
        } else {
            Err(KeyError::Mismatch)
        }
    }
}

/// The public JWK of a key: `kty`, `kid`, `alg`, `use`, and the public parameters only.
pub fn public_jwk(kid: &str, alg: KeyAlg, public: &[u8]) -> Result<Value, KeyError> {
    match alg {
        KeyAlg::Es256 => {
            // Uncompressed SEC1 point: 0x04 || X (32) || Y (32).
            if public.len() != 65 || public[0] != 0x04 {
                return Err(KeyError::Mismatch);
            }
            Ok(json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64url(&public[1..33]), "y": b64url(&public[33..65]),
            }))
        }
        KeyAlg::EdDsa => {
            if public.len() != 32 {
                return Err(KeyError::Mismatch);
            }
            Ok(json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                "x": b64url(public),
            }))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_reload_from_pkcs8_and_export_public_jwks() {
        for alg in KeyAlg::ALL {
            let k = KeyMaterial::generate(alg).unwrap();
            let again = KeyMaterial::from_pkcs8(alg, k.private_pkcs8.clone()).unwrap();
            again.check_public(&k.public).unwrap();
            let jwk = public_jwk("kid-1", alg, &k.public).unwrap();
            assert_eq!(jwk["alg"], alg.as_str());
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("d").is_none());
        }
    }

    #[test]
    fn a_private_key_of_the_other_algorithm_is_refused() {
        let ec = KeyMaterial::generate(KeyAlg::Es256).unwrap();
        assert!(KeyMaterial::from_pkcs8(KeyAlg::EdDsa, ec.private_pkcs8.clone()).is_err());
        assert!(KeyMaterial::from_pkcs8(KeyAlg::Es256, Zeroizing::new(vec![1, 2, 3])).is_err());
    }
}
