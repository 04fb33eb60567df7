//! Building the application: one builder for the binary and the tests.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::HttpServer;
use secrecy::ExposeSecret;

use crate::api::{self, AppState};
use crate::config::{Profile, Settings};
use crate::crypto::keys::KeyAlg;
use crate::crypto::password::{HashParams, Hasher};
use std::time::Duration;

use crate::cluster::{follow_key_changes, RedisKeyEvents};
use crate::crypto::seal::{Kek, KekRing};
use crate::domain::{Clock, PasswordPolicy, SystemClock};
use crate::limits::rate::{Backoff, Limiter};
use crate::limits::redis::RedisMirror;
use crate::limits::Revocations;
use crate::service::accounts::{SessionPolicy, TokenPolicy};
use crate::service::keyring::KeyPolicy;
use crate::service::{Accounts, KeyRing, KeyRingError};
use crate::store::{self, Db, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why the service could not start; each names what to fix and never prints a secret.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("KEK: {0}")]
    Kek(String),
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyRingError),
    #[error("password hashing: {0}")]
    Hashing(String),
    #[error("rate limits: {0}")]
    Limits(String),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("cannot listen: {0}")]
    Bind(std::io::Error),
}

/// Resolves the key-encryption key: `keys.kek`, `keys.kek_file`, or (development only) a
/// generated one under `keys.dev_kek_path`.
pub fn load_kek(settings: &Settings) -> Result<Kek, StartupError> {
    if let Some(kek) = &settings.keys.kek {
        return Kek::from_base64(kek.expose_secret())
            .map_err(|e| StartupError::Kek(format!("keys.kek: {e}")));
    }
    if let Some(path) = &settings.keys.kek_file {
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                StartupError::Kek(format!("keys.kek_file {}: {e}", path.display()))
            })?);
        return Kek::from_base64(&text)
            .map_err(|e| StartupError::Kek(format!("keys.kek_file {}: {e}", path.display())));
    }
    if settings.profile == Profile::Production {
        return Err(StartupError::Kek(
            "keys.kek or keys.kek_file is required in production".into(),
        ));
    }
    dev_kek(&settings.keys.dev_kek_path)
}

fn dev_kek(path: &Path) -> Result<Kek, StartupError> {
    let err =
        |e: std::io::Error| StartupError::Kek(format!("development KEK {}: {e}", path.display()));
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(err)?;
        }
        let text = Kek::generate_base64().map_err(|e| StartupError::Kek(e.to_string()))?;
        let mut file = open_private(path).map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        tracing::warn!(
            path = %path.display(),
            "GENERATED A DEVELOPMENT KEK next to the data it protects: signing keys are only as safe as this file. \
             Set keys.kek or keys.kek_file (and profile = \"production\") for any real deployment."
        );
    } else {
        tracing::warn!(path = %path.display(), "using the development KEK; set keys.kek or keys.kek_file for any real deployment");
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(err)?);
    Kek::from_base64(&text)
        .map_err(|e| StartupError::Kek(format!("development KEK {}: {e}", path.display())))
}

/// Creates a file only its owner can read.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Resolves every configured KEK: the current one and `keys.previous_keks`.
pub fn load_keks(settings: &Settings) -> Result<KekRing, StartupError> {
    let current = load_kek(settings)?;
    let mut previous = Vec::new();
    if let Some(list) = &settings.keys.previous_keks {
        for (i, text) in list
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .enumerate()
        {
            previous.push(Kek::from_base64(text).map_err(|e| {
                StartupError::Kek(format!("keys.previous_keks entry {}: {e}", i + 1))
            })?);
        }
    }
    Ok(KekRing::new(current, previous))
}

/// The key-ring policy the settings describe.
pub fn key_policy(settings: &Settings) -> Result<KeyPolicy, StartupError> {
    Ok(KeyPolicy {
        algorithm: KeyAlg::parse(&settings.keys.algorithm)
            .map_err(|e| StartupError::Keys(KeyRingError::Generate(e.to_string())))?,
        rotation_interval: settings.keys.rotation_interval,
        publish_lead: settings.publish_lead(),
        retire_grace: settings.retire_grace(),
        issuer: settings.tokens.issuer.clone(),
        audience: settings.tokens.audience.clone(),
        leeway: settings.tokens.leeway,
    })
}

