//! The in-process mirror of the embedded deployment: a cache of revoked token ids. A miss
//! is not an answer: the database (local SQLite) is asked.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Answer;
use crate::domain::{now, UnixTime};

#[derive(Debug, Default)]
pub struct MemoryMirror {
    revoked: Mutex<HashMap<String, UnixTime>>,
}

impl MemoryMirror {
    pub fn insert(&self, jti: &str, expires_at: UnixTime) {
        let mut map = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let t = now();
        // Bounded by the number of tokens revoked within one token lifetime.
        map.retain(|_, exp| *exp > t);
        map.insert(jti.to_owned(), expires_at);
    }

    pub fn check(&self, jti: &str) -> Answer {
        let map = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(jti) {
            Answer::Revoked
        } else {
            Answer::Unknown
        }
    }
}
