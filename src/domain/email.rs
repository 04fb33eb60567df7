//! A normalised e-mail address: the identity users log in with.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// Longest address accepted (RFC 5321 §4.5.3.1.3 path limit minus the angle brackets).
const MAX_LEN: usize = 254;
/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_LEN: usize = 64;

/// Why a string is not an acceptable address. The messages are shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("is required")]
    Empty,
    #[error("must be at most 254 characters")]
    TooLong,
    #[error("must look like name@example.com")]
    Malformed,
    #[error("has a domain that is not a valid host name")]
    BadDomain,
}

/// An address normalised so that one mailbox has exactly one spelling: trimmed, Unicode
/// NFKC, lower-cased, and the domain converted to ASCII (IDNA/punycode). Uniqueness is
/// enforced on this form, so `Alice@Example.COM ` and `alice@example.com` are one account.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, EmailError> {
        let folded: String = raw.trim().nfkc().collect::<String>().to_lowercase();
        if folded.is_empty() {
            return Err(EmailError::Empty);
        }
        // Bound the work before IDNA processing, which is linear but not free.
        if folded.len() > MAX_LEN * 4 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = folded.rsplit_once('@').ok_or(EmailError::Malformed)?;
        if local.is_empty()
            || local.len() > MAX_LOCAL_LEN
            || local.contains('@')
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || local.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || is_invisible(c)
                    || matches!(
                        c,
                        '"' | '(' | ')' | ',' | ':' | ';' | '<' | '>' | '[' | '\\' | ']'
                    )
            })
        {
            return Err(EmailError::Malformed);
        }
        let ascii_domain = idna::domain_to_ascii(domain).map_err(|_| EmailError::BadDomain)?;
        if !is_host_name(&ascii_domain) {
            return Err(EmailError::BadDomain);
        }
        let email = format!("{local}@{ascii_domain}");
        if email.len() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        Ok(Email(email))
    }

    /// Rebuilds an address read back from our own database, where it was stored normalised.
    pub fn from_trusted(stored: String) -> Email {
        Email(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`, used by the password policy.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map(|(l, _)| l).unwrap_or(&self.0)
    }
}

/// Format characters that render as nothing or reorder text (zero-width spaces and joiners,
/// bidi controls, word joiner, BOM, soft hyphen): they make look-alike addresses
/// (`dave\u{200b}@…` beside `dave@…`) and have no place in a mailbox name.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// A dotted host name of at least two labels, each 1–63 letters, digits or hyphens, not
/// starting or ending with a hyphen (RFC 1123 §2.1).
fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && domain.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn case_whitespace_and_width_variants_are_one_address() {
        let a = Email::parse("  Alice@Example.COM ").unwrap();
        let b = Email::parse("alice@example.com").unwrap();
        // Fullwidth letters fold to ASCII under NFKC.
        let c = Email::parse("ａｌｉｃｅ@example.com").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.as_str(), "alice@example.com");
    }

    #[test]
    fn unicode_domains_are_stored_as_punycode() {
        let e = Email::parse("user@Bücher.example").unwrap();
        assert_eq!(e.as_str(), "user@xn--bcher-kva.example");
        assert_eq!(e.local_part(), "user");
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "dave\u{200b}@example.com",
            "gro.evil\u{202e}@example.com",
            "a\u{feff}b@example.com",
            "",
            "   ",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            "a@-x.com",
            "a..b@example.com",
            "a@exa mple.com",
            "a@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(Email::parse(&long_local), Err(EmailError::Malformed));
        let long = format!("a@{}.com", "b".repeat(250));
        assert!(Email::parse(&long).is_err());
    }
}