/// Applies migrations (when configured) and opens the pool.
pub async fn open_database(settings: &Settings) -> Result<Db, StartupError> {
    if settings.database.migrate_on_start {
        let url = settings.database.url.clone();
        let applied = tokio::task::spawn_blocking(move || store::migrate(&url))
            .await
            .map_err(|e| StartupError::Database(StoreError::Migration(e.to_string())))??;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied database migrations");
        }
    }
    let db_settings = settings.database.clone();
    Ok(
        tokio::task::spawn_blocking(move || Db::connect(&db_settings))
            .await
            .map_err(|e| StartupError::Database(StoreError::Unavailable(e.to_string())))??,
    )
}

/// Opens the database and loads the key ring (also what the `keys` CLI commands use).
pub async fn open_key_ring(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<(Db, Arc<KeyRing>), StartupError> {
    let keks = Arc::new(load_keks(settings)?);
    let db = open_database(settings).await?;
    let keys = KeyRing::load_or_init(db.clone(), keks, key_policy(settings)?, clock).await?;
    Ok((db, keys))
}

/// Builds everything a process shares: database pool (after migrations, if configured),
/// hashing pool, key ring and use-cases, on the wall clock.
pub async fn build_state(settings: Settings) -> Result<AppState, StartupError> {
    build_state_with_clock(settings, Arc::new(SystemClock)).await
}

/// As [`build_state`], with the key ring on `clock` (lifecycle tests).
pub async fn build_state_with_clock(
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> Result<AppState, StartupError> {
    let (db, keys) = open_key_ring(&settings, clock).await?;
    let retain = i64::try_from(settings.retire_grace().as_secs()).unwrap_or(i64::MAX / 4);
    let leeway = i64::try_from(settings.tokens.leeway.as_secs()).unwrap_or(0);
    let redis = redis_connection(&settings)?.map(|(_, conn)| conn);
    let policies = crate::api::limit::Policies::from_settings(&settings.rate_limits)
        .map_err(StartupError::Limits)?;
    let trusted_proxies = Arc::new(
        settings
            .rate_limits
            .proxies()
            .map_err(StartupError::Limits)?,
    );
    let limiter = Arc::new(Limiter::new(
        redis.clone(),
        &settings.redis.key_prefix,
        Backoff {
            after: settings.rate_limits.backoff_after,
            base: settings.rate_limits.backoff_base,
            max: settings.rate_limits.backoff_max,
            window: settings.rate_limits.backoff_window,
        },
    ));
    let revocations = match redis.map(|conn| ((), conn)) {
        Some((_, conn)) => Revocations::with_redis(
            db.clone(),
            RedisMirror::new(conn, &settings.redis.key_prefix),
            retain,
            leeway,
        ),
        None => Revocations::in_memory(db.clone(), retain, leeway),
    };
    revocations.warm().await?;
    let hasher = Hasher::start(
        HashParams {
            memory_kib: settings.password.memory_kib,
            iterations: settings.password.iterations,
            parallelism: settings.password.parallelism,
        },
        settings.pepper(),
        settings.hash_threads(),
        settings.password.queue,
    )
    .await
    .map_err(|e| StartupError::Hashing(e.to_string()))?;
    let accounts = Accounts::new(
        db.clone(),
        hasher,
        Arc::clone(&keys),
        PasswordPolicy {
            min_chars: settings.password.min_length,
            min_strength: settings.password.min_strength,
        },
        TokenPolicy {
            issuer: settings.tokens.issuer.clone(),
            audience: settings.tokens.audience.clone(),
            access_ttl: settings.tokens.access_ttl,
        },
        SessionPolicy {
            idle_ttl: settings.sessions.refresh_idle_ttl,
            absolute_ttl: settings.sessions.refresh_absolute_ttl,
            reuse_grace: settings.sessions.reuse_grace,
        },
        Arc::clone(&revocations),
    );
    Ok(AppState {
        accounts,
        keys,
        db,
        revocations,
        limiter,
        policies,
        trusted_proxies,
        settings: Arc::new(settings),
    })
}

/// Each replica's key duty: every `reload_interval`, run the (locked) rotation and removal
/// duty and re-read the key set, so replicas converge even without Redis.
pub async fn key_duty(ring: Arc<KeyRing>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = ring.maintain().await {
            tracing::warn!(error = %e, "signing-key duty failed; will retry");
        }
        if let Err(e) = ring.reload().await {
            tracing::warn!(error = %e, "signing-key reload failed; keeping the current key set");
        }
    }
}

/// A Redis client and a reconnecting connection, when `redis.url` is set. The connection
/// is lazy: Tessera starts (degraded, on its database) while Redis is down.
pub fn redis_connection(
    settings: &Settings,
) -> Result<Option<(redis::Client, ConnectionManager)>, StartupError> {
    let Some(url) = &settings.redis.url else {
        return Ok(None);
    };
    let client =
        redis::Client::open(url.as_str()).map_err(|e| StartupError::Redis(e.to_string()))?;
    // Short timeouts: a Redis that does not answer must cost a request milliseconds, not
    // seconds, before the database answers instead.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| StartupError::Redis(e.to_string()))?;
    Ok(Some((client, conn)))
}

/// Connects Redis (when configured) for key-change announcements.
fn connect_redis(settings: &Settings, keys: &Arc<KeyRing>) -> Result<(), StartupError> {
    let Some((client, conn)) = redis_connection(settings)? else {
        return Ok(());
    };
    keys.set_events(Arc::new(RedisKeyEvents::new(conn)));
    actix_web::rt::spawn(follow_key_changes(client, Arc::clone(keys)));
    Ok(())
}

/// Keeps the revocation mirror whole (re-publishing after a Redis loss) and prunes expired
/// revocations and refresh tokens from the database.
pub async fn revocation_duty(state: AppState) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        ticker.tick().await;
        if let Err(e) = state.revocations.maintain().await {
            tracing::warn!(error = %e, "revocation mirror upkeep failed; will retry");
        }
        ticks += 1;
        if ticks.is_multiple_of(300) {
            if let Err(e) = state.revocations.prune().await {
                tracing::warn!(error = %e, "pruning expired revocations failed");
            }
        }
    }
}

