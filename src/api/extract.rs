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
    // Two Authorization headers are ambiguous (RFC 6750 §3.1 invalid_request): refuse.
    if req.headers().get_all(header::AUTHORIZATION).count() > 1 {
        return Err(ApiError::InvalidToken);
    }
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

/// A caller holding a verified access token whose account, checked online now, has the
/// `admin` role. Missing or bad token → 401; any other account → 403.
pub struct Admin {
    pub user_id: String,
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verified = authenticate(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let req = req.clone();
        Box::pin(async move {
            let Authenticated(claims) = verified?;
            let state = state.ok_or(ApiError::Internal)?;
            let bucket = [(
                state.policies.admin_per_user,
                format!("admin:{}", claims.sub),
            )];
            super::limit::enforce(&req, &state.limiter, &state.policies, &bucket, None)
                .await
                .map_err(|_| ApiError::RateLimited)?;
            // The token's roles are a snapshot; the account's current roles decide.
            let profile = state.accounts.profile(&claims).await?;
            if profile
                .roles
                .iter()
                .any(|r| r == crate::domain::Role::ADMIN)
            {
                Ok(Admin {
                    user_id: profile.id,
                })
            } else {
                tracing::info!(user_id = %profile.id, "admin endpoint refused: no admin role");
                Err(ApiError::Forbidden)
            }
        })
    }
}
