//! The HTTP floor: the only place that knows HTTP.
//!
//! Owns the shared request state ([`api::AppState`]), API tokens, roles and rate limits
//! ([`auth`]), the JSON API ([`api`]) and the dashboard ([`dashboard`]). Handlers check the
//! caller, decode the body, call a lower floor and map its error to a status; large bodies are
//! streamed to disk first ([`spool`]).
//! [`server`] composes the running coordinator: it opens every lower floor's state, builds the
//! engines from their narrow handles, and hands them to the API as one [`api::AppState`] —
//! nothing below this floor (and nothing in the wiring) sees that state.
//! May import: every other floor. Only this floor imports axum.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod denials;
pub mod error;
pub mod serve;
pub mod server;
pub mod spool;
