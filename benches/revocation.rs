//! Revocation check against a bare Redis `GET` (DESIGN §6, issue 4).
//!
//! Builds a Redis-backed `tessera::limits::Revocations` exactly as the server does (the
//! connection from `tessera::startup::redis_connection`, a `RedisMirror` under a fresh random
//! prefix, a SQLite `Db` in a temp dir as the durable side), calls `.warm()` once so the
//! `{prefix}revocations:ready` key exists, then times, on one task, `N` sequential calls of
//!
//! - `is_revoked`: `Revocations::is_revoked(jti, sub, iat)` for a token that is not revoked
//!   (one `MGET` of three keys, answered "not revoked");
//! - `get`: a bare `GET {prefix}revocations:ready` on a clone of the same `ConnectionManager`;
//! - `mget`: a bare `MGET` of the same three keys `is_revoked` reads (for contrast: what the
//!   wrapper itself costs beyond the command).
//!
//! The three run in interleaved batches (rotating order); the ratio is the median over rounds
//! of `is_revoked` / `get`, the means are total time over total calls. Target: ≤ 1.2.
//!
//! Environment: `BENCH_REDIS_URL` (else `TESSERA__REDIS__URL`, else redis://127.0.0.1:6379),
//! `BENCH_REVOCATION_N` (calls per variant, default 20000). When Redis does not answer a PING
//! within two seconds the bench prints `revocation_skipped=<reason>` and exits 0.
//!
//! Machine-readable lines: `revocation_is_revoked_us=`, `revocation_get_us=`,
//! `revocation_mget_us=`, `revocation_ratio=`, `revocation_mget_ratio=`, `revocation_n=`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tessera::config::{DatabaseSettings, Settings};
use tessera::limits::redis::RedisMirror;
use tessera::limits::{MirrorState, Revocations};

const ROUNDS: u64 = 20;
const RETAIN_SECS: i64 = 15 * 60 + 30;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn redis_url() -> String {
    ["BENCH_REDIS_URL", "TESSERA__REDIS__URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

/// `Ok(None)` when Redis cannot be reached (the bench is skipped), `Err` on real failures.
async fn reachable(url: &str) -> Result<Option<String>, String> {
    let client = match redis::Client::open(url) {
        Ok(c) => c,
        Err(e) => return Err(format!("bad Redis URL {url}: {e}")),
    };
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(None),
        Ok(Err(e)) => Ok(Some(format!("Redis unreachable at {url}: {e}"))),
        Err(_) => Ok(Some(format!(
            "Redis at {url} did not answer PING within 2 s"
        ))),
    }
}

struct Bench {
    revocations: std::sync::Arc<Revocations>,
    conn: ConnectionManager,
    ready_key: String,
    keys: [String; 3],
    jti: String,
    sub: String,
    iat: i64,
}

impl Bench {
    async fn is_revoked(&self, n: u64) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..n {
            let revoked = self
                .revocations
                .is_revoked(&self.jti, &self.sub, self.iat)
                .await
                .map_err(|e| format!("is_revoked failed: {e}"))?;
            if revoked {
                return Err("is_revoked answered true for a token nobody revoked".into());
            }
        }
        Ok(start.elapsed())
    }

    async fn get(&self, n: u64) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..n {
            let mut conn = self.conn.clone();
            let v: Option<String> = redis::cmd("GET")
                .arg(&self.ready_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("GET failed: {e}"))?;
            if v.is_none() {
                return Err("the ready key vanished during the bench".into());
            }
        }
        Ok(start.elapsed())
    }

    async fn mget(&self, n: u64) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..n {
            let mut conn = self.conn.clone();
            let (ready, _, _): (Option<String>, Option<String>, Option<i64>) = redis::cmd("MGET")
                .arg(&self.keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("MGET failed: {e}"))?;
            if ready.is_none() {
                return Err("the ready key vanished during the bench".into());
            }
        }
        Ok(start.elapsed())
    }
}

