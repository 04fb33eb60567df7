//! Tessera: a standalone identity and token-issuing service.
//!
//! Layers, top to bottom: `api` (HTTP) → `service` (use-cases) → `store` and `crypto`
//! (adapters); `domain` holds the newtypes every layer shares and depends on none of them.

pub mod api;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod limits;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use config::Settings;
pub use startup::Application;
