//! Access policy as extractor types: a handler that takes `Authenticated` cannot run
//! without a verified access token.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use super::AppState;
use crate::crypto::jwt::AccessClaims;
use crate::error::ApiError;

/// The claims of a bearer access token that verified offline (signature, `kid`/`alg`,
/// `typ`, `iss`, `aud`, `exp`, `nbf`). Online checks are the use-case's business.
pub struct Authenticated(pub AccessClaims);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Ready<Result<Authenticated, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Authenticated, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::Internal)?;
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingToken)?;
    let value = value.to_str().map_err(|_| ApiError::InvalidToken)?;
    // RFC 6750 §2.1: the scheme is case-insensitive.
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MissingToken);
    }
    let token = token.trim();
    match state.keys.current().verifier().verify(token) {
        Ok(claims) => Ok(Authenticated(claims)),
        Err(reason) => {
            tracing::info!(%reason, "bearer token refused");
            Err(ApiError::InvalidToken)
        }
    }
}

/// The peer's IP address, for the audit trail. Forwarding headers are not trusted here.
pub fn peer_ip(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}
