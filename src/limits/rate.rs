//! Rate limits (DESIGN §6): GCRA buckets checked in one atomic Redis round trip shared by
//! every replica, with the same policies in process when Redis is unreachable (never no
//! limit), and per-account brute-force backoff.
//!
//! GCRA (the generic cell rate algorithm) keeps one number per bucket, the "theoretical
//! arrival time" (TAT). A policy of `limit` per `period` admits a request when
//! `TAT + T - T·limit <= now` (T = period/limit), then moves TAT to `max(TAT, now) + T`:
//! bursts up to `limit`, then one every T.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

/// A named limit: `limit` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub name: &'static str,
    pub limit: u32,
    pub period: Duration,
}

impl Policy {
    fn emission_ms(&self) -> i64 {
        let ms = i64::try_from(self.period.as_millis()).unwrap_or(i64::MAX / 4);
        (ms / i64::from(self.limit.max(1))).max(1)
    }
}

/// Parses `"20/1m"`: 20 requests per minute.
pub fn parse_policy(name: &'static str, text: &str) -> Result<Policy, String> {
    let (n, period) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not LIMIT/PERIOD, e.g. 20/1m"))?;
    let limit: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: the limit must be a whole number"))?;
    let period = humantime::parse_duration(period.trim()).map_err(|e| format!("{text:?}: {e}"))?;
    if limit == 0 || period.is_zero() {
        return Err(format!("{text:?}: limit and period must be positive"));
    }
    Ok(Policy {
        name,
        limit,
        period,
    })
}

/// The outcome of a check, with what the `RateLimit` headers report: the most restrictive
/// of the buckets checked.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub policy: Policy,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds to wait before retrying (0 when allowed).
    pub retry_after_secs: u64,
}

/// Backoff after repeated failed logins on one account: after `after` failures within
/// `window`, each further failure locks the account's logins for `base · 2^(n-after)`, at
/// most `max`. Never a permanent lock; reset by a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub after: u32,
    pub base: Duration,
    pub max: Duration,
    pub window: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn secs_up(ms: i64) -> u64 {
    u64::try_from((ms.max(0) + 999) / 1000).unwrap_or(0)
}

/// GCRA over several buckets and an optional lock, all or nothing.
const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local lock = 0
if #KEYS > n then
  lock = redis.call('PTTL', KEYS[n + 1])
  if lock < 0 then lock = 0 end
end
local tats, wait, worst, remaining, reset = {}, 0, 1, -1, 0
for i = 1, n do
  local e = tonumber(ARGV[2 * i])
  local limit = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + e
  local allow_at = new_tat - e * limit
  if allow_at > now and allow_at - now > wait then wait = allow_at - now; worst = i end
  tats[i] = new_tat
  local left = math.floor((now + e * limit - new_tat) / e)
  if remaining < 0 or left < remaining then remaining = left; if wait == 0 then worst = i end end
  if new_tat - now > reset then reset = new_tat - now end
end
if wait > 0 or lock > 0 then
  if lock > wait then wait = lock end
  return {0, wait, worst, 0, reset}
end
for i = 1, n do redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil(tats[i] - now)) end
if remaining < 0 then remaining = 0 end
return {1, 0, worst, remaining, reset}
";

/// Counts a failed login; from the `after`-th on, sets the lock with a growing TTL.
const FAIL: &str = r"
local c = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local after = tonumber(ARGV[2])
if c >= after then
  local d = tonumber(ARGV[3]) * (2 ^ (c - after))
  if d > tonumber(ARGV[4]) then d = tonumber(ARGV[4]) end
  redis.call('SET', KEYS[2], '1', 'PX', math.floor(d))
end
return c
";

#[derive(Default)]
struct MemoryState {
    tats: HashMap<String, i64>,
    failures: HashMap<String, (u32, i64)>,
    locks: HashMap<String, i64>,
    last_prune: i64,
}

/// The shared limiter (Redis) with its in-process stand-in.
pub struct Limiter {
    redis: Option<ConnectionManager>,
    prefix: String,
    memory: Mutex<MemoryState>,
    started: Instant,
    degraded: AtomicBool,
    check: redis::Script,
    fail: redis::Script,
    pub backoff: Backoff,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Limiter({})", self.backend())
    }
}

