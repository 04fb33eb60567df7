//! Operator endpoints: liveness and readiness.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{get, resource, AppState};
use crate::limits::MirrorState;

/// Longest a readiness probe waits for the database.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET, HEAD").route(get().to(healthz)))
        .service(resource("/readyz", "GET, HEAD").route(get().to(readyz)))
        .service(resource("/metrics", "GET, HEAD").route(get().to(metrics)));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers and a signing key is loaded. Causes go to the log, not
/// to the body.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = match tokio::time::timeout(READY_DB_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            "unavailable"
        }
        Err(_) => {
            tracing::warn!("readiness: database check timed out");
            "unavailable"
        }
    };
    let signing_key = if state.keys.active_kid().is_some() {
        "ok"
    } else {
        "missing"
    };
    let ready = database == "ok" && signing_key == "ok";
    // Redis trouble degrades (checks fall back to the database) but does not unready.
    let revocations = state.revocations.state();
    let degraded = matches!(
        revocations,
        MirrorState::Unavailable | MirrorState::Rebuilding
    ) || state.limiter.backend() == "memory-fallback";
    let status = match (ready, degraded) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let body = json!({
        "status": status,
        "checks": {
            "database": database,
            "signing_key": signing_key,
            "revocation_list": revocations.as_str(),
            "rate_limits": state.limiter.backend(),
        },
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text exposition (format 0.0.4) of the few figures operators alert on.
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let pool = state.accounts.hashing_stats();
    let keys = state.keys.current();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "tessera_password_hashes_total",
        "counter",
        "Argon2id hashes computed.",
        &[("", pool.computed.load(Relaxed))],
    );
    metric(
        "tessera_password_hash_shed_total",
        "counter",
        "Hashing requests refused with 503 because the queue was full.",
        &[("", pool.shed.load(Relaxed))],
    );
    metric(
        "tessera_password_hash_abandoned_total",
        "counter",
        "Queued hashing requests dropped because the caller had gone.",
        &[("", pool.abandoned.load(Relaxed))],
    );
    let backend = state.limiter.backend();
    metric(
        "tessera_rate_limit_fallback",
        "gauge",
        "1 while Redis is unreachable and rate limits are counted in this replica only.",
        &[("", u64::from(backend == "memory-fallback"))],
    );
    let mirror = state.revocations.state();
    metric(
        "tessera_revocation_mirror_degraded",
        "gauge",
        "1 while revocation checks fall back to the database (Redis unreachable or rebuilding).",
        &[(
            "",
            u64::from(matches!(
                mirror,
                MirrorState::Unavailable | MirrorState::Rebuilding
            )),
        )],
    );
    metric(
        "tessera_signing_key_present",
        "gauge",
        "1 when a signing key is active.",
        &[("", u64::from(keys.signer_at(state.keys.now()).is_some()))],
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}
