//! `/v1/admin/*`: administration, for accounts with the `admin` role (the `Admin`
//! extractor enforces it). Key lifecycle (DESIGN §5) and user administration (§3).

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::body::Fields;
use super::extract::Admin;
use super::users::rfc3339;
use super::{get, resource, AppState};
use crate::crypto::keys::KeyAlg;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::service::admin_users::UserView;
use crate::service::keyring::KeyState;
use crate::service::FieldError;
use crate::store::keys::KeyRecord;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/admin/keys", "GET, HEAD").route(get().to(list_keys)))
        .service(resource("/v1/admin/keys/rotate", "POST").route(web::post().to(rotate)))
        .service(resource("/v1/admin/keys/{kid}/revoke", "POST").route(web::post().to(revoke)))
        .service(resource("/v1/admin/users", "GET, HEAD").route(get().to(list_users)))
        .service(
            resource("/v1/admin/users/{id}", "GET, HEAD, PATCH")
                .route(get().to(get_user))
                .route(web::patch().to(patch_user)),
        )
        .service(resource("/v1/admin/users/{id}/roles", "PUT").route(web::put().to(put_roles)))
        .service(
            resource("/v1/admin/users/{id}/sessions/revoke", "POST")
                .route(web::post().to(revoke_sessions)),
        );
}

/// A key as admins see it: identity, state and every timestamp; never private material.
fn key_json(r: &KeyRecord, state: KeyState) -> Value {
    let at = |t: Option<i64>| t.map(rfc3339);
    json!({
        "kid": r.kid,
        "alg": r.alg,
        "state": state.as_str(),
        "kek_id": r.kek_id,
        "created_at": rfc3339(r.created_at),
        "activates_at": rfc3339(r.activates_at),
        "retires_at": at(r.retires_at),
        "removes_at": at(r.removes_at),
        "revoked_at": at(r.revoked_at),
    })
}

async fn list_keys(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let keys = state.keys.list().await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "keys": keys.iter().map(|(r, s)| key_json(r, *s)).collect::<Vec<_>>() })))
}

/// An optional JSON body: empty means defaults; otherwise it must be a JSON object.
fn optional_json(req: &HttpRequest, body: &[u8]) -> Result<Option<Value>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<actix_web::mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == actix_web::mime::APPLICATION
                && (m.subtype() == actix_web::mime::JSON
                    || m.suffix() == Some(actix_web::mime::JSON))
        });
    if !json_type {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice::<super::body::JsonObject>(body)
        .map(|object| Some(object.0))
        .map_err(|e| super::body::malformed(&e))
}

/// A required JSON object body, read only after the `Admin` extractor has let the caller
/// in (a `web::Json` argument would be parsed, and refused, before authorization).
fn required_json(req: &HttpRequest, body: &[u8]) -> Result<Fields, ApiError> {
    match optional_json(req, body)? {
        Some(value) => Fields::new(value),
        None => Err(ApiError::MalformedRequest("a JSON body is required")),
    }
}

/// The `{id}` of a user route. A string that is not an account id names no account.
fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|_| ApiError::UserNotFound)
}

/// The `{kid}` of a key route: kids are short tokens of letters, digits, `-` and `_`; any
/// other string names no key (and never reaches a query).
fn kid(raw: &str) -> Result<&str, ApiError> {
    let plausible = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plausible {
        Ok(raw)
    } else {
        Err(ApiError::KeyNotFound)
    }
}

async fn rotate(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let mut alg = None;
    if let Some(value) = optional_json(&req, &body)? {
        let mut fields = Fields::new(value)?;
        if let Some(raw) = fields.optional_string("alg") {
            match KeyAlg::parse(&raw) {
                Ok(a) => alg = Some(a),
                Err(_) => fields.push(FieldError {
                    field: "alg",
                    code: "unsupported",
                    message: "must be ES256, EdDSA or RS256".into(),
                }),
            }
        }
        fields.finish()?;
    }
    let record = state.keys.rotate(alg, &admin.user_id).await?;
    let t = state.keys.now();
    Ok(HttpResponse::Created().json(key_json(
        &record,
        crate::service::keyring::state_at(&record, t),
    )))
}

