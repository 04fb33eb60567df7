//! Argon2id password hashing on a dedicated, bounded pool of threads (DESIGN §6).
//!
//! Why a pool of our own: the runtime's blocking pool grows to hundreds of threads, each
//! allocating its own Argon2 memory per call, which took the process to well over a GiB
//! under a login flood. Here each of a fixed number of threads reuses one memory block, runs
//! at a lower OS priority than the HTTP workers (so JWKS and health stay fast while logins
//! are flooded), and the queue in front of them is bounded: when it is full the caller is
//! told at once (`Overloaded`) instead of waiting without bound.

use std::fmt;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version, ARGON2ID_IDENT};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tracing::Span;
use zeroize::Zeroizing;

/// How much lower than the HTTP workers the hashing threads run (`nice` increment).
const HASH_THREAD_NICENESS: i32 = 10;
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("the password hashing queue is full")]
    Overloaded,
    #[error("the password hashing pool has stopped")]
    Stopped,
    #[error("invalid Argon2 parameters: {0}")]
    Params(String),
    #[error("stored password hash is not a valid Argon2id PHC string")]
    BadStoredHash,
    #[error("random generator failed")]
    Random,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub matches: bool,
    /// The stored hash used other parameters than the configured ones: store a new one.
    pub needs_rehash: bool,
}

enum Job {
    Hash {
        password: Zeroizing<String>,
        span: Span,
        reply: oneshot::Sender<Result<String, HashError>>,
    },
    Verify {
        password: Zeroizing<String>,
        phc: String,
        span: Span,
        reply: oneshot::Sender<Result<Verified, HashError>>,
    },
}

/// The hashing engine: parameters and pepper. Cheap to clone into each thread.
#[derive(Clone)]
struct Engine {
    params: Params,
    pepper: Option<Arc<Zeroizing<Vec<u8>>>>,
}

impl Engine {
    fn argon2(&self, params: Params) -> Result<Argon2<'_>, HashError> {
        match &self.pepper {
            Some(p) => {
                Argon2::new_with_secret(p.as_slice(), Algorithm::Argon2id, Version::V0x13, params)
                    .map_err(|e| HashError::Params(e.to_string()))
            }
            None => Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)),
        }
    }

    fn hash(&self, password: &[u8], memory: &mut Vec<Block>) -> Result<String, HashError> {
        let salt = super::random_bytes(SALT_LEN).map_err(|_| HashError::Random)?;
        let mut out = [0u8; OUTPUT_LEN];
        fit(memory, self.params.block_count());
        self.argon2(self.params.clone())?
            .hash_password_into_with_memory(password, &salt, &mut out, memory.as_mut_slice())
            .map_err(|e| HashError::Params(e.to_string()))?;
        let salt = SaltString::encode_b64(&salt).map_err(|_| HashError::Random)?;
        let output = Output::new(&out).map_err(|e| HashError::Params(e.to_string()))?;
        let params =
            ParamsString::try_from(&self.params).map_err(|e| HashError::Params(e.to_string()))?;
        let phc = PasswordHash {
            algorithm: ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(phc.to_string())
    }

    fn verify(
        &self,
        password: &[u8],
        phc: &str,
        memory: &mut Vec<Block>,
    ) -> Result<Verified, HashError> {
        let parsed = PasswordHash::new(phc).map_err(|_| HashError::BadStoredHash)?;
        if parsed.algorithm != ARGON2ID_IDENT || parsed.version != Some(Version::V0x13.into()) {
            return Err(HashError::BadStoredHash);
        }
        let params = Params::try_from(&parsed).map_err(|_| HashError::BadStoredHash)?;
        let expected = parsed.hash.ok_or(HashError::BadStoredHash)?;
        let mut salt_buf = [0u8; 64];
        let salt = parsed
            .salt
            .ok_or(HashError::BadStoredHash)?
            .decode_b64(&mut salt_buf)
            .map_err(|_| HashError::BadStoredHash)?;
        let mut out = Zeroizing::new(vec![0u8; expected.len()]);
        fit(memory, params.block_count());
        self.argon2(params.clone())?
            .hash_password_into_with_memory(password, salt, &mut out, memory.as_mut_slice())
            .map_err(|_| HashError::BadStoredHash)?;
        let matches = bool::from(out.as_slice().ct_eq(expected.as_bytes()));
        let needs_rehash = params.m_cost() != self.params.m_cost()
            || params.t_cost() != self.params.t_cost()
            || params.p_cost() != self.params.p_cost()
            || expected.len() != OUTPUT_LEN;
        Ok(Verified {
            matches,
            needs_rehash,
        })
    }
}

