//! The HTTP floor: the only place that knows HTTP.
//!
//! Owns the shared request state ([`api::AppState`]), API tokens, roles and rate limits
//! ([`auth`]), the JSON API ([`api`]) and the dashboard ([`dashboard`]). Handlers check the
//! caller, decode the body, call a lower floor and map its error to a status.
//! May import: every other floor. Only this floor (and the binary's wiring in `server`)
//! imports axum.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod serve;
