//! Account ids: UUIDs (v7, so ids sort roughly by registration), stored as their canonical
//! lower-case text.

use std::fmt;

/// An account id parsed from outside (a path segment, a paging cursor). Anything that is not a
/// UUID is refused here, before it reaches a query: no account can have such an id, and some
/// strings (a NUL byte) are not even valid PostgreSQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an account id")]
pub struct NotAUserId;

impl UserId {
    pub fn parse(raw: &str) -> Result<UserId, NotAUserId> {
        uuid::Uuid::parse_str(raw)
            .map(|u| UserId(u.hyphenated().to_string()))
            .map_err(|_| NotAUserId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_in_any_case_parses_to_its_canonical_form() {
        let id = "0193A6B2-7C4D-7E8F-9A0B-1C2D3E4F5A6B";
        assert_eq!(
            UserId::parse(id).map(|u| u.into_string()),
            Ok(id.to_lowercase())
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "no-such-user",
            "\0",
            "0193a6b2-7c4d-7e8f-9a0b-1c2d3e4f5a6",
            "1 OR 1=1",
        ] {
            assert_eq!(UserId::parse(bad), Err(NotAUserId), "{bad:?}");
        }
    }
}
