//! Settings: built-in defaults → optional TOML file → `TESSERA__SECTION__KEY` environment.
//! Errors here belong to start-up: they name the setting and never print a secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Everything the service reads at start-up.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `development` (default) or `production`; production refuses unsafe settings.
    pub profile: Profile,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub tokens: TokenSettings,
    pub keys: KeySettings,
    pub sessions: SessionSettings,
    pub cookies: CookieSettings,
    pub cors: CorsSettings,
    pub rate_limits: RateLimitSettings,
    pub redis: RedisSettings,
    pub password: PasswordSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    /// 0 picks a free port (tests); the bound address is logged as `listening`.
    pub port: u16,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path` (relative to the working directory) or `postgres://…`.
    #[serde(serialize_with = "redact_url_password")]
    pub url: String,
    pub pool_size: u32,
    /// Apply pending migrations at start-up (otherwise run `tessera migrate`).
    pub migrate_on_start: bool,
    /// How long a request waits for a pooled connection before failing with 503.
    #[serde(with = "humane")]
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    #[serde(with = "humane")]
    pub access_ttl: Duration,
    /// Clock-skew allowance on `exp`/`nbf` when verifying.
    #[serde(with = "humane")]
    pub leeway: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// Key-encryption key, base64 of 32 bytes. Prefer `kek_file` or the environment.
    #[serde(serialize_with = "redact_opt")]
    pub kek: Option<SecretString>,
    /// File holding the base64 KEK (e.g. a mounted Kubernetes secret).
    pub kek_file: Option<PathBuf>,
    /// Where the development profile generates a KEK when none is configured.
    pub dev_kek_path: PathBuf,
    /// Algorithm of generated signing keys: `ES256` or `EdDSA`.
    pub algorithm: String,
    /// `Cache-Control: max-age` of the JWKS.
    #[serde(with = "humane")]
    pub jwks_max_age: Duration,
    /// How often a scheduled rotation starts a new signing key.
    #[serde(with = "humane")]
    pub rotation_interval: Duration,
    /// How often each replica re-reads keys (and runs the rotation and removal duty).
    #[serde(with = "humane")]
    pub reload_interval: Duration,
    /// Older KEKs (base64, comma-separated) still accepted to open keys sealed before a
    /// KEK rotation, until `tessera keys rewrap` has moved them to the current one.
    #[serde(serialize_with = "redact_opt")]
    pub previous_keks: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:6379/0`; unset means in-process stores only (single replica).
    #[serde(serialize_with = "redact_opt_url_password")]
    pub url: Option<String>,
    /// Prefix of every key Tessera writes (proto-docs/redis.md).
    pub key_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            key_prefix: "tessera:".into(),
        }
    }
}

/// Rate limits, as `LIMIT/PERIOD` (e.g. `30/1m`), counted in Redis when configured.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Proxies (comma-separated CIDRs) whose forwarding header is believed.
    pub trusted_proxies: String,
    /// The header those proxies write: `x-forwarded-for` or `forwarded` (RFC 7239).
    pub forwarded_header: String,
    pub login_per_ip: String,
    /// Per normalised e-mail (hashed in the key), whether or not the account exists.
    pub login_per_account: String,
    pub register_per_ip: String,
    pub refresh_per_ip: String,
    pub admin_per_user: String,
    /// Failed logins on one account before backoff starts.
    pub backoff_after: u32,
    #[serde(with = "humane")]
    pub backoff_base: Duration,
    #[serde(with = "humane")]
    pub backoff_max: Duration,
    /// Failures older than this are forgotten.
    #[serde(with = "humane")]
    pub backoff_window: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            enabled: true,
            trusted_proxies: String::new(),
            forwarded_header: "x-forwarded-for".into(),
            login_per_ip: "30/1m".into(),
            login_per_account: "10/5m".into(),
            register_per_ip: "20/1h".into(),
            refresh_per_ip: "600/1m".into(),
            admin_per_user: "120/1m".into(),
            backoff_after: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15 * 60),
            backoff_window: Duration::from_secs(15 * 60),
        }
    }
}

impl RateLimitSettings {
    pub fn proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{p} is not an IP or CIDR"))
            })
            .collect()
    }
}

/// Refresh-token lifetimes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// A refresh token unused this long expires.
    #[serde(with = "humane")]
    pub refresh_idle_ttl: Duration,
    /// No session outlives this.
    #[serde(with = "humane")]
    pub refresh_absolute_ttl: Duration,
    /// Concurrent reuse of a just-rotated token within this window is refused without
    /// ending the session.
    #[serde(with = "humane")]
    pub reuse_grace: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            refresh_idle_ttl: Duration::from_secs(14 * 24 * 3600),
            refresh_absolute_ttl: Duration::from_secs(30 * 24 * 3600),
            reuse_grace: Duration::from_secs(10),
        }
    }
}

/// The refresh-token cookie for browser frontends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CookieSettings {
    /// Deliver refresh tokens to browsers (requests with an allowed `Origin`) in an
    /// `HttpOnly; Secure; SameSite=Strict` cookie instead of the response body.
    pub refresh_cookie: bool,
    pub name: String,
    /// The only path the browser sends the cookie to.
    pub path: String,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings {
            refresh_cookie: false,
            name: "tessera_refresh".into(),
            path: "/v1/token".into(),
        }
    }
}

/// Browser origins allowed to call the API (CORS), comma-separated, e.g.
/// `https://app.example.com, http://localhost:3000`. Empty: no cross-origin access.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    pub allowed_origins: String,
}