async fn revoke(
    admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let outcome = state.keys.revoke(kid(&path)?, &admin.user_id).await?;
    let t = state.keys.now();
    let state_of = |r: &KeyRecord| key_json(r, crate::service::keyring::state_at(r, t));
    Ok(HttpResponse::Ok().json(json!({
        "revoked": state_of(&outcome.revoked),
        "replacement": outcome.replacement.as_ref().map(state_of),
        "already_revoked": outcome.already_revoked,
    })))
}

/// An account as admins see it (never the password hash).
fn user_json(u: &UserView) -> Value {
    json!({
        "id": u.id,
        "email": u.email.as_str(),
        "disabled": u.disabled,
        "roles": u.roles,
        "created_at": rfc3339(u.created_at),
        "tokens_valid_after": u.tokens_valid_after.map(rfc3339),
    })
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// `GET /v1/admin/users?limit=&after=`: accounts in id order; `next` is the `after` of the
/// next page, absent on the last.
async fn list_users(
    _admin: Admin,
    state: web::Data<AppState>,
    pairs: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let mut errors = Vec::new();
    // Each parameter once: `limit=1&limit=2` is ambiguous, so it is refused, not guessed.
    let mut query = HashMap::new();
    for (key, value) in pairs.into_inner() {
        match query.entry(key) {
            std::collections::hash_map::Entry::Occupied(seen) => {
                let shown: String = seen.key().chars().take(64).collect();
                errors.push(FieldError {
                    field: "query",
                    code: "repeated_parameter",
                    message: format!("query parameter `{shown}` given more than once"),
                });
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value);
            }
        }
    }
    let limit = match query.get("limit").map(|v| v.parse::<usize>()) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            errors.push(FieldError {
                field: "limit",
                code: "out_of_range",
                message: format!("must be a whole number from 1 to {MAX_PAGE}"),
            });
            DEFAULT_PAGE
        }
    };
    let after = match query.get("after").map(|a| UserId::parse(a)) {
        None => None,
        Some(Ok(id)) => Some(id.into_string()),
        Some(Err(_)) => {
            errors.push(FieldError {
                field: "after",
                code: "invalid",
                message: "must be a user id from a previous page".into(),
            });
            None
        }
    };
    for key in query
        .keys()
        .filter(|k| !["limit", "after"].contains(&k.as_str()))
    {
        let shown: String = key.chars().take(64).collect();
        errors.push(FieldError {
            field: "query",
            code: "unknown_parameter",
            message: format!("unknown query parameter `{shown}`"),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::ValidationFailed(errors));
    }
    let page = state.accounts.list_users(after, limit).await?;
    Ok(HttpResponse::Ok().json(json!({
        "users": page.users.iter().map(user_json).collect::<Vec<_>>(),
        "next": page.next,
    })))
}

async fn get_user(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&id)?;
    Ok(HttpResponse::Ok().json(user_json(&state.accounts.user(id.as_str()).await?)))
}

/// `PATCH /v1/admin/users/{id}` `{"disabled": bool}`.
async fn patch_user(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&id)?;
    let mut fields = required_json(&req, &body)?;
    let disabled = fields.bool("disabled");
    fields.finish()?;
    let view = state
        .accounts
        .set_disabled(id.as_str(), disabled, &admin.user_id)
        .await?;
    Ok(HttpResponse::Ok().json(user_json(&view)))
}

/// `PUT /v1/admin/users/{id}/roles` `{"roles": [..]}`: the complete new set.
async fn put_roles(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&id)?;
    let mut fields = required_json(&req, &body)?;
    let roles = fields.strings("roles");
    fields.finish()?;
    let view = state
        .accounts
        .set_roles(id.as_str(), &roles, &admin.user_id)
        .await?;
    Ok(HttpResponse::Ok().json(user_json(&view)))
}

/// `POST /v1/admin/users/{id}/sessions/revoke`.
async fn revoke_sessions(
    admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&id)?;
    let ended = state
        .accounts
        .end_sessions(id.as_str(), &admin.user_id)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "sessions_revoked": ended })))
}
