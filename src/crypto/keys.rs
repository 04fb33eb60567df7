//! Signing-key generation and public JWK export (RFC 7517, RFC 7518 §6, RFC 8037 for
//! Ed25519). P-256 and Ed25519 keys come from ring (PKCS#8); RSA keys, which ring cannot
//! generate, from aws-lc-rs (already linked through jsonwebtoken), stored as PKCS#1.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKey as RsaPublicKey};
use aws_lc_rs::signature::KeyPair as _;
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
    #[error("RSA keys must be at least 2048 bits")]
    RsaTooSmall,
    #[error("not a PEM private key of the requested algorithm")]
    BadPem,
}

/// Smallest RSA modulus accepted, in bytes (2048 bits; NIST SP 800-131A).
const MIN_RSA_BYTES: usize = 256;

/// The algorithms Tessera signs with. Verification accepts exactly the one recorded with
/// each key (DESIGN §8.1), never whatever a token header claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    Es256,
    EdDsa,
    Rs256,
}

impl KeyAlg {
    pub const ALL: [KeyAlg; 3] = [KeyAlg::Es256, KeyAlg::EdDsa, KeyAlg::Rs256];

    pub fn parse(s: &str) -> Result<KeyAlg, KeyError> {
        match s {
            "ES256" => Ok(KeyAlg::Es256),
            "EdDSA" => Ok(KeyAlg::EdDsa),
            "RS256" => Ok(KeyAlg::Rs256),
            _ => Err(KeyError::UnsupportedAlg),
        }
    }

    /// The JOSE `alg` name (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::Es256 => "ES256",
            KeyAlg::EdDsa => "EdDSA",
            KeyAlg::Rs256 => "RS256",
        }
    }

    pub fn jwt_algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyAlg::Es256 => jsonwebtoken::Algorithm::ES256,
            KeyAlg::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            KeyAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key as DER (PKCS#8 for P-256 and Ed25519, PKCS#1 for RSA, the forms
/// jsonwebtoken signs with) plus its public half: the raw form JWKs and
/// `DecodingKey::from_*_der` use for P-256 (65-byte SEC1 point) and Ed25519 (32 bytes), and
/// SPKI DER for RSA.
pub struct KeyMaterial {
    pub alg: KeyAlg,
    pub private_der: Zeroizing<Vec<u8>>,
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
        let der = match alg {
            KeyAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec()),
            KeyAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()),
            KeyAlg::Rs256 => {
                let pair =
                    RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
                let pkcs8 = pair.as_der().map_err(|_| KeyError::Generate)?;
                return KeyMaterial::from_pem(alg, &pem("PRIVATE KEY", pkcs8.as_ref()));
            }
        }
        .map_err(|_| KeyError::Generate)?;
        KeyMaterial::from_der(alg, Zeroizing::new(der))
    }

    /// Imports a PEM private key (PKCS#8, or PKCS#1 for RSA), e.g. an RSA key an operator
    /// already trusts at a gateway.
    pub fn from_pem(alg: KeyAlg, pem: &str) -> Result<KeyMaterial, KeyError> {
        let key = match alg {
            KeyAlg::Es256 => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
            KeyAlg::EdDsa => jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()),
            KeyAlg::Rs256 => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .map_err(|_| KeyError::BadPem)?;
        KeyMaterial::from_der(alg, Zeroizing::new(key.as_bytes().to_vec()))
    }

    /// Parses (and so validates) a private key, deriving its public half.
    pub fn from_der(alg: KeyAlg, private_der: Zeroizing<Vec<u8>>) -> Result<KeyMaterial, KeyError> {
        let public = match alg {
            KeyAlg::Es256 => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &private_der,
                &SystemRandom::new(),
            )
            .map_err(|_| KeyError::BadPrivateKey)?
            .public_key()
            .as_ref()
            .to_vec(),
            KeyAlg::EdDsa => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&private_der)
                .map_err(|_| KeyError::BadPrivateKey)?
                .public_key()
                .as_ref()
                .to_vec(),
            KeyAlg::Rs256 => {
                let pair =
                    RsaKeyPair::from_der(&private_der).map_err(|_| KeyError::BadPrivateKey)?;
                if pair.public_modulus_len() < MIN_RSA_BYTES {
                    return Err(KeyError::RsaTooSmall);
                }
                pair.public_key()
                    .as_der()
                    .map_err(|_| KeyError::BadPrivateKey)?
                    .as_ref()
                    .to_vec()
            }
        };
        Ok(KeyMaterial {
            alg,
            private_der,
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
        KeyAlg::Rs256 => {
            let (n, e) = rsa_components(public)?;
            Ok(json!({
                "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64url(&n), "e": b64url(&e),
            }))
        }
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

/// Modulus and exponent (big-endian, no leading zeros) of an RSA SPKI public key.
pub fn rsa_components(spki: &[u8]) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    let key = RsaPublicKey::from_der(spki).map_err(|_| KeyError::Mismatch)?;
    Ok((
        key.modulus().big_endian_without_leading_zero().to_vec(),
        key.exponent().big_endian_without_leading_zero().to_vec(),
    ))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_reload_from_pkcs8_and_export_public_jwks() {
        for alg in KeyAlg::ALL {
            let k = KeyMaterial::generate(alg).unwrap();
            let again = KeyMaterial::from_der(alg, k.private_der.clone()).unwrap();
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
        assert!(KeyMaterial::from_der(KeyAlg::EdDsa, ec.private_der.clone()).is_err());
        assert!(KeyMaterial::from_der(KeyAlg::Rs256, ec.private_der.clone()).is_err());
        assert!(KeyMaterial::from_der(KeyAlg::Es256, Zeroizing::new(vec![1, 2, 3])).is_err());
        assert!(matches!(
            KeyMaterial::from_pem(KeyAlg::Rs256, "not pem"),
            Err(KeyError::BadPem)
        ));
    }

    #[test]
    fn rsa_keys_are_2048_bits_and_export_n_and_e() {
        let k = KeyMaterial::generate(KeyAlg::Rs256).unwrap();
        let (n, e) = rsa_components(&k.public).unwrap();
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
        // A PKCS#8 PEM of the same key imports to the same public key.
        let pair = RsaKeyPair::from_der(&k.private_der).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let again =
            KeyMaterial::from_pem(KeyAlg::Rs256, &pem("PRIVATE KEY", pkcs8.as_ref())).unwrap();
        assert_eq!(again.public, k.public);
    }
}