impl Limiter {
    pub fn new(redis: Option<ConnectionManager>, prefix: &str, backoff: Backoff) -> Limiter {
        Limiter {
            redis,
            prefix: format!("{prefix}rl:"),
            memory: Mutex::new(MemoryState::default()),
            started: Instant::now(),
            degraded: AtomicBool::new(false),
            check: redis::Script::new(CHECK),
            fail: redis::Script::new(FAIL),
            backoff,
        }
    }

    /// Where limits are counted now: `redis`, `memory` (no Redis configured) or
    /// `memory-fallback` (Redis unreachable).
    pub fn backend(&self) -> &'static str {
        match (&self.redis, self.degraded.load(Ordering::Relaxed)) {
            (None, _) => "memory",
            (Some(_), false) => "redis",
            (Some(_), true) => "memory-fallback",
        }
    }

    fn note<T>(&self, r: Result<T, redis::RedisError>) -> Option<T> {
        match r {
            Ok(v) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "Redis reachable again: rate limits are shared across replicas again"
                    );
                }
                Some(v)
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "Redis unreachable: rate limits fall back to this replica's own counters");
                }
                None
            }
        }
    }

    /// Checks (and, when all allow, consumes) one request in every bucket, and the lock
    /// `lock_key` if given. Keys are logical; the prefix is added here.
    pub async fn check(&self, buckets: &[(Policy, String)], lock_key: Option<&str>) -> Decision {
        if let Some(conn) = &self.redis {
            let mut inv = self.check.prepare_invoke();
            for (_, key) in buckets {
                inv.key(format!("{}{key}", self.prefix));
            }
            if let Some(lock) = lock_key {
                inv.key(format!("{}{lock}", self.prefix));
            }
            inv.arg(buckets.len());
            for (p, _) in buckets {
                inv.arg(p.emission_ms()).arg(p.limit);
            }
            let mut conn = conn.clone();
            let r: Result<(i64, i64, i64, i64, i64), _> = inv.invoke_async(&mut conn).await;
            if let Some((allowed, wait, worst, remaining, reset)) = self.note(r) {
                let idx = usize::try_from(worst - 1)
                    .unwrap_or(0)
                    .min(buckets.len().saturating_sub(1));
                return Decision {
                    allowed: allowed == 1,
                    policy: buckets[idx].0,
                    remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
                    reset_secs: secs_up(reset),
                    retry_after_secs: secs_up(wait),
                };
            }
        }
        self.check_memory(buckets, lock_key)
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn check_memory(&self, buckets: &[(Policy, String)], lock_key: Option<&str>) -> Decision {
        let now = self.now_ms();
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if now - m.last_prune > 60_000 {
            m.tats.retain(|_, tat| *tat > now);
            m.locks.retain(|_, until| *until > now);
            let window = ms(self.backoff.window);
            m.failures.retain(|_, (_, at)| now - *at < window);
            m.last_prune = now;
        }
        let lock = lock_key
            .and_then(|k| m.locks.get(k))
            .map_or(0, |until| (until - now).max(0));
        let (mut wait, mut worst, mut remaining, mut reset) = (0i64, 0usize, i64::MAX, 0i64);
        let mut tats = Vec::with_capacity(buckets.len());
        for (i, (p, key)) in buckets.iter().enumerate() {
            let e = p.emission_ms();
            let limit = i64::from(p.limit);
            let tat = m.tats.get(key).copied().unwrap_or(now).max(now);
            let new_tat = tat + e;
            let allow_at = new_tat - e * limit;
            if allow_at > now && allow_at - now > wait {
                wait = allow_at - now;
                worst = i;
            }
            let left = (now + e * limit - new_tat) / e;
            if left < remaining {
                remaining = left;
                if wait == 0 {
                    worst = i;
                }
            }
            reset = reset.max(new_tat - now);
            tats.push(new_tat);
        }
        let allowed = wait == 0 && lock == 0;
        if allowed {
            for ((_, key), tat) in buckets.iter().zip(tats) {
                m.tats.insert(key.clone(), tat);
            }
        }
        let policy = buckets.get(worst).map(|b| b.0).unwrap_or(Policy {
            name: "none",
            limit: 1,
            period: Duration::from_secs(1),
        });
        Decision {
            allowed,
            policy,
            remaining: if allowed {
                u32::try_from(remaining.max(0)).unwrap_or(0)
            } else {
                0
            },
            reset_secs: secs_up(reset),
            retry_after_secs: secs_up(wait.max(lock)),
        }
    }

    /// Counts a failed login on an account (by its logical key).
    pub async fn login_failed(&self, account: &str) {
        let b = self.backoff;
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            let r: Result<i64, _> = self
                .fail
                .key(format!("{}fail:{account}", self.prefix))
                .key(format!("{}lock:{account}", self.prefix))
                .arg(ms(b.window))
                .arg(b.after)
                .arg(ms(b.base))
                .arg(ms(b.max))
                .invoke_async(&mut conn)
                .await;
            if self.note(r).is_some() {
                return;
            }
        }
        let now = self.now_ms();
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let entry = m.failures.entry(account.to_owned()).or_insert((0, now));
        if now - entry.1 > ms(b.window) {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        let count = entry.0;
        if count >= b.after {
            let exp = (count - b.after).min(30);
            let delay = ms(b.base).saturating_mul(1i64 << exp).min(ms(b.max));
            m.locks.insert(format!("lock:{account}"), now + delay);
        }
    }

    /// Clears an account's failures and lock after a successful login.
    pub async fn login_succeeded(&self, account: &str) {
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            let r: Result<i64, _> = redis::cmd("DEL")
                .arg(format!("{}fail:{account}", self.prefix))
                .arg(format!("{}lock:{account}", self.prefix))
                .query_async(&mut conn)
                .await;
            if self.note(r).is_some() {
                return;
            }
        }
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        m.failures.remove(account);
        m.locks.remove(&format!("lock:{account}"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limiter() -> Limiter {
        Limiter::new(
            None,
            "t:",
            Backoff {
                after: 3,
                base: Duration::from_secs(2),
                max: Duration::from_secs(60),
                window: Duration::from_secs(900),
            },
        )
    }

    #[tokio::test]
    async fn a_bucket_admits_its_burst_then_refuses_with_a_retry_time() {
        let l = limiter();
        let p = parse_policy("t", "5/1m").unwrap();
        let key = vec![(p, "k".to_owned())];
        for left in (0..5).rev() {
            let d = l.check(&key, None).await;
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = l.check(&key, None).await;
        assert!(!d.allowed);
        assert!((1..=12).contains(&d.retry_after_secs), "{d:?}");
        // Another key is independent.
        assert!(l.check(&[(p, "other".to_owned())], None).await.allowed);
    }

    #[tokio::test]
    async fn all_buckets_must_allow_and_a_refusal_consumes_nothing() {
        let l = limiter();
        let loose = parse_policy("loose", "100/1m").unwrap();
        let tight = parse_policy("tight", "1/1m").unwrap();
        let both = vec![(loose, "a".to_owned()), (tight, "b".to_owned())];
        assert!(l.check(&both, None).await.allowed);
        let d = l.check(&both, None).await;
        assert!(!d.allowed);
        assert_eq!(d.policy.name, "tight");
        let d = l.check(&[(loose, "a".to_owned())], None).await;
        assert_eq!(
            d.remaining, 98,
            "the refused request did not consume the loose bucket"
        );
    }

    #[tokio::test]
    async fn failed_logins_lock_after_the_threshold_and_success_resets() {
        let l = limiter();
        let p = parse_policy("acct", "100/1m").unwrap();
        let b = vec![(p, "acct:x".to_owned())];
        for _ in 0..2 {
            l.login_failed("x").await;
            assert!(l.check(&b, Some("lock:x")).await.allowed);
        }
        l.login_failed("x").await;
        let d = l.check(&b, Some("lock:x")).await;
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 2);
        l.login_failed("x").await;
        assert_eq!(
            l.check(&b, Some("lock:x")).await.retry_after_secs,
            4,
            "the delay doubles"
        );
        l.login_succeeded("x").await;
        assert!(l.check(&b, Some("lock:x")).await.allowed);
    }

    #[test]
    fn policies_parse_from_humane_strings() {
        assert_eq!(parse_policy("p", "20/1m").unwrap().limit, 20);
        assert_eq!(
            parse_policy("p", "10 / 1h").unwrap().period,
            Duration::from_secs(3600)
        );
        for bad in ["", "20", "0/1m", "x/1m", "5/never", "5/0s"] {
            assert!(parse_policy("p", bad).is_err(), "{bad}");
        }
    }
}
