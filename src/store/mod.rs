//! Durable storage: diesel over one connection type for SQLite and PostgreSQL.
//!
//! `StoreError` belongs to this layer: `diesel::result::Error` never leaves it, and a
//! unique-constraint violation becomes `Conflict` here. Every call runs on the blocking pool,
//! never on an async worker, inside the caller's tracing span.

pub mod audit;
pub mod keys;
mod schema;
pub mod sessions;
pub mod users;

use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{self, ManageConnection, Pool, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::DatabaseSettings;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// One connection type over both backends; where SQL must differ, match on the variant here.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a row with the same unique value already exists")]
    Conflict,
    #[error("no such row")]
    NotFound,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(String),
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Maps a diesel error to this layer's error.
pub(crate) fn db_error(e: DieselError) -> StoreError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => StoreError::Conflict,
        DieselError::NotFound => StoreError::NotFound,
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
            StoreError::Unavailable(e.to_string())
        }
        // A writer that waited out busy_timeout: the database is overloaded, not the
        // request wrong.
        DieselError::DatabaseError(_, ref info)
            if info.message().contains("database is locked") =>
        {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Query(other.to_string()),
    }
}

/// Where the database is, decided from the URL scheme (not by trial, which hides the real
/// connection error).
#[derive(Debug, Clone)]
pub enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Target {
    pub fn from_url(url: &str) -> Result<Target, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::Unavailable("sqlite:// URL has no path".into()));
            }
            Ok(Target::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Target::Postgres(url.to_owned()))
        } else {
            Err(StoreError::Unavailable(
                "database.url must start with sqlite:// or postgres://".into(),
            ))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres(_) => "postgres",
        }
    }

    /// The database file's path, its directory created owner-only (0700) and the file
    /// itself created owner-only (0600): it holds password hashes and sealed keys. SQLite
    /// gives its -wal and -shm files the database file's mode.
    fn sqlite_path(path: &std::path::Path) -> Result<String, StoreError> {
        let unavailable = |what: &std::path::Path, e: std::io::Error| {
            StoreError::Unavailable(format!("cannot create {}: {e}", what.display()))
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                let mut dir = std::fs::DirBuilder::new();
                dir.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
                dir.create(parent).map_err(|e| unavailable(parent, e))?;
            }
        }
        if !path.exists() {
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            file.open(path).map_err(|e| unavailable(path, e))?;
        }
        path.to_str()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Unavailable("SQLite path is not UTF-8".into()))
    }

    fn connect_sqlite(path: &std::path::Path) -> Result<SqliteConnection, diesel::ConnectionError> {
        let p = Target::sqlite_path(path)
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        let mut conn = SqliteConnection::establish(&p)?;
        // Writers wait for each other instead of failing with "database is locked". Each
        // pooled connection keeps its own page cache, 2 MiB by default: capped at 256 KiB so
        // the embedded default's memory does not grow with the data (pages come back from
        // the OS page cache; decision 0012).
        conn.batch_execute(
            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
             PRAGMA cache_size = -256;",
        )
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        Ok(conn)
    }

    fn connect(&self) -> Result<DbConnection, diesel::ConnectionError> {
        match self {
            Target::Sqlite(path) => Target::connect_sqlite(path).map(DbConnection::Sqlite),
            Target::Postgres(url) => PgConnection::establish(url).map(DbConnection::Postgres),
        }
    }
}

struct Manager(Target);

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        self.0.connect().map_err(r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// Applies pending migrations for the backend `url` names; returns the versions applied.
pub fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let target = Target::from_url(url)?;
    let mig = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
    let conn_err = |e: diesel::ConnectionError| StoreError::Unavailable(e.to_string());
    let applied = match &target {
        Target::Sqlite(path) => {
            let mut conn = Target::connect_sqlite(path).map_err(conn_err)?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(mig)?
                .iter()
                .map(|v| v.to_string())
                .collect()
        }
        Target::Postgres(url) => {
            let mut conn = PgConnection::establish(url).map_err(conn_err)?;
            conn.run_pending_migrations(POSTGRES_MIGRATIONS)
                .map_err(mig)?
                .iter()
                .map(|v| v.to_string())
                .collect()
        }
    };
    Ok(applied)
}

/// The connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<Manager>,
    backend: &'static str,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({})", self.backend)
    }
}

impl Db {
    /// Builds the pool and checks that one connection can be made, so a wrong URL or a
    /// database that is down fails start-up with the driver's own message.
    pub fn connect(settings: &DatabaseSettings) -> Result<Db, StoreError> {
        let target = Target::from_url(&settings.url)?;
        if let Target::Sqlite(path) = &target {
            // WAL once, before the pool exists: setting it per connection races ("database
            // is locked"). WAL lets readers proceed while one writer commits.
            let mut conn =
                Target::connect_sqlite(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            conn.batch_execute("PRAGMA journal_mode = WAL;")
                .map_err(db_error)?;
        }
        let backend = target.backend_name();
        let pool = Pool::builder()
            .max_size(settings.pool_size)
            // No idle connections kept by r2d2's background threads: a short-lived CLI
            // process must not exit while such a thread is inside libpq's TLS set-up.
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(settings.acquire_timeout)
            .build(Manager(target))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // One real connection now, so a wrong URL or a database that is down fails start-up.
        drop(
            pool.get()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?,
        );
        Ok(Db { pool, backend })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Runs `f` with a pooled connection on the blocking pool, in the caller's span.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let mut conn = pool
                    .get()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                f(&mut conn)
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// Runs `f` inside a transaction.
    pub async fn transaction<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |conn| in_transaction(conn, f)).await
    }

    /// Runs `SELECT 1` (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| conn.ping().map_err(db_error)).await
    }

    /// The pool's wait limit, for synchronous callers (CLI) that use `run_blocking`.
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        f(&mut conn)
    }
}

/// Runs `f` inside a transaction on a connection already checked out: committed when `f`
/// returns `Ok`, rolled back otherwise.
pub fn in_transaction<T>(
    conn: &mut DbConnection,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match conn {
        // SQLite: take the write lock when the transaction begins. A deferred transaction
        // that reads and then writes cannot wait for a concurrent writer (SQLite refuses the
        // lock upgrade at once with "database is locked"); BEGIN IMMEDIATE waits for it
        // under busy_timeout instead.
        DbConnection::Sqlite(_) => {
            conn.batch_execute("BEGIN IMMEDIATE").map_err(db_error)?;
            match f(conn) {
                Ok(v) => match conn.batch_execute("COMMIT") {
                    Ok(()) => Ok(v),
                    Err(e) => {
                        let _ = conn.batch_execute("ROLLBACK");
                        Err(db_error(e))
                    }
                },
                Err(e) => {
                    let _ = conn.batch_execute("ROLLBACK");
                    Err(e)
                }
            }
        }
        DbConnection::Postgres(_) => conn
            .transaction::<T, TxError, _>(|c| f(c).map_err(TxError::Store))
            .map_err(TxError::into_store),
    }
}

/// Lets a transaction closure fail with a `StoreError` while diesel still sees its own
/// error type for rollback.
enum TxError {
    Store(StoreError),
    Diesel(DieselError),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        TxError::Diesel(e)
    }
}

impl TxError {
    fn into_store(self) -> StoreError {
        match self {
            TxError::Store(e) => e,
            TxError::Diesel(e) => db_error(e),
        }
    }
}