impl CorsSettings {
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordSettings {
    pub min_length: usize,
    /// Minimum zxcvbn score (0–4).
    pub min_strength: u8,
    /// Argon2id memory in KiB (OWASP: 19456).
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Optional pepper mixed into every hash as the Argon2 secret.
    #[serde(serialize_with = "redact_opt")]
    pub pepper: Option<SecretString>,
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
    /// Hashing requests allowed to wait for a thread; beyond that, 503 at once. The default
    /// (128) queues a flood of a hundred clients instead of shedding it: a client that is
    /// answered 503 at once retries at once, and serving that storm of 503s costs the CPU the
    /// hashing threads need. At OWASP parameters on 2 cores a full queue waits about 1.6 s.
    pub queue: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (default) or `pretty`.
    pub format: String,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            profile: Profile::Development,
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            tokens: TokenSettings::default(),
            keys: KeySettings::default(),
            sessions: SessionSettings::default(),
            cookies: CookieSettings::default(),
            cors: CorsSettings::default(),
            rate_limits: RateLimitSettings::default(),
            redis: RedisSettings::default(),
            password: PasswordSettings::default(),
            log: LogSettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: "127.0.0.1".into(),
            port: 8080,
            workers: 0,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://data/tessera.db".into(),
            pool_size: 8,
            migrate_on_start: true,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            issuer: "http://localhost:8080".into(),
            audience: "api".into(),
            access_ttl: Duration::from_secs(15 * 60),
            leeway: Duration::from_secs(30),
        }
    }
}

impl Default for KeySettings {
    fn default() -> Self {
        KeySettings {
            kek: None,
            kek_file: None,
            dev_kek_path: PathBuf::from("data/dev-kek"),
            algorithm: "ES256".into(),
            jwks_max_age: Duration::from_secs(5 * 60),
            rotation_interval: Duration::from_secs(30 * 24 * 3600),
            reload_interval: Duration::from_secs(30),
            previous_keks: None,
        }
    }
}

