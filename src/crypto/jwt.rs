//! Access tokens as JWS (RFC 9068 profile): signing with a key parsed once, and verification
//! exactly as a careful sibling service would do it (DESIGN §8.1).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use std::sync::Arc;

use jsonwebtoken::{DecodingKey, Validation};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};

use super::b64url;
use super::keys::{rsa_components, KeyAlg, KeyMaterial};
use crate::domain::Clock;

/// The `typ` header of access tokens (RFC 9068 §2.1); it keeps an ID token or any other JWT
/// signed by the same key from being accepted as an access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Claims of a Tessera access token (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// The session (refresh-token family) the token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The `kid` the token was verified with (from its header; not a claim).
    #[serde(skip)]
    pub kid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("private key does not parse for its algorithm")]
    BadKey,
    #[error("signing failed")]
    Sign,
}

/// Why a token was refused. Callers answer every variant with the same 401; the variant is
/// for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token type is not at+jwt")]
    WrongType,
    #[error("token names no published key")]
    UnknownKey,
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("token carries critical header extensions")]
    CriticalHeader,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
}

/// A private key parsed once at load and reused for every token, with its JWS header
/// pre-encoded. Signatures come from ring (P-256, Ed25519) and aws-lc-rs (RSA); this type
/// only joins the base64url parts of the compact serialisation (RFC 7515 §7.1).
/// Verification is jsonwebtoken's, in [`Verifier`].
pub struct Signer {
    kid: String,
    alg: KeyAlg,
    key: SigningKey,
    header_b64: String,
}

enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(aws_lc_rs::rsa::KeyPair),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, {})", self.kid, self.alg)
    }
}

impl Signer {
    /// Parses the private key and signs a probe, so a bad key fails at load, not at the
    /// first login.
    pub fn new(kid: &str, material: &KeyMaterial) -> Result<Signer, SignError> {
        let der = material.private_der.as_slice();
        let key = match material.alg {
            KeyAlg::Es256 => SigningKey::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(|_| SignError::BadKey)?,
            ),
            KeyAlg::EdDsa => SigningKey::EdDsa(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| SignError::BadKey)?,
            ),
            KeyAlg::Rs256 => SigningKey::Rs256(
                aws_lc_rs::rsa::KeyPair::from_der(der).map_err(|_| SignError::BadKey)?,
            ),
        };
        let header =
            serde_json::json!({"alg": material.alg.as_str(), "typ": ACCESS_TOKEN_TYP, "kid": kid});
        let header_b64 = b64url(header.to_string().as_bytes());
        let signer = Signer {
            kid: kid.to_owned(),
            alg: material.alg,
            key,
            header_b64,
        };
        signer.sign_message(b"probe")?;
        Ok(signer)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.key {
            SigningKey::Es256(k) => Ok(k
                .sign(&SystemRandom::new(), message)
                .map_err(|_| SignError::Sign)?
                .as_ref()
                .to_vec()),
            SigningKey::EdDsa(k) => Ok(k.sign(message).as_ref().to_vec()),
            SigningKey::Rs256(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(|_| SignError::Sign)?;
                Ok(sig)
            }
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, SignError> {
        let payload = serde_json::to_vec(claims).map_err(|_| SignError::Sign)?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 360);
        token.push_str(&self.header_b64);
        token.push('.');
        token.push_str(&b64url(&payload));
        let signature = self.sign_message(token.as_bytes())?;
        token.push('.');
        token.push_str(&b64url(&signature));
        Ok(token)
    }
}

/// A published public key.
pub struct VerifyingKey {
    alg: KeyAlg,
    key: DecodingKey,
}

impl VerifyingKey {
    /// `public` is the raw key for P-256 (65-byte SEC1 point) and Ed25519 (32 bytes), and
    /// SPKI DER for RSA: the form `KeyMaterial` holds.
    pub fn new(alg: KeyAlg, public: &[u8]) -> Result<VerifyingKey, SignError> {
        let key = match alg {
            KeyAlg::Es256 => DecodingKey::from_ec_der(public),
            KeyAlg::EdDsa => DecodingKey::from_ed_der(public),
            KeyAlg::Rs256 => {
                let (n, e) = rsa_components(public).map_err(|_| SignError::BadKey)?;
                DecodingKey::from_rsa_raw_components(&n, &e)
            }
        };
        Ok(VerifyingKey { alg, key })
    }
}

/// Verifies access tokens against a fixed set of published keys.
pub struct Verifier {
    keys: HashMap<String, VerifyingKey>,
    issuer: String,
    audience: String,
    leeway: Duration,
    clock: Arc<dyn Clock>,
}

