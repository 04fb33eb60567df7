//! Test harness: one fresh database per test (a SQLite file in a temp dir, or a PostgreSQL
//! database created for the test and dropped after it), the real application built in
//! process, and small HTTP helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::test;
use diesel::{Connection, RunQueryDsl};
use secrecy::SecretString;
use serde_json::Value;
use tessera::api::AppState;
use tessera::config::Settings;
use tessera::crypto::seal::Kek;

/// Where the tests find PostgreSQL (trust auth on this machine and in CI).
pub fn pg_admin_url() -> String {
    std::env::var("TESSERA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Every backend the tests must cover. PostgreSQL may be skipped, loudly, outside CI only.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    match diesel::pg::PgConnection::establish(&pg_admin_url()) {
        Ok(_) => all.push(Backend::Postgres),
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "PostgreSQL is required in CI but unreachable at {}: {e}",
                    pg_admin_url()
                );
            }
            eprintln!("\n!!!!!!!! SKIPPED: PostgreSQL unreachable at {} ({e}); PostgreSQL half of this test did not run !!!!!!!!\n", pg_admin_url());
        }
    }
    all
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
                TestDb {
                    url,
                    dir,
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("tessera_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = diesel::pg::PgConnection::establish(&pg_admin_url()).unwrap();
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .unwrap();
                let mut url = url::Url::parse(&pg_admin_url()).unwrap();
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            if let Ok(mut admin) = diesel::pg::PgConnection::establish(&pg_admin_url()) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin);
            }
        }
    }
}

/// Settings for a test: cheap Argon2 (debug builds are slow), a fixed KEK, a test issuer.
pub fn settings(db: &TestDb, kek: &str) -> Settings {
    let mut s = Settings::default();
    s.database.url = db.url.clone();
    s.database.pool_size = 8;
    s.keys.kek = Some(SecretString::from(kek.to_owned()));
    s.keys.dev_kek_path = db.dir.path().join("dev-kek");
    s.tokens.issuer = "https://id.tessera.test".into();
    s.password.memory_kib = 256;
    s.password.iterations = 1;
    s.password.threads = 2;
    s.password.queue = 256;
    // Rate limits have tests of their own (tests/limits.rs); elsewhere they would only
    // make concurrency tests depend on bucket sizes.
    s.rate_limits.enabled = false;
    s
}

pub fn new_kek() -> String {
    Kek::generate_base64().unwrap().to_string()
}

/// A running in-process application on a fresh database.
pub struct Ctx {
    pub backend: Backend,
    pub db: TestDb,
    pub kek: String,
    pub state: AppState,
}

impl Ctx {
    pub async fn new(backend: Backend) -> Ctx {
        let db = TestDb::new(backend);
        let kek = new_kek();
        let state = tessera::startup::build_state(settings(&db, &kek))
            .await
            .unwrap();
        Ctx {
            backend,
            db,
            kek,
            state,
        }
    }

    /// A context whose key ring runs on `clock`.
    pub async fn with_clock(
        backend: Backend,
        clock: std::sync::Arc<dyn tessera::domain::Clock>,
    ) -> Ctx {
        let db = TestDb::new(backend);
        let kek = new_kek();
        let state = tessera::startup::build_state_with_clock(settings(&db, &kek), clock)
            .await
            .unwrap();
        Ctx {
            backend,
            db,
            kek,
            state,
        }
    }

    pub fn settings(&self) -> Settings {
        settings(&self.db, &self.kek)
    }

    pub async fn count_users(&self) -> i64 {
        self.state
            .db
            .run(tessera::store::users::count)
            .await
            .unwrap()
    }

    /// Runs raw SQL (identical on both backends) for setting up states the API cannot reach yet.
    pub async fn exec(&self, sql: &str) {
        let sql = sql.to_owned();
        self.state
            .db
            .run(move |c| {
                diesel::sql_query(sql)
                    .execute(c)
                    .map_err(|e| tessera::store::StoreError::Query(e.to_string()))
            })
            .await
            .unwrap();
    }
}

/// A response taken apart.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json error with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status);
        assert!(
            body["title"].is_string() && body["type"].is_string() && body["detail"].is_string(),
            "{body}"
        );
        body
    }
}

pub async fn send<S, B>(app: &S, req: test::TestRequest) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = test::call_service(app, req.to_request()).await;
    let status = res.status();
    let headers = res.headers().clone();
    let body = test::read_body(res).await.to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post_json(path: &str, body: &Value) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(("content-type", "application/json"))
        .set_payload(body.to_string())
}

pub fn get(path: &str) -> test::TestRequest {
    test::TestRequest::get().uri(path)
}

pub fn bearer(path: &str, token: &str) -> test::TestRequest {
    test::TestRequest::get()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {token}")))
}

