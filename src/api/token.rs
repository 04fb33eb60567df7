//! The OAuth endpoints: `POST /v1/token` (refresh grant, RFC 6749 §6) and `POST /v1/revoke`
//! (RFC 7009), form-encoded, answering errors in the RFC 6749 §5.2 format; and the session
//! endpoints `POST /v1/logout` and `POST /v1/password`.
//!
//! Browsers (requests whose `Origin` is in `cors.allowed_origins`, with
//! `cookies.refresh_cookie` on) get the refresh token in an `HttpOnly; Secure;
//! SameSite=Strict` cookie limited to the token path, never in a body a script can read. A
//! refresh authenticated by that cookie must also carry `X-Tessera-CSRF`: a custom header
//! forces a CORS preflight, which only the allowed origins pass.

use std::collections::HashMap;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::body::Fields;
use super::extract::Authenticated;
use super::{resource, AppState};
use crate::config::Settings;
use crate::error::{ApiError, OAuthError};
use crate::service::{AccountError, TokenGrant};

pub(crate) const CSRF_HEADER: &str = "x-tessera-csrf";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/token", "POST").route(web::post().to(token)))
        .service(resource("/v1/revoke", "POST").route(web::post().to(revoke)))
        .service(resource("/v1/logout", "POST").route(web::post().to(logout)))
        .service(resource("/v1/password", "POST").route(web::post().to(change_password)));
}

/// Whether this request comes from a browser frontend that gets the cookie transport.
pub fn browser_origin(req: &HttpRequest, settings: &Settings) -> bool {
    settings.cookies.refresh_cookie
        && req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| settings.cors.origins().iter().any(|allowed| allowed == o))
}

fn refresh_cookie(settings: &Settings, value: String, max_age: i64) -> Cookie<'static> {
    Cookie::build(settings.cookies.name.clone(), value)
        .path(settings.cookies.path.clone())
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age))
        .finish()
}

/// The RFC 6749 §5.1 token response; the refresh token goes in the body or, for browsers,
/// in the cookie.
pub fn token_response(req: &HttpRequest, settings: &Settings, grant: TokenGrant) -> HttpResponse {
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    let mut body = json!({
        "access_token": grant.access_token,
        "token_type": "Bearer",
        "expires_in": grant.expires_in,
    });
    if browser_origin(req, settings) {
        let max_age =
            i64::try_from(settings.sessions.refresh_absolute_ttl.as_secs()).unwrap_or(i64::MAX);
        res.cookie(refresh_cookie(
            settings,
            grant.refresh_token.expose().to_owned(),
            max_age,
        ));
    } else {
        body["refresh_token"] = json!(grant.refresh_token.expose());
    }
    res.json(body)
}

fn clear_cookie(res: &mut HttpResponse, settings: &Settings) {
    let _ = res.add_cookie(&refresh_cookie(settings, String::new(), 0));
}

/// Parses a form body: each parameter at most once (RFC 6749 §3.2).
fn form(req: &HttpRequest, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<actix_web::mime::Mime>().ok())
        .is_some_and(|m| m.essence_str() == "application/x-www-form-urlencoded");
    if !form_type {
        return Err(OAuthError::UnsupportedMediaType);
    }
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if params.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(OAuthError::InvalidRequest("a parameter is repeated"));
        }
    }
    Ok(params)
}

async fn token(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, OAuthError> {
    let settings = &state.settings;
    let params = form(&req, &body)?;
    match params.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {}
        Some(_) => return Err(OAuthError::UnsupportedGrantType),
        None => return Err(OAuthError::InvalidRequest("grant_type is required")),
    }
    let from_cookie = req
        .cookie(&settings.cookies.name)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty());
    let (presented, by_cookie) = match (params.get("refresh_token"), from_cookie) {
        (Some(t), _) => (t.clone(), false),
        (None, Some(c)) if settings.cookies.refresh_cookie => (c, true),
        _ => return Err(OAuthError::InvalidRequest("refresh_token is required")),
    };
    if by_cookie && !(browser_origin(&req, settings) && req.headers().contains_key(CSRF_HEADER)) {
        return Err(OAuthError::CrossSite);
    }
    let ip = super::limit::client_ip(&req, &state);
    let bucket = [(
        state.policies.refresh_per_ip,
        format!("refresh:ip:{}", super::limit::ip_bucket(ip)),
    )];
    super::limit::enforce(&req, &state.limiter, &state.policies, &bucket, None)
        .await
        .map_err(|_| OAuthError::RateLimited)?;
    match state.accounts.refresh(&presented).await {
        Ok(grant) => Ok(token_response(&req, settings, grant)),
        Err(e) => {
            let err = OAuthError::from(e);
            // A dead cookie is cleared so the frontend sends the user to log in; a cookie
            // another tab has just rotated is not dead, and the browser already holds the
            // replacement.
            if by_cookie
                && matches!(err, OAuthError::InvalidGrant(why) if why != crate::service::sessions::ALREADY_USED)
            {
                let mut res = actix_web::ResponseError::error_response(&err);
                clear_cookie(&mut res, settings);
                return Ok(res);
            }
            Err(err)
        }
    }
}

async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, OAuthError> {
    let params = form(&req, &body)?;
    let token = params
        .get("token")
        .filter(|t| !t.is_empty())
        .ok_or(OAuthError::InvalidRequest("token is required"))?;
    state.accounts.revoke(token).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

#[derive(serde::Deserialize)]
struct LogoutQuery {
    #[serde(default)]
    everywhere: bool,
}

async fn logout(
    auth: Authenticated,
    state: web::Data<AppState>,
    query: web::Query<LogoutQuery>,
) -> Result<HttpResponse, ApiError> {
    state.accounts.logout(&auth.0, query.everywhere).await?;
    let mut res = HttpResponse::NoContent().finish();
    clear_cookie(&mut res, &state.settings);
    Ok(res)
}

async fn change_password(
    req: HttpRequest,
    auth: Authenticated,
    state: web::Data<AppState>,
    body: web::Json<super::body::JsonObject>,
) -> Result<HttpResponse, ApiError> {
    let mut fields = Fields::new(body.into_inner().0)?;
    let current = zeroize::Zeroizing::new(fields.string("current_password"));
    let new = zeroize::Zeroizing::new(fields.string("new_password"));
    fields.finish()?;
    // A stolen access token must not buy unlimited guesses at the current password: the
    // same per-account budget and backoff as login, checked before any hashing.
    let p = &state.policies;
    let account = format!("user:{}", auth.0.sub);
    let bucket = [(p.login_per_account, format!("password:{}", auth.0.sub))];
    super::limit::enforce(
        &req,
        &state.limiter,
        p,
        &bucket,
        Some(&format!("lock:{account}")),
    )
    .await
    .map_err(|_| ApiError::RateLimited)?;
    match state
        .accounts
        .change_password(&auth.0, &current, &new)
        .await
    {
        Ok(()) => {
            if p.enabled {
                state.limiter.login_succeeded(&account).await;
            }
            Ok(HttpResponse::NoContent().finish())
        }
        Err(AccountError::Invalid(fields)) => {
            if p.enabled && fields.iter().any(|f| f.field == "current_password") {
                state.limiter.login_failed(&account).await;
            }
            Err(ApiError::ValidationFailed(fields))
        }
        Err(other) => Err(other.into()),
    }
}
