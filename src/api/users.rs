//! `POST /v1/users`: registration.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::body::credentials;
use super::{resource, AppState};
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/users", "POST").route(web::post().to(register)));
}

async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<super::body::JsonObject>,
) -> Result<HttpResponse, ApiError> {
    let (email, password) = credentials(body.into_inner().0)?;
    let ip = super::limit::client_ip(&req, &state);
    let bucket = [(
        state.policies.register_per_ip,
        format!("register:ip:{}", super::limit::ip_bucket(ip)),
    )];
    super::limit::enforce(&req, &state.limiter, &state.policies, &bucket, None)
        .await
        .map_err(|_| ApiError::RateLimited)?;
    let account = state
        .accounts
        .register(&email, &password, ip.map(|i| i.to_string()))
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/admin/users/{}", account.id)))
        .json(json!({
            "id": account.id,
            "email": account.email.as_str(),
            "created_at": rfc3339(account.created_at),
        })))
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(t: i64) -> String {
    let secs = u64::try_from(t).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
