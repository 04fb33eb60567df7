//! `POST /v1/login`: password login, answered with an RFC 6749 §5.1 token response.

use actix_web::{web, HttpRequest, HttpResponse};

use super::body::Fields;
use super::extract::peer_ip;
use super::{resource, AppState};
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/login", "POST").route(web::post().to(login)));
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let mut fields = Fields::new(body.into_inner())?;
    let email = fields.string("email");
    let password = zeroize::Zeroizing::new(fields.string("password"));
    fields.finish()?;
    let grant = state
        .accounts
        .login(&email, &password, peer_ip(&req))
        .await?;
    // RFC 6749 §5.1 token response, `Cache-Control: no-store`.
    Ok(super::token::token_response(&req, &state.settings, grant))
}