pub const PASSWORD: &str = "correct horse battery staple 42";

/// Registers and logs in; returns (user id, access token).
pub async fn register_and_login<S, B>(app: &S, email: &str) -> (String, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = send(
        app,
        post_json(
            "/v1/users",
            &serde_json::json!({"email": email, "password": PASSWORD}),
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let token = login(app, email, PASSWORD).await;
    (id, token)
}

pub async fn login<S, B>(app: &S, email: &str, password: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = send(
        app,
        post_json(
            "/v1/login",
            &serde_json::json!({"email": email, "password": password}),
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// Polls `cond` until it holds or `limit` passes; a condition, not a sleep.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Registers an account, grants it `admin` and returns its token.
pub async fn admin_token<S, B>(app: &S, state: &AppState, email: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    register_and_login(app, email).await;
    tessera::service::accounts::grant_role(&state.db, email, "admin", "test")
        .await
        .unwrap();
    login(app, email, PASSWORD).await
}

pub fn post(path: &str, token: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {token}")))
}

/// The kid in a token's header.
pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Where the tests find Redis.
pub fn redis_url() -> String {
    std::env::var("TESSERA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether Redis is there; outside CI a missing Redis skips the Redis half loudly.
pub async fn redis_available() -> bool {
    let reachable = match redis::Client::open(redis_url()) {
        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if !reachable {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("Redis is required in CI but unreachable at {}", redis_url());
        }
        eprintln!("\n!!!!!!!! SKIPPED: Redis unreachable at {}; the Redis half of this test did not run !!!!!!!!\n", redis_url());
    }
    reachable
}

/// The deployment shapes a session test runs in: embedded (SQLite, in-process mirror) and
/// cluster (PostgreSQL + Redis).
pub async fn shapes() -> Vec<(Backend, bool)> {
    let mut all = vec![(Backend::Sqlite, false)];
    if backends().contains(&Backend::Postgres) && redis_available().await {
        all.push((Backend::Postgres, true));
    }
    all
}

/// Settings for a shape; with Redis, a key prefix of its own.
pub fn shape_settings(db: &TestDb, kek: &str, redis: bool) -> Settings {
    let mut s = settings(db, kek);
    if redis {
        s.redis.url = Some(redis_url());
        s.redis.key_prefix = format!("tessera_test_{}:", uuid::Uuid::new_v4().simple());
    }
    s
}

impl Ctx {
    /// A context in one deployment shape, with `adjust` applied to its settings.
    pub async fn shaped(backend: Backend, redis: bool, adjust: impl FnOnce(&mut Settings)) -> Ctx {
        let db = TestDb::new(backend);
        let kek = new_kek();
        let mut s = shape_settings(&db, &kek, redis);
        adjust(&mut s);
        let state = tessera::startup::build_state(s).await.unwrap();
        Ctx {
            backend,
            db,
            kek,
            state,
        }
    }

    /// A direct Redis connection for assertions on the mirror.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub fn prefix(&self) -> String {
        self.state.settings.redis.key_prefix.clone()
    }
}

pub fn post_form(path: &str, body: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .set_payload(body.to_owned())
}

/// Logs in and returns (access token, refresh token).
pub async fn login_pair<S, B>(app: &S, email: &str, password: &str) -> (String, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = send(
        app,
        post_json(
            "/v1/login",
            &serde_json::json!({"email": email, "password": password}),
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let body = r.json();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

pub async fn refresh<S, B>(app: &S, token: &str) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    send(
        app,
        post_form(
            "/v1/token",
            &format!("grant_type=refresh_token&refresh_token={token}"),
        ),
    )
    .await
}

impl Reply {
    /// Asserts an RFC 6749 §5.2 error.
    pub fn assert_oauth(&self, status: u16, error: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["error"], error, "{body}");
        assert!(body["error_description"].is_string());
    }
}

/// A Redis server of the test's own, on a free port, that the test can stop and start.
pub struct OwnRedis {
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// `None` when `redis-server` is missing (skipped loudly outside CI, a failure in CI).
    pub fn available() -> bool {
        let ok = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "redis-server is required in CI"
            );
            eprintln!("\n!!!!!!!! SKIPPED: no redis-server binary; a Redis outage test did not run !!!!!!!!\n");
        }
        ok
    }

    pub fn start(port: u16) -> Option<OwnRedis> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut r = OwnRedis { child: Some(child) };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        r.stop();
        None
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The actors of the audit events of `kind` about `subject`, newest first.
pub async fn events(
    state: &AppState,
    kind: tessera::store::audit::AuditKind,
    subject: &str,
) -> Vec<Option<String>> {
    let subject = subject.to_owned();
    state
        .db
        .run(move |c| tessera::store::audit::list_for_subject(c, kind, &subject))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, actor)| actor)
        .collect()
}
