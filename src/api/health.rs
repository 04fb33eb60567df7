//! Operator endpoints: liveness and readiness.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{resource, AppState};
use crate::limits::MirrorState;

/// Longest a readiness probe waits for the database.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET").route(web::get().to(healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(readyz)));
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
    );
    let status = match (ready, degraded) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let body = json!({
        "status": status,
        "checks": { "database": database, "signing_key": signing_key, "revocation_list": revocations.as_str() },
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
