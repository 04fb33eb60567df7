//! Opaque refresh tokens: `tsr_` + 256 random bits in base64url. The prefix lets secret
//! scanners recognise a leaked token; only the SHA-256 of a token is ever stored.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

pub const REFRESH_PREFIX: &str = "tsr_";
/// base64url of 32 bytes, unpadded.
const BODY_LEN: usize = 43;

pub struct RefreshToken(Zeroizing<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a refresh token")]
pub struct NotARefreshToken;

impl RefreshToken {
    pub fn generate() -> Result<RefreshToken, NotARefreshToken> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| NotARefreshToken)?;
        Ok(RefreshToken(Zeroizing::new(format!(
            "{REFRESH_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes.as_ref())
        ))))
    }

    /// Accepts only the exact shape we issue, so garbage never reaches the database.
    pub fn parse(raw: &str) -> Result<RefreshToken, NotARefreshToken> {
        let body = raw.strip_prefix(REFRESH_PREFIX).ok_or(NotARefreshToken)?;
        if body.len() != BODY_LEN
            || !body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NotARefreshToken);
        }
        Ok(RefreshToken(Zeroizing::new(raw.to_owned())))
    }

    /// The stored form: lowercase hex SHA-256 of the whole token.
    pub fn hash(&self) -> String {
        digest::digest(&digest::SHA256, self.0.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_hash_stably() {
        let t = RefreshToken::generate().unwrap();
        assert!(t.expose().starts_with("tsr_") && t.expose().len() == 47);
        let again = RefreshToken::parse(t.expose()).unwrap();
        assert_eq!(t.hash(), again.hash());
        assert_eq!(t.hash().len(), 64);
        assert_ne!(t.hash(), RefreshToken::generate().unwrap().hash());
        assert!(!format!("{t:?}").contains(&t.expose()[4..]));
    }

    #[test]
    fn malformed_truncated_and_foreign_tokens_are_refused() {
        let t = RefreshToken::generate().unwrap();
        let s = t.expose();
        for bad in [
            &s[..s.len() - 1],
            &format!("ghp_{}", &s[4..]),
            &format!("{s}A"),
            "",
            "tsr_",
            &"tsr_".repeat(1000),
            &format!("tsr_{}/", &s[4..s.len() - 1]),
        ] {
            assert!(RefreshToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
