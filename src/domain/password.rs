//! Passwords as submitted by users, and the policy a new one must meet.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use super::Email;

/// Upper bound on a submitted password, in bytes. Hashing cost does not grow with length
/// (Argon2 pre-hashes its input), but a bound keeps request handling predictable.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password in Unicode NFKC form, so that the same characters typed on two keyboards (or
/// pasted from two sources) hash identically. Never printed: `Debug` is redacted and the
/// buffer is wiped on drop.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Normalises without judging strength: what login uses.
    pub fn normalize(raw: &str) -> Password {
        Password(Zeroizing::new(raw.nfkc().collect()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// One reason a new password is refused; the messages are shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordProblem {
    #[error("must be at least {0} characters")]
    TooShort(usize),
    #[error("must be at most 1024 bytes")]
    TooLong,
    #[error("is too easy to guess; use a longer phrase of unrelated words")]
    TooWeak,
    #[error("must not contain the e-mail address")]
    ContainsEmail,
}

/// What a new password must satisfy (NIST SP 800-63B §5.1.1.2: a length floor, a check
/// against guessable values, no composition rules).
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_chars: usize,
    /// Minimum zxcvbn score, 0–4; 3 means "safely unguessable: moderate protection from
    /// offline slow-hash scenario".
    pub min_strength: u8,
}

impl PasswordPolicy {
    /// Normalises `raw` and checks it for an account with address `email`. All problems are
    /// reported at once, so a form can show them together.
    pub fn check(
        &self,
        raw: &str,
        email: Option<&Email>,
    ) -> Result<Password, Vec<PasswordProblem>> {
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(vec![PasswordProblem::TooLong]);
        }
        let password = Password::normalize(raw);
        if password.expose().len() > MAX_PASSWORD_BYTES {
            return Err(vec![PasswordProblem::TooLong]);
        }
        let mut problems = Vec::new();
        if password.expose().chars().count() < self.min_chars {
            problems.push(PasswordProblem::TooShort(self.min_chars));
        }
        let lowered = Zeroizing::new(password.expose().to_lowercase());
        let mut hints: Vec<&str> = Vec::new();
        if let Some(email) = email {
            let local = email.local_part();
            // A one- or two-letter local part would forbid half the alphabet.
            if local.chars().count() >= 3 && lowered.contains(local) {
                problems.push(PasswordProblem::ContainsEmail);
            }
            hints.push(local);
            hints.push(email.as_str());
        }
        if !problems.contains(&PasswordProblem::TooShort(self.min_chars)) {
            let score: u8 = zxcvbn::zxcvbn(password.expose(), &hints).score().into();
            if score < self.min_strength {
                problems.push(PasswordProblem::TooWeak);
            }
        }
        if problems.is_empty() {
            Ok(password)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy {
            min_chars: 8,
            min_strength: 3,
        }
    }

    #[test]
    fn strong_passphrase_is_accepted_and_nfkc_normalised() {
        let p = policy()
            .check("correct horse battery staple 42", None)
            .unwrap();
        assert_eq!(p.expose(), "correct horse battery staple 42");
        // "ﬁ" (U+FB01) is the compatibility ligature of "fi".
        let p = Password::normalize("\u{FB01}sh");
        assert_eq!(p.expose(), "fish");
    }

    #[test]
    fn short_weak_and_email_passwords_are_refused() {
        assert_eq!(
            policy().check("Tr0ub4!", None).unwrap_err(),
            vec![PasswordProblem::TooShort(8)]
        );
        assert_eq!(
            policy().check("password1", None).unwrap_err(),
            vec![PasswordProblem::TooWeak]
        );
        let email = Email::parse("kowalski@example.com").unwrap();
        let problems = policy()
            .check("kowalski-zebra-piano-1987!", Some(&email))
            .unwrap_err();
        assert!(
            problems.contains(&PasswordProblem::ContainsEmail),
            "{problems:?}"
        );
        let problems = policy()
            .check("xx KOWALSKI xx river 1987", Some(&email))
            .unwrap_err();
        assert!(
            problems.contains(&PasswordProblem::ContainsEmail),
            "{problems:?}"
        );
    }

    #[test]
    fn length_is_bounded_in_bytes() {
        let long = "ab".repeat(513);
        assert_eq!(
            policy().check(&long, None).unwrap_err(),
            vec![PasswordProblem::TooLong]
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let p = Password::normalize("hunter2hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