/// Grows the reused memory to at least `blocks` Argon2 blocks (never shrinks it).
fn fit(memory: &mut Vec<Block>, blocks: usize) {
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
}

/// Handle to the hashing pool. Clones share the pool.
#[derive(Clone)]
pub struct Hasher {
    jobs: SyncSender<Job>,
    stats: Arc<PoolStats>,
    /// A real hash of a random password, verified against when an account does not exist,
    /// so that login costs the same whether or not the e-mail is registered.
    dummy: Arc<String>,
    threads: usize,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher(threads: {})", self.threads)
    }
}

impl Hasher {
    /// Starts `threads` hashing threads behind a queue of `queue` waiting jobs, and makes
    /// the dummy hash.
    pub async fn start(
        params: HashParams,
        pepper: Option<Vec<u8>>,
        threads: usize,
        queue: usize,
    ) -> Result<Hasher, HashError> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(OUTPUT_LEN),
        )
        .map_err(|e| HashError::Params(e.to_string()))?;
        let engine = Engine {
            params,
            pepper: pepper.map(|p| Arc::new(Zeroizing::new(p))),
        };
        let random = Zeroizing::new(crate::crypto::b64url(
            &super::random_bytes(24).map_err(|_| HashError::Random)?,
        ));
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let threads = threads.max(1);
        let stats = Arc::new(PoolStats::default());
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let engine = engine.clone();
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&rx, &engine, &stats))
                .map_err(|_| HashError::Stopped)?;
        }
        let mut hasher = Hasher {
            jobs: tx,
            stats,
            dummy: Arc::new(String::new()),
            threads,
        };
        // The dummy is made with a block of its own that is freed at once (returned to the
        // OS: it is far above malloc's mmap threshold), so the idle process does not keep an
        // Argon2 block that no login has asked for yet.
        let dummy_engine = engine.clone();
        let dummy = tokio::task::spawn_blocking(move || {
            dummy_engine.hash(random.as_bytes(), &mut Vec::new())
        })
        .await
        .map_err(|_| HashError::Stopped)??;
        hasher.dummy = Arc::new(dummy);
        Ok(hasher)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash {
            password: Zeroizing::new(password.to_owned()),
            span: Span::current(),
            reply,
        })?;
        rx.await.map_err(|_| HashError::Stopped)?
    }

    /// Checks a password against a stored PHC string, or against the dummy hash when
    /// `stored` is `None` (unknown account); the latter never matches.
    pub async fn verify(
        &self,
        password: &str,
        stored: Option<&str>,
    ) -> Result<Verified, HashError> {
        let (reply, rx) = oneshot::channel();
        let phc = stored.unwrap_or(self.dummy.as_str()).to_owned();
        self.submit(Job::Verify {
            password: Zeroizing::new(password.to_owned()),
            phc,
            span: Span::current(),
            reply,
        })?;
        let verified = rx.await.map_err(|_| HashError::Stopped)??;
        Ok(if stored.is_none() {
            Verified {
                matches: false,
                needs_rehash: false,
            }
        } else {
            verified
        })
    }

    fn submit(&self, job: Job) -> Result<(), HashError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                self.stats
                    .shed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                HashError::Overloaded
            }
            TrySendError::Disconnected(_) => HashError::Stopped,
        })
    }
}

/// What the pool has done: hashes computed, and jobs dropped because their caller left.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub computed: std::sync::atomic::AtomicU64,
    pub abandoned: std::sync::atomic::AtomicU64,
    /// Refused at once because the queue was full.
    pub shed: std::sync::atomic::AtomicU64,
}

