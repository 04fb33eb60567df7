//! `/v1/admin/*`: administration, for accounts with the `admin` role (the `Admin`
//! extractor enforces it). Key lifecycle (DESIGN §5).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::body::Fields;
use super::extract::Admin;
use super::users::rfc3339;
use super::{resource, AppState};
use crate::crypto::keys::KeyAlg;
use crate::error::ApiError;
use crate::service::keyring::KeyState;
use crate::service::FieldError;
use crate::store::keys::KeyRecord;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/admin/keys", "GET").route(web::get().to(list_keys)))
        .service(resource("/v1/admin/keys/rotate", "POST").route(web::post().to(rotate)))
        .service(resource("/v1/admin/keys/{kid}/revoke", "POST").route(web::post().to(revoke)));
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
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|_| ApiError::MalformedRequest("the body is not valid UTF-8 JSON"))
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
    kid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let outcome = state.keys.revoke(&kid, &admin.user_id).await?;
    let t = state.keys.now();
    let state_of = |r: &KeyRecord| key_json(r, crate::service::keyring::state_at(r, t));
    Ok(HttpResponse::Ok().json(json!({
        "revoked": state_of(&outcome.revoked),
        "replacement": outcome.replacement.as_ref().map(state_of),
        "already_revoked": outcome.already_revoked,
    })))
}