async fn run() -> Result<(), String> {
    let url = redis_url();
    let n: u64 = match std::env::var("BENCH_REVOCATION_N") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("BENCH_REVOCATION_N={v:?} is not a whole number"))?,
        _ => 20_000,
    };
    if n < ROUNDS {
        return Err(format!("BENCH_REVOCATION_N must be at least {ROUNDS}"));
    }
    if let Some(reason) = reachable(&url).await? {
        println!("revocation: SKIPPED: {reason}");
        println!("revocation_skipped={}", reason.replace(['\n', '\r'], " "));
        return Ok(());
    }

    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let db_url = format!("sqlite://{}/bench.db", dir.path().display());
    tessera::store::migrate(&db_url).map_err(|e| format!("migrate: {e}"))?;
    let db = tessera::store::Db::connect(&DatabaseSettings {
        url: db_url,
        ..DatabaseSettings::default()
    })
    .map_err(|e| format!("database: {e}"))?;

    let mut settings = Settings::default();
    settings.redis.url = Some(url.clone());
    let (_, conn) = tessera::startup::redis_connection(&settings)
        .map_err(|e| format!("Redis connection: {e}"))?
        .ok_or("no Redis connection although a URL is set")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("bench_rev_{}_{nanos}:", std::process::id());
    let mirror = RedisMirror::new(conn.clone(), &prefix);
    let jti = uuid::Uuid::new_v4().to_string();
    let sub = uuid::Uuid::now_v7().to_string();
    let keys = [
        mirror.ready_key(),
        mirror.jti_key(&jti),
        mirror.user_key(&sub),
    ];
    let ready_key = mirror.ready_key();
    let revocations = Revocations::with_redis(db, mirror, RETAIN_SECS, 30);
    revocations.warm().await.map_err(|e| format!("warm: {e}"))?;
    if revocations.state() != MirrorState::Ok {
        return Err(format!(
            "after warm() the mirror is {}, not ok (the ready key was not written)",
            revocations.state().as_str()
        ));
    }
    let bench = Bench {
        revocations,
        conn: conn.clone(),
        ready_key: ready_key.clone(),
        keys,
        jti,
        sub,
        iat: tessera::domain::now(),
    };

    let result = async {
        // Warm-up: connection established, allocator and branch predictors settled.
        let warm = (n / 10).clamp(100, 2000);
        bench.is_revoked(warm).await?;
        bench.get(warm).await?;
        bench.mget(warm).await?;

        let per = n / ROUNDS;
        let (mut t_rev, mut t_get, mut t_mget) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let (mut ratios, mut mget_ratios) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (mut a, mut b, mut c) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            for slot in 0..3 {
                match (slot + round) % 3 {
                    0 => a = bench.is_revoked(per).await?,
                    1 => b = bench.get(per).await?,
                    _ => c = bench.mget(per).await?,
                }
            }
            t_rev += a;
            t_get += b;
            t_mget += c;
            ratios.push(a.as_secs_f64() / b.as_secs_f64());
            mget_ratios.push(c.as_secs_f64() / b.as_secs_f64());
        }
        let calls = (per * ROUNDS) as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / calls;
        let (rev_us, get_us, mget_us) = (us(t_rev), us(t_get), us(t_mget));
        let ratio = median(ratios);
        let mget_ratio = median(mget_ratios);
        println!(
            "revocation: {} sequential calls each, Redis {url}: is_revoked {rev_us:.1} µs, \
             bare GET {get_us:.1} µs, bare MGET of the same 3 keys {mget_us:.1} µs; \
             is_revoked/GET {ratio:.3} (median of {ROUNDS} rounds), MGET/GET {mget_ratio:.3}",
            per * ROUNDS
        );
        println!("revocation_n={}", per * ROUNDS);
        println!("revocation_is_revoked_us={rev_us:.2}");
        println!("revocation_get_us={get_us:.2}");
        println!("revocation_mget_us={mget_us:.2}");
        println!("revocation_ratio={ratio:.3}");
        println!("revocation_mget_ratio={mget_ratio:.3}");
        Ok::<(), String>(())
    }
    .await;

    // Leave nothing behind: warm() wrote only the ready key under our prefix.
    let mut c = conn.clone();
    let cleanup: Result<i64, _> = redis::cmd("DEL").arg(&ready_key).query_async(&mut c).await;
    if let Err(e) = cleanup {
        eprintln!("revocation: could not delete {ready_key}: {e}");
    }
    result
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("revocation: cannot build a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("revocation: {e}");
            ExitCode::FAILURE
        }
    }
}