impl Default for PasswordSettings {
    fn default() -> Self {
        PasswordSettings {
            min_length: 8,
            min_strength: 3,
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            pepper: None,
            threads: 0,
            queue: 128,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// A setting that is missing, malformed or unsafe, named so an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("{setting}: {problem}")]
    Invalid {
        setting: &'static str,
        problem: String,
    },
    #[error("refusing to start in the production profile: {0}")]
    Unsafe(String),
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        problem: problem.into(),
    }
}

impl Settings {
    /// Loads defaults, then `file` (if given) or `$TESSERA_CONFIG`, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("TESSERA_CONFIG").map(PathBuf::from));
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("TESSERA")
                .prefix_separator("__")
                .separator("__")
                .ignore_empty(true),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every setting whose bad value would only surface later, and, in production,
    /// every setting that is unsafe there. Lists all unsafe settings at once.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let issuer = url::Url::parse(&self.tokens.issuer)
            .map_err(|e| invalid("tokens.issuer", format!("not a URL ({e})")))?;
        if !matches!(issuer.scheme(), "http" | "https")
            || issuer.query().is_some()
            || issuer.fragment().is_some()
        {
            return Err(invalid(
                "tokens.issuer",
                "must be an http(s) URL without query or fragment (RFC 8414 §2)",
            ));
        }
        if self.tokens.audience.trim().is_empty() {
            return Err(invalid("tokens.audience", "must not be empty"));
        }
        // Seconds-long lifetimes exist for lifecycle tests; production refuses under 1m.
        if self.tokens.access_ttl < Duration::from_secs(5)
            || self.tokens.access_ttl > Duration::from_secs(24 * 3600)
        {
            return Err(invalid("tokens.access_ttl", "must be between 5s and 24h"));
        }
        if self.tokens.leeway > Duration::from_secs(300) {
            return Err(invalid("tokens.leeway", "must be at most 5m"));
        }
        if self.keys.jwks_max_age < Duration::from_secs(1)
            || self.keys.jwks_max_age > Duration::from_secs(24 * 3600)
        {
            return Err(invalid("keys.jwks_max_age", "must be between 1s and 24h"));
        }
        crate::crypto::keys::KeyAlg::parse(&self.keys.algorithm)
            .map_err(|_| invalid("keys.algorithm", "must be ES256, EdDSA or RS256"))?;
        if self.keys.reload_interval < Duration::from_secs(1)
            || self.keys.reload_interval > Duration::from_secs(300)
        {
            return Err(invalid("keys.reload_interval", "must be between 1s and 5m"));
        }
        if self.keys.rotation_interval < self.publish_lead() + self.retire_grace() {
            return Err(invalid(
                "keys.rotation_interval",
                "must exceed the publish lead (jwks_max_age + 2 × reload_interval + leeway) plus the retirement grace (access_ttl + leeway)",
            ));
        }
        if self.keys.kek.is_some() && self.keys.kek_file.is_some() {
            return Err(invalid(
                "keys.kek",
                "set either keys.kek or keys.kek_file, not both",
            ));
        }
        if !(self.database.url.starts_with("sqlite://")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        self.rate_limits
            .proxies()
            .map_err(|e| invalid("rate_limits.trusted_proxies", e))?;
        for (name, text) in [
            ("rate_limits.login_per_ip", &self.rate_limits.login_per_ip),
            (
                "rate_limits.login_per_account",
                &self.rate_limits.login_per_account,
            ),
            (
                "rate_limits.register_per_ip",
                &self.rate_limits.register_per_ip,
            ),
            (
                "rate_limits.refresh_per_ip",
                &self.rate_limits.refresh_per_ip,
            ),
            (
                "rate_limits.admin_per_user",
                &self.rate_limits.admin_per_user,
            ),
        ] {
            crate::limits::rate::parse_policy("check", text).map_err(|e| invalid(name, e))?;
        }
        if !matches!(
            self.rate_limits.forwarded_header.as_str(),
            "x-forwarded-for" | "forwarded"
        ) {
            return Err(invalid(
                "rate_limits.forwarded_header",
                "must be x-forwarded-for or forwarded",
            ));
        }
        if self.rate_limits.backoff_after == 0 {
            return Err(invalid("rate_limits.backoff_after", "must be at least 1"));
        }
        for origin in self.cors.origins() {
            let ok = url::Url::parse(&origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.path() == "/" && u.query().is_none()
            });
            if !ok {
                return Err(invalid(
                    "cors.allowed_origins",
                    format!("{origin} is not an origin like https://app.example.com"),
                ));
            }
        }
        if self.sessions.refresh_absolute_ttl
            < self.sessions.refresh_idle_ttl.min(Duration::from_secs(60))
        {
            return Err(invalid(
                "sessions.refresh_absolute_ttl",
                "must be at least 1m",
            ));
        }
        if self.sessions.reuse_grace > Duration::from_secs(60) {
            return Err(invalid("sessions.reuse_grace", "must be at most 1m"));
        }
        if !self.cookies.path.starts_with('/')
            || self.cookies.name.is_empty()
            || !self
                .cookies
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "cookies.name",
                "cookies.name must be a plain token and cookies.path must start with /",
            ));
        }
        if self.cookies.refresh_cookie && self.cors.origins().is_empty() {
            return Err(invalid(
                "cookies.refresh_cookie",
                "needs cors.allowed_origins: the cookie is only for listed browser origins",
            ));
        }
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "redis.url",
                    "must start with redis:// or rediss://",
                ));
            }
        }
        if self.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        if self.password.min_length == 0 || self.password.min_length > 256 {
            return Err(invalid("password.min_length", "must be between 1 and 256"));
        }
        if self.password.min_strength > 4 {
            return Err(invalid(
                "password.min_strength",
                "is a zxcvbn score from 0 to 4",
            ));
        }
        argon2::Params::new(
            self.password.memory_kib,
            self.password.iterations,
            self.password.parallelism,
            None,
        )
        .map_err(|e| {
            invalid(
                "password.memory_kib",
                format!("invalid Argon2 parameters: {e}"),
            )
        })?;
        if self.password.queue == 0 {
            return Err(invalid("password.queue", "must be at least 1"));
        }
        if !matches!(self.log.format.as_str(), "json" | "pretty") {
            return Err(invalid("log.format", "must be json or pretty"));
        }
        if self.profile == Profile::Production {
            let mut unsafe_settings = Vec::new();
            if self.keys.kek.is_none() && self.keys.kek_file.is_none() {
                unsafe_settings
                    .push("keys.kek or keys.kek_file must be set (no generated development KEK)");
            }
            if issuer.scheme() != "https" {
                unsafe_settings.push("tokens.issuer must be an https URL");
            }
            if !self.rate_limits.enabled {
                unsafe_settings.push("rate_limits.enabled must be true");
            }
            if self.password.min_strength < 2 {
                unsafe_settings.push("password.min_strength must be at least 2");
            }
            if self.tokens.access_ttl < Duration::from_secs(60) {
                unsafe_settings.push("tokens.access_ttl must be at least 1m");
            }
            if self.password.min_length < 8 {
                unsafe_settings.push("password.min_length must be at least 8");
            }
            if self.password.memory_kib < 19 * 1024 || self.password.iterations < 2 {
                unsafe_settings
                    .push("password.memory_kib/iterations must be at least OWASP's 19456 KiB, t=2");
            }
            if !unsafe_settings.is_empty() {
                return Err(SettingsError::Unsafe(unsafe_settings.join("; ")));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets replaced by `[redacted]`.
    pub fn redacted_toml(&self) -> String {
        toml_string(self)
    }

    /// Number of HTTP workers to start.
    pub fn http_workers(&self) -> usize {
        if self.server.workers == 0 {
            cores()
        } else {
            self.server.workers
        }
    }

    pub fn hash_threads(&self) -> usize {
        if self.password.threads == 0 {
            cores()
        } else {
            self.password.threads
        }
    }

    /// How long a new signing key is published before it signs: one JWKS cache lifetime, so
    /// a verifier's cached JWKS already holds it, plus two reload intervals, so every replica
    /// serves it before then, plus the clock leeway.
    pub fn publish_lead(&self) -> Duration {
        self.keys.jwks_max_age + self.keys.reload_interval * 2 + self.tokens.leeway
    }

    /// How long a retired key stays published: until the last token it signed has expired.
    pub fn retire_grace(&self) -> Duration {
        self.tokens.access_ttl + self.tokens.leeway
    }

    pub fn pepper(&self) -> Option<Vec<u8>> {
        self.password
            .pepper
            .as_ref()
            .map(|p| p.expose_secret().as_bytes().to_vec())
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn toml_string(settings: &Settings) -> String {
    // Serialising our own plain struct cannot fail; fall back to Debug, which is also redacted.
    match serde_json::to_value(settings) {
        Ok(value) => render_toml(&value),
        Err(_) => format!("{settings:?}"),
    }
}

/// Renders the two-level settings tree as TOML without another dependency.
fn render_toml(value: &serde_json::Value) -> String {
    let mut top = String::new();
    let mut sections = String::new();
    if let Some(map) = value.as_object() {
        for (key, v) in map {
            match v {
                serde_json::Value::Object(inner) => {
                    sections.push_str(&format!("\n[{key}]\n"));
                    for (k, iv) in inner {
                        if !iv.is_null() {
                            sections.push_str(&format!("{k} = {iv}\n"));
                        }
                    }
                }
                serde_json::Value::Null => {}
                other => top.push_str(&format!("{key} = {other}\n")),
            }
        }
    }
    top + &sections
}

fn redact_opt<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

fn redact_opt_url_password<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => redact_url_password(v, s),
        None => s.serialize_none(),
    }
}

fn redact_url_password<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(value))
}