/// A bound, not yet running server.
pub struct Application {
    server: Server,
    addr: SocketAddr,
}

impl Application {
    /// Builds the state and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let bind = (settings.server.bind.clone(), settings.server.port);
        let workers = settings.http_workers();
        // The workers share one connection pool, so together they never need more blocking
        // threads than it has connections: each worker gets its share (at least 2). Every
        // extra thread only waits for a connection, and brings a malloc arena that keeps
        // what it once used.
        let pool = usize::try_from(settings.database.pool_size).unwrap_or(8);
        let blocking = pool.div_ceil(workers.max(1)).max(2);
        let reload_every = settings.keys.reload_interval;
        let redis_settings = settings.clone();
        let state = build_state(settings).await?;
        connect_redis(&redis_settings, &state.keys)?;
        actix_web::rt::spawn(key_duty(Arc::clone(&state.keys), reload_every));
        actix_web::rt::spawn(revocation_duty(state.clone()));
        let server = HttpServer::new(move || api::app(state.clone()))
            .workers(workers)
            // Database calls run on each worker's blocking pool.
            .worker_max_blocking_threads(blocking)
            .bind(bind)
            .map_err(StartupError::Bind)?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| StartupError::Bind(std::io::Error::other("no address bound")))?;
        let server = server.run();
        Ok(Application { server, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT/SIGTERM, then drains connections.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, "listening");
        self.server.await
    }
}
