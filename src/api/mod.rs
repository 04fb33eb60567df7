//! HTTP: routes, extractors, wire types. Handlers translate between the wire and the
//! use-cases in `service/`; they hold no business rules.

mod admin;
mod body;
mod extract;
mod health;
pub mod limit;
mod login;
mod me;
pub mod middleware;
mod token;
mod users;
mod wellknown;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpResponse};

use crate::config::Settings;
use crate::error::ApiError;
use crate::service::{Accounts, KeyRing};
use crate::store::Db;

/// Largest accepted request body (DESIGN §3).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared, read-only state of one process.
#[derive(Clone)]
pub struct AppState {
    pub accounts: Accounts,
    pub keys: Arc<KeyRing>,
    pub db: Db,
    pub revocations: Arc<crate::limits::Revocations>,
    pub limiter: Arc<crate::limits::rate::Limiter>,
    pub policies: limit::Policies,
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    pub settings: Arc<Settings>,
}

/// Registers every route on `cfg`; used by [`app`] and by tests that add their own routes.
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let discovery = wellknown::Discovery::new(&state.settings);
        cfg.app_data(web::Data::new(state))
            .app_data(web::Data::new(discovery))
            .app_data(body::json_config())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .configure(users::configure)
            .configure(admin::configure)
            .configure(login::configure)
            .configure(me::configure)
            .configure(token::configure)
            .configure(wellknown::configure)
            .configure(health::configure);
    }
}

/// The whole application: routes, security headers, request ids, panic containment, and
/// problem+json for unknown routes.
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let headers = middleware::security_headers(&state.settings);
    let cors = middleware::cors(&state.settings);
    App::new()
        .configure(configure(state))
        .default_service(web::to(not_found))
        .wrap(cors)
        .wrap(actix_web::middleware::from_fn(middleware::request_context))
        .wrap(headers)
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// A route for GET that also answers HEAD (RFC 9110 §9.3.2): the same status and headers,
/// and the HTTP layer sends no body. Every GET resource uses it and lists both in `allow`.
pub fn get() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// A resource whose other methods answer 405 as problem+json with `Allow` (RFC 9110
/// §15.5.6), and whose handlers' panics become 500s. Every route is declared through this;
/// `allow` lists the methods the caller routes on it.
pub fn resource(
    path: &str,
    allow: &'static str,
) -> actix_web::Resource<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path)
        .default_service(web::to(move || async move {
            let mut res = actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed);
            res.headers_mut().insert(
                actix_web::http::header::ALLOW,
                actix_web::http::header::HeaderValue::from_static(allow),
            );
            res
        }))
        .wrap(actix_web::middleware::from_fn(middleware::contain_panics))
}
