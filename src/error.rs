//! The HTTP error table: every error a `/v1` client can see, with its status, stable `code`
//! and title, rendered as `application/problem+json` (RFC 9457). Bodies never carry a stack
//! trace, SQL, a path, or whether an account exists; a 500 carries only the request id,
//! while the cause goes to the log where the error is converted.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::service::{AccountError, FieldError, KeyRingError};

tokio::task_local! {
    /// The current request's id, set by the request middleware for everything it awaits.
    pub static REQUEST_ID: String;
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    ValidationFailed(Vec<FieldError>),
    #[error("malformed request: {0}")]
    MalformedRequest(&'static str),
    #[error("e-mail taken")]
    EmailTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid bearer token")]
    InvalidToken,
    #[error("forbidden")]
    Forbidden,
    #[error("rate limited")]
    RateLimited,
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("invalid grant")]
    InvalidGrant(&'static str),
    #[error("not found")]
    NotFound,
    #[error("no such signing key")]
    KeyNotFound,
    #[error("no such user")]
    UserNotFound,
    #[error("refused on the caller's own account")]
    OwnAccount(&'static str),
    #[error("rotation in progress")]
    RotationInProgress(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("request body too slow")]
    RequestTimeout,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("overloaded")]
    Overloaded,
    #[error("unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

/// Seconds a client should wait after a 503 before retrying.
const RETRY_AFTER_SECS: &str = "1";

impl ApiError {
    /// The table: status, stable machine-readable code, human title. Exhaustive on purpose:
    /// a new variant forces a decision here.
    fn spec(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::ValidationFailed(_) => (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                "The request has invalid fields",
            ),
            ApiError::MalformedRequest(_) => (
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "The request body could not be read",
            ),
            ApiError::EmailTaken => (
                StatusCode::CONFLICT,
                "email_taken",
                "This e-mail address is already registered",
            ),
            ApiError::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "E-mail or password is incorrect",
            ),
            ApiError::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "A bearer access token is required",
            ),
            ApiError::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "The access token is invalid, expired or revoked",
            ),
            ApiError::InvalidGrant(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "The grant is invalid",
            ),
            ApiError::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests; retry after the time in Retry-After",
            ),
            ApiError::OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "This origin may not call the API from a browser",
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "This needs a role the caller does not have",
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "No such resource"),
            ApiError::KeyNotFound => (
                StatusCode::NOT_FOUND,
                "key_not_found",
                "No signing key has this kid",
            ),
            ApiError::UserNotFound => (
                StatusCode::NOT_FOUND,
                "user_not_found",
                "No account has this id",
            ),
            ApiError::OwnAccount(_) => (
                StatusCode::CONFLICT,
                "own_account",
                "Admins cannot do this to their own account",
            ),
            ApiError::RotationInProgress(_) => (
                StatusCode::CONFLICT,
                "rotation_in_progress",
                "A key rotation is already in progress",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed on this resource",
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body exceeds 64 KiB",
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "The request body did not arrive in time",
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "The request body must be application/json",
            ),
            ApiError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "The service is busy; retry shortly",
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "A dependency is unavailable; retry shortly",
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
            ),
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::MalformedRequest(why) => (*why).to_owned(),
            ApiError::RotationInProgress(why) => why.clone(),
            ApiError::OwnAccount(why) => (*why).to_owned(),
            ApiError::InvalidGrant(why) => (*why).to_owned(),
            ApiError::ValidationFailed(_) => "See `errors` for each invalid field.".into(),
            ApiError::Internal => "Quote the request id when reporting this.".into(),
            other => other.spec().2.to_owned(),
        }
    }

    /// Renders the problem document; `request_id` is added when known.
    pub fn to_response(&self, request_id: Option<&str>) -> HttpResponse {
        let (status, code, title) = self.spec();
        let mut body = json!({
            "type": format!("urn:tessera:problem:{code}"),
            "title": title,
            "status": status.as_u16(),
            "detail": self.detail(),
            "code": code,
        });
        if let ApiError::ValidationFailed(fields) = self {
            body["errors"] = fields
                .iter()
                .map(|f| json!({"field": f.field, "code": f.code, "message": f.message}))
                .collect();
        }
        if let Some(id) = request_id {
            body["request_id"] = json!(id);
        }
        let mut res = HttpResponse::build(status);
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        match self {
            // RFC 6750 §3: a missing token gets a bare challenge, a bad one names the error.
            ApiError::MissingToken => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            ApiError::InvalidToken => {
                res.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                ));
            }
            ApiError::Overloaded | ApiError::Unavailable => {
                res.insert_header((
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                ));
            }
            _ => {}
        }
        res.body(body.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.spec().0
    }

    fn error_response(&self) -> HttpResponse {
        let id = REQUEST_ID.try_with(Clone::clone).ok();
        self.to_response(id.as_deref())
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Invalid(fields) => ApiError::ValidationFailed(fields),
            AccountError::EmailTaken => ApiError::EmailTaken,
            AccountError::InvalidCredentials => ApiError::InvalidCredentials,
            AccountError::TokenRevoked => ApiError::InvalidToken,
            AccountError::UserNotFound => ApiError::UserNotFound,
            AccountError::OwnAccount(why) => ApiError::OwnAccount(why),
            AccountError::InvalidGrant(why) => ApiError::InvalidGrant(why),
            AccountError::Overloaded => {
                tracing::warn!("password hashing queue full: request shed");
                ApiError::Overloaded
            }
            AccountError::Unavailable(cause) => {
                tracing::error!(%cause, "dependency unavailable");
                ApiError::Unavailable
            }
            AccountError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                ApiError::Internal
            }
        }
    }
}