fn worker(rx: &Mutex<Receiver<Job>>, engine: &Engine, stats: &PoolStats) {
    use std::sync::atomic::Ordering::Relaxed;
    // Linux applies a thread id given as PRIO_PROCESS to that one thread.
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASH_THREAD_NICENESS)
    {
        tracing::warn!(error = %e, "could not lower the priority of a hashing thread");
    }
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        match job {
            // A caller that has gone (client hung up, request timed out) gets no hash: its
            // slot must not delay the callers still waiting.
            Job::Hash { reply, .. } if reply.is_closed() => {
                stats.abandoned.fetch_add(1, Relaxed);
            }
            Job::Verify { reply, .. } if reply.is_closed() => {
                stats.abandoned.fetch_add(1, Relaxed);
            }
            Job::Hash {
                password,
                span,
                reply,
            } => {
                let _enter = span.enter();
                stats.computed.fetch_add(1, Relaxed);
                let _ = reply.send(engine.hash(password.as_bytes(), &mut memory));
            }
            Job::Verify {
                password,
                phc,
                span,
                reply,
            } => {
                let _enter = span.enter();
                stats.computed.fetch_add(1, Relaxed);
                let _ = reply.send(engine.verify(password.as_bytes(), &phc, &mut memory));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CHEAP: HashParams = HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hashes_verify_and_report_rehash_when_parameters_change() {
        let hasher = Hasher::start(CHEAP, None, 2, 8).await.unwrap();
        let phc = hasher.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
        assert_eq!(
            hasher.verify("correct horse", Some(&phc)).await.unwrap(),
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
        assert!(
            !hasher
                .verify("wrong horse", Some(&phc))
                .await
                .unwrap()
                .matches
        );

        let stronger = Hasher::start(
            HashParams {
                memory_kib: 512,
                ..CHEAP
            },
            None,
            1,
            8,
        )
        .await
        .unwrap();
        assert_eq!(
            stronger.verify("correct horse", Some(&phc)).await.unwrap(),
            Verified {
                matches: true,
                needs_rehash: true
            }
        );
        // A hash made by the argon2 crate's own PHC path verifies here too.
        use argon2::password_hash::PasswordHasher as _;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(256, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
        assert!(
            hasher
                .verify("correct horse", Some(&reference))
                .await
                .unwrap()
                .matches
        );
    }

    #[tokio::test]
    async fn jobs_whose_caller_left_are_not_hashed() {
        use std::sync::atomic::Ordering::Relaxed;
        let slow = HashParams {
            memory_kib: 8 * 1024,
            iterations: 2,
            parallelism: 1,
        };
        let hasher = Hasher::start(slow, None, 1, 16).await.unwrap();
        let before = hasher.stats().computed.load(Relaxed);
        // Ten callers queue up and give up at once (their futures are dropped after one poll).
        for _ in 0..10 {
            let mut fut = Box::pin(hasher.verify("pw", None));
            let _ = futures_util::FutureExt::now_or_never(fut.as_mut());
        }
        // A caller that stays is served, after the pool has skipped the abandoned ones.
        assert!(!hasher.verify("pw", None).await.unwrap().matches);
        let computed = hasher.stats().computed.load(Relaxed) - before;
        let abandoned = hasher.stats().abandoned.load(Relaxed);
        assert_eq!(computed + abandoned, 11);
        assert!(abandoned >= 9, "at most the job already running is computed: {computed} computed, {abandoned} abandoned");
    }

    #[tokio::test]
    async fn pepper_is_required_to_verify() {
        let peppered = Hasher::start(CHEAP, Some(b"pepper".to_vec()), 1, 8)
            .await
            .unwrap();
        let plain = Hasher::start(CHEAP, None, 1, 8).await.unwrap();
        let phc = peppered.hash("correct horse").await.unwrap();
        assert!(
            peppered
                .verify("correct horse", Some(&phc))
                .await
                .unwrap()
                .matches
        );
        assert!(
            !plain
                .verify("correct horse", Some(&phc))
                .await
                .unwrap()
                .matches
        );
    }

    #[tokio::test]
    async fn unknown_accounts_never_match_and_bad_hashes_are_errors() {
        let hasher = Hasher::start(CHEAP, None, 1, 8).await.unwrap();
        assert!(!hasher.verify("anything", None).await.unwrap().matches);
        assert_eq!(
            hasher.verify("x", Some("$2b$10$notargon")).await,
            Err(HashError::BadStoredHash)
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let slow = HashParams {
            memory_kib: 8 * 1024,
            iterations: 3,
            parallelism: 1,
        };
        let hasher = Hasher::start(slow, None, 1, 1).await.unwrap();
        let attempts: Vec<_> = (0..16).map(|_| hasher.verify("pw", None)).collect();
        let results = futures_util::future::join_all(attempts).await;
        let overloaded = results
            .iter()
            .filter(|r| matches!(r, Err(HashError::Overloaded)))
            .count();
        let done = results.iter().filter(|r| r.is_ok()).count();
        assert!(
            overloaded >= 1,
            "a 1-slot queue with 16 callers must shed some"
        );
        assert!(done >= 1, "the admitted ones complete");
        assert_eq!(overloaded + done, 16);
    }
}
