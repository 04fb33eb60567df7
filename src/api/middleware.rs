//! Cross-cutting HTTP behaviour: request ids, per-request spans and log lines, panic
//! containment, and security headers on every response.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{DefaultHeaders, Next};
use futures_util::{FutureExt, StreamExt};
use tracing::Instrument;

use crate::config::Settings;
use crate::error::{ApiError, REQUEST_ID};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// An incoming request id is echoed only if it is short and plain, so it cannot inject
/// anything into logs or headers; otherwise a fresh one is made.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// How long a client may take to send a request body once its head has arrived (the head
/// itself is bounded by the server's request timeout): a client that announces a body and
/// then stalls is answered 408 instead of holding its connection open for ever.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The request's body, failing with a timed-out read once `within` has passed.
fn with_deadline(payload: Payload, within: Duration) -> Payload {
    let deadline = tokio::time::Instant::now() + within;
    let stream = futures_util::stream::unfold(Some(payload), move |state| async move {
        let mut payload = state?;
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(payload))),
            Ok(None) => None,
            Err(_) => Some((
                Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                ))),
                None,
            )),
        }
    });
    Payload::Stream {
        payload: Box::pin(stream),
    }
}

/// Whether a body read failed because of [`BODY_TIMEOUT`].
pub fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// Wraps each request in a span with its id and logs one line when it ends. Runs before
/// routing, so it must not hold a clone of the request (routing needs it unshared).
/// A body the request announces gets [`BODY_TIMEOUT`] to arrive.
pub async fn request_context(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let has_body = {
        let h = req.headers();
        h.contains_key(actix_web::http::header::CONTENT_LENGTH)
            || h.contains_key(actix_web::http::header::TRANSFER_ENCODING)
    };
    if has_body {
        let payload = actix_web::HttpMessage::take_payload(&mut req);
        req.set_payload(with_deadline(payload, BODY_TIMEOUT));
    }
    let id = request_id(&req);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
    let started = Instant::now();
    let mut res = REQUEST_ID
        .scope(id.clone(), next.call(req))
        .instrument(span.clone())
        .await?
        .map_into_boxed_body();
    // Errors raised by the framework itself (a body over the limit for a raw-bytes
    // extractor, an unreadable path segment) become problem+json like ours.
    let foreign_error = res.response().error().is_some_and(|e| {
        e.as_error::<ApiError>().is_none() && e.as_error::<crate::error::OAuthError>().is_none()
    });
    if foreign_error && !is_problem(&res) {
        let cors = res
            .response()
            .error()
            .is_some_and(|e| e.as_error::<actix_cors::CorsError>().is_some());
        let timed_out = res
            .response()
            .error()
            .and_then(|e| e.as_error::<PayloadError>())
            .is_some_and(is_body_timeout);
        let api = match res.status().as_u16() {
            _ if cors => ApiError::OriginNotAllowed,
            _ if timed_out => ApiError::RequestTimeout,
            413 => ApiError::PayloadTooLarge,
            415 => ApiError::UnsupportedMediaType,
            404 => ApiError::NotFound,
            405 => ApiError::MethodNotAllowed,
            400..=499 => ApiError::MalformedRequest("the request could not be read"),
            _ => ApiError::Internal,
        };
        res = res.into_response(api.to_response(Some(&id)));
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    super::limit::add_headers(&mut res);
    let status = res.status().as_u16();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    tracing::info!(parent: &span, status, latency_us = micros, "request");
    Ok(res)
}

fn is_problem(res: &ServiceResponse<BoxBody>) -> bool {
    res.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
}

/// Turns a panic in a handler into an opaque 500 (with the request id) instead of a dropped
/// connection. Installed per resource, after routing, where holding a clone of the request
/// is harmless.
pub async fn contain_panics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let http_req = req.request().clone();
    match AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(res) => res.map(ServiceResponse::map_into_boxed_body),
        Err(_) => {
            tracing::error!("handler panicked; answered 500");
            Ok(ServiceResponse::new(
                http_req,
                actix_web::ResponseError::error_response(&ApiError::Internal),
            ))
        }
    }
}

/// Headers every response carries (DESIGN §7). Handlers that may be cached (JWKS,
/// metadata) set their own `Cache-Control`, which `DefaultHeaders` leaves alone.
pub fn security_headers(settings: &Settings) -> DefaultHeaders {
    let mut headers = DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add((
            "Content-Security-Policy",
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cross-Origin-Resource-Policy", "same-site"))
        .add(("Cache-Control", "no-store"));
    // TLS is terminated in front of us; an https issuer means clients reach us over TLS.
    if settings.tokens.issuer.starts_with("https://") {
        headers = headers.add((
            "Strict-Transport-Security",
            "max-age=63072000; includeSubDomains",
        ));
    }
    headers
}

/// CORS for the configured frontend origins only (DESIGN §7), with credentials so the
/// refresh cookie can travel. Requests from other origins are served without CORS headers
/// (the browser then withholds the response); server-to-server calls are unaffected.
pub fn cors(settings: &Settings) -> actix_cors::Cors {
    use actix_web::http::header;
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static(super::token::CSRF_HEADER),
            HeaderName::from_static(REQUEST_ID_HEADER),
        ])
        .expose_headers([
            HeaderName::from_static(REQUEST_ID_HEADER),
            header::RETRY_AFTER,
        ])
        .supports_credentials()
        .max_age(600)
        .block_on_origin_mismatch(false);
    for origin in settings.cors.origins() {
        cors = cors.allowed_origin(&origin);
    }
    cors
}
