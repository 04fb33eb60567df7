//! Role names carried in access tokens.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a role is 1–64 characters of a–z, 0–9, '_', '-', ':' or '.', starting with a letter")]
pub struct RoleError;

/// A role name such as `admin`. Restricted to a small alphabet so that it is safe in a token,
/// a log line and a URL without escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Role(String);

impl Role {
    pub const ADMIN: &'static str = "admin";

    pub fn parse(raw: &str) -> Result<Role, RoleError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b':' | b'.')
            });
        if ok {
            Ok(Role(raw.to_owned()))
        } else {
            Err(RoleError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_restricted() {
        assert!(Role::parse("admin").is_ok());
        assert!(Role::parse("billing:read").is_ok());
        for bad in ["", "Admin", "1admin", "ad min", "a\"b", &"a".repeat(65)] {
            assert!(Role::parse(bad).is_err(), "{bad:?}");
        }
    }
}
