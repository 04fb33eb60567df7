//! Published material: the JWKS (served from memory, with `ETag` and `max-age`) and the
//! issuer metadata (RFC 8414, OpenID Connect Discovery) that JWT libraries discover it from.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{get, resource, AppState};
use crate::config::Settings;
use crate::crypto::keys::KeyAlg;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/.well-known/jwks.json", "GET, HEAD").route(get().to(jwks)))
        .service(
            resource("/.well-known/openid-configuration", "GET, HEAD").route(get().to(metadata)),
        )
        .service(
            resource("/.well-known/oauth-authorization-server", "GET, HEAD")
                .route(get().to(metadata)),
        );
}

/// Issuer metadata, serialised once at start-up. It lists only endpoints and grants that
/// exist (password login is `/v1/login`, not an OAuth grant).
pub struct Discovery {
    body: String,
    cache_control: String,
}

impl Discovery {
    pub fn new(settings: &Settings) -> Discovery {
        let issuer = settings.tokens.issuer.trim_end_matches('/');
        let algs: Vec<&str> = KeyAlg::ALL.iter().map(|a| a.as_str()).collect();
        let body = json!({
            "issuer": settings.tokens.issuer,
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "token_endpoint": format!("{issuer}/v1/token"),
            "revocation_endpoint": format!("{issuer}/v1/revoke"),
            "grant_types_supported": ["refresh_token"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        })
        .to_string();
        let cache_control = format!("public, max-age={}", settings.keys.jwks_max_age.as_secs());
        Discovery {
            body,
            cache_control,
        }
    }
}

async fn metadata(discovery: web::Data<Discovery>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, discovery.cache_control.as_str()))
        .content_type("application/json")
        .body(discovery.body.clone())
}

async fn jwks(
    req: HttpRequest,
    state: web::Data<AppState>,
    discovery: web::Data<Discovery>,
) -> HttpResponse {
    let keys = state.keys.current();
    let etag = keys.etag();
    let cache = (header::CACHE_CONTROL, discovery.cache_control.as_str());
    if if_none_match(&req, etag) {
        return HttpResponse::NotModified()
            .insert_header(cache)
            .insert_header((header::ETAG, etag))
            .finish();
    }
    HttpResponse::Ok()
        .insert_header(cache)
        .insert_header((header::ETAG, etag))
        .content_type("application/json")
        .body(keys.jwks().to_vec())
}

/// RFC 9110 §13.1.2: weak comparison, a list of tags, or `*`.
fn if_none_match(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v: &HeaderValue| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}