impl Verifier {
    pub fn new(
        keys: HashMap<String, VerifyingKey>,
        issuer: &str,
        audience: &str,
        leeway: Duration,
        clock: Arc<dyn Clock>,
    ) -> Verifier {
        Verifier {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway,
            clock,
        }
    }

    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        // An unknown `alg` (including "none") fails here, before any key is chosen.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let typ_ok = header
            .typ
            .as_deref()
            .map(|t| {
                t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
                    || t.eq_ignore_ascii_case("application/at+jwt")
            })
            .unwrap_or(false);
        if !typ_ok {
            return Err(TokenError::WrongType);
        }
        // RFC 7515 §4.1.11: we understand no extensions, so any `crit` member means reject,
        // even `"crit": null`, which the typed header would read as absent.
        if header.crit.is_some() || raw_header_has(token, "crit") {
            return Err(TokenError::CriticalHeader);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        // The key decides the algorithm; a header naming another one (e.g. HS256 with the
        // public key as HMAC secret) is refused before any signature check.
        if header.alg != key.alg.jwt_algorithm() {
            return Err(TokenError::AlgorithmMismatch);
        }
        let mut validation = Validation::new(key.alg.jwt_algorithm());
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Times are checked below against the service's clock (injectable in tests);
        // jsonwebtoken would read the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidAlgorithm => TokenError::AlgorithmMismatch,
                _ => TokenError::Malformed,
            },
        )?;
        let now = self.clock.now();
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(0);
        // RFC 7519 §4.1.4/§4.1.5: not on or after `exp`, not before `nbf`, within leeway.
        if now >= data.claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        // Also `iat`: a token "issued" in the future would slip past every "tokens issued
        // before T are invalid" mark.
        if now.saturating_add(leeway) < data.claims.nbf
            || now.saturating_add(leeway) < data.claims.iat
        {
            return Err(TokenError::NotYetValid);
        }
        let mut claims = data.claims;
        claims.kid = Some(kid.to_owned());
        Ok(claims)
    }
}

/// Whether the token's JOSE header has a member `name` at all (whatever its value).
fn raw_header_has(token: &str, name: &str) -> bool {
    use base64::Engine;
    let Some(first) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v.get(name).is_some())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::b64url;

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://id.example".into(),
            sub: "user-1".into(),
            aud: "api".into(),
            exp: now + 900,
            iat: now,
            nbf: now,
            jti: "j1".into(),
            sid: Some("s1".into()),
            roles: vec!["admin".into()],
            scope: None,
            kid: None,
        }
    }

    fn setup(alg: KeyAlg) -> (Signer, Verifier) {
        let m = KeyMaterial::generate(alg).unwrap();
        let signer = Signer::new("k1", &m).unwrap();
        let mut keys = HashMap::new();
        keys.insert("k1".to_owned(), VerifyingKey::new(alg, &m.public).unwrap());
        (
            signer,
            Verifier::new(
                keys,
                "https://id.example",
                "api",
                Duration::from_secs(30),
                Arc::new(crate::domain::SystemClock),
            ),
        )
    }

    #[test]
    fn signed_tokens_verify_for_every_algorithm() {
        let now = crate::domain::now();
        for alg in KeyAlg::ALL {
            let (signer, verifier) = setup(alg);
            let token = signer.sign(&claims(now)).unwrap();
            let mut expected = claims(now);
            expected.kid = Some("k1".into());
            assert_eq!(verifier.verify(&token).unwrap(), expected);
        }
    }

    #[test]
    fn expired_future_foreign_and_tampered_tokens_are_refused() {
        let now = crate::domain::now();
        let (signer, verifier) = setup(KeyAlg::Es256);
        let mut c = claims(now);
        c.exp = now - 120;
        assert_eq!(
            verifier.verify(&signer.sign(&c).unwrap()),
            Err(TokenError::Expired)
        );
        let mut c = claims(now);
        c.nbf = now + 600;
        assert_eq!(
            verifier.verify(&signer.sign(&c).unwrap()),
            Err(TokenError::NotYetValid)
        );
        let mut c = claims(now);
        c.iat = now + 3 * 365 * 24 * 3600;
        assert_eq!(
            verifier.verify(&signer.sign(&c).unwrap()),
            Err(TokenError::NotYetValid)
        );
        let mut c = claims(now);
        c.iss = "https://evil.example".into();
        assert_eq!(
            verifier.verify(&signer.sign(&c).unwrap()),
            Err(TokenError::WrongIssuer)
        );
        let mut c = claims(now);
        c.aud = "other".into();
        assert_eq!(
            verifier.verify(&signer.sign(&c).unwrap()),
            Err(TokenError::WrongAudience)
        );

        let token = signer.sign(&claims(now)).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut payload = claims(now);
        payload.roles = vec!["root".into()];
        parts[1] = b64url(&serde_json::to_vec(&payload).unwrap());
        assert_eq!(
            verifier.verify(&parts.join(".")),
            Err(TokenError::BadSignature)
        );

        // The same kid, but a key of the other algorithm.
        let (ed_signer, _) = setup(KeyAlg::EdDsa);
        let forged = ed_signer.sign(&claims(now)).unwrap();
        assert_eq!(verifier.verify(&forged), Err(TokenError::AlgorithmMismatch));
    }

    #[test]
    fn alg_none_and_missing_typ_are_refused() {
        let now = crate::domain::now();
        let (_, verifier) = setup(KeyAlg::Es256);
        let body = b64url(&serde_json::to_vec(&claims(now)).unwrap());
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
            body
        );
        assert_eq!(verifier.verify(&none), Err(TokenError::Malformed));
        let plain_jwt = format!(
            "{}.{}.AAAA",
            b64url(br#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#),
            body
        );
        assert_eq!(verifier.verify(&plain_jwt), Err(TokenError::WrongType));
        let crit = format!(
            "{}.{}.AAAA",
            b64url(br#"{"alg":"ES256","typ":"at+jwt","kid":"k1","crit":["exp"]}"#),
            body
        );
        assert_eq!(verifier.verify(&crit), Err(TokenError::CriticalHeader));
        let crit_null = format!(
            "{}.{}.AAAA",
            b64url(br#"{"alg":"ES256","typ":"at+jwt","kid":"k1","crit":null}"#),
            body
        );
        assert_eq!(verifier.verify(&crit_null), Err(TokenError::CriticalHeader));
        assert_eq!(verifier.verify("garbage"), Err(TokenError::Malformed));
    }
}
