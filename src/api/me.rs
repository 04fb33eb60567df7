//! `GET /v1/me`: the caller's profile (an online check: revoked or disabled users fail).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::extract::Authenticated;
use super::users::rfc3339;
use super::{get, resource, AppState};
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/me", "GET, HEAD").route(get().to(me)));
}

async fn me(state: web::Data<AppState>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let profile = state.accounts.profile(&auth.0).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": profile.id,
        "email": profile.email.as_str(),
        "roles": profile.roles,
        "created_at": rfc3339(profile.created_at),
    })))
}
