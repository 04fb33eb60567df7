//! Cryptography adapters: Argon2id hashing pool, signing-key generation and JWK export, JWT
//! signing and verification, and AES-256-GCM sealing of private keys at rest. Everything here
//! calls ring, argon2 or jsonwebtoken; nothing is hand-rolled.

pub mod jwt;
pub mod keys;
pub mod password;
pub mod seal;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

/// Fills `n` bytes from the operating system's CSPRNG.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut buf = vec![0u8; n];
    SystemRandom::new().fill(&mut buf)?;
    Ok(buf)
}

/// base64url without padding (RFC 7515 §2), the encoding of JWS and JWK members.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