impl From<KeyRingError> for ApiError {
    fn from(e: KeyRingError) -> Self {
        match e {
            KeyRingError::NotFound(_) => ApiError::KeyNotFound,
            KeyRingError::RotationInProgress { kid, activates_at } => ApiError::RotationInProgress(
                format!("key {kid} is pending and signs from {activates_at} (Unix time)"),
            ),
            KeyRingError::Store(crate::store::StoreError::Unavailable(cause)) => {
                tracing::error!(%cause, "database unavailable");
                ApiError::Unavailable
            }
            other @ (KeyRingError::Store(_)
            | KeyRingError::WrongKek { .. }
            | KeyRingError::Unseal { .. }
            | KeyRingError::BadKey { .. }
            | KeyRingError::Generate(_)) => {
                tracing::error!(cause = %other, "key ring failure");
                ApiError::Internal
            }
        }
    }
}

/// Errors of the OAuth endpoints (`/v1/token`, `/v1/revoke`), rendered as RFC 6749 §5.2
/// `{"error", "error_description"}` because OAuth client libraries expect that shape.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// The body is not form-encoded (DESIGN §3: a wrong content type is 415).
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A cookie-borne refresh without the CSRF defence.
    #[error("cross-site request refused")]
    CrossSite,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("temporarily unavailable")]
    Unavailable,
    #[error("rate limited")]
    RateLimited,
    #[error("server error")]
    Server,
}

impl OAuthError {
    fn spec(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            OAuthError::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why),
            OAuthError::InvalidGrant(why) => (StatusCode::BAD_REQUEST, "invalid_grant", why),
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be refresh_token",
            ),
            OAuthError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            ),
            OAuthError::CrossSite => (
                StatusCode::FORBIDDEN,
                "invalid_request",
                "a cookie refresh needs an allowed Origin and the X-Tessera-CSRF header",
            ),
            OAuthError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the request body exceeds 64 KiB",
            ),
            OAuthError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "retry shortly",
            ),
            OAuthError::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many requests; retry after the time in Retry-After",
            ),
            OAuthError::Server => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error; quote the X-Request-Id header",
            ),
        }
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        self.spec().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, error, description) = self.spec();
        let mut res = HttpResponse::build(status);
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if matches!(self, OAuthError::Unavailable) {
            res.insert_header((
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            ));
        }
        res.json(json!({"error": error, "error_description": description}))
    }
}

impl From<AccountError> for OAuthError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidGrant(why) => OAuthError::InvalidGrant(why),
            AccountError::Overloaded | AccountError::Unavailable(_) => {
                tracing::warn!(cause = %e, "token endpoint degraded");
                OAuthError::Unavailable
            }
            AccountError::TokenRevoked | AccountError::InvalidCredentials => {
                OAuthError::InvalidGrant("the grant is invalid")
            }
            AccountError::Invalid(_)
            | AccountError::EmailTaken
            | AccountError::UserNotFound
            | AccountError::OwnAccount(_) => OAuthError::InvalidRequest("the request is invalid"),
            AccountError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                OAuthError::Server
            }
        }
    }
}