/// A URL with its password hidden, whether in the userinfo or a `password=` parameter.
fn redacted_url(value: &str) -> String {
    let Ok(mut u) = url::Url::parse(value) else {
        return value.to_owned();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("redacted"));
    }
    if u.query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword"))
    {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let secret =
                    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
                (
                    k.into_owned(),
                    if secret {
                        "redacted".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Durations as humane strings (`15m`, `30d`, `500ms`).
mod humane {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw = String::deserialize(d)?;
        humantime::parse_duration(raw.trim()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let s = Settings::default();
        s.validate().unwrap();
        assert!(s.database.url.starts_with("sqlite://"));
        assert_eq!(s.tokens.access_ttl, Duration::from_secs(900));
    }

    #[test]
    fn production_names_every_unsafe_setting() {
        let s = Settings {
            profile: Profile::Production,
            ..Settings::default()
        };
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("keys.kek"), "{msg}");
        assert!(msg.contains("tokens.issuer"), "{msg}");
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let mut s = Settings::default();
        s.keys.kek = Some(SecretString::from("c2VjcmV0LWtlay12YWx1ZQ=="));
        s.password.pepper = Some(SecretString::from("pepper-value"));
        s.database.url = "postgres://app:dbpass@db/tessera?sslmode=require&password=qpass".into();
        let out = s.redacted_toml();
        assert!(!out.contains("c2VjcmV0"), "{out}");
        assert!(!out.contains("pepper-value"), "{out}");
        assert!(!out.contains("dbpass") && !out.contains("qpass"), "{out}");
        assert!(out.contains("sslmode=require"), "{out}");
        assert!(out.contains("[redacted]"), "{out}");
        assert!(out.contains("access_ttl = \"15m\""), "{out}");
    }
}
