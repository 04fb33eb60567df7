//! `POST /v1/login`: password login, answered with an RFC 6749 §5.1 token response.

use actix_web::{web, HttpRequest, HttpResponse};

use super::body::credentials;
use super::{resource, AppState};
use crate::error::ApiError;
use crate::service::AccountError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/login", "POST").route(web::post().to(login)));
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<super::body::JsonObject>,
) -> Result<HttpResponse, ApiError> {
    let (email, password) = credentials(body.into_inner().0)?;
    let ip = super::limit::client_ip(&req, &state);
    let account = super::limit::account_bucket(&email);
    // Both limits and the account's backoff lock in one round trip, before any hashing:
    // the same answer whether or not the account exists.
    let p = &state.policies;
    let buckets = [
        (
            p.login_per_ip,
            format!("login:ip:{}", super::limit::ip_bucket(ip)),
        ),
        (p.login_per_account, format!("login:acct:{account}")),
    ];
    super::limit::enforce(
        &req,
        &state.limiter,
        p,
        &buckets,
        Some(&format!("lock:{account}")),
    )
    .await
    .map_err(|_| ApiError::RateLimited)?;
    match state
        .accounts
        .login(&email, &password, ip.map(|i| i.to_string()))
        .await
    {
        Ok(grant) => {
            if p.enabled {
                state.limiter.login_succeeded(&account).await;
            }
            // RFC 6749 §5.1 token response, `Cache-Control: no-store`.
            Ok(super::token::token_response(&req, &state.settings, grant))
        }
        Err(AccountError::InvalidCredentials) => {
            if p.enabled {
                state.limiter.login_failed(&account).await;
            }
            Err(ApiError::InvalidCredentials)
        }
        Err(other) => Err(other.into()),
    }
}
