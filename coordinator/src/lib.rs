//! Outpost's coordinator: enrols devices, ingests their signed telemetry, rolls out models and
//! watches them.
//!
//! The crate is built in floors; a floor imports only the floors below it (checked by
//! `tests/architecture.rs`):
//!
//! | floor | owns |
//! |---|---|
//! | [`base`] | sled store, audit log, metrics, clock |
//! | [`models`] | registry, validation gate, bundles |
//! | [`monitoring`] | SLOs, quality, drift history, datasets, retention, cards |
//! | [`fleet`] | CA, desired states, ingest, liveness, MQTT link, embedded broker |
//! | [`ops`] | deploy, rollouts, retraining, alerts |
//! | [`http`] | request state, auth, JSON API, dashboard — the only floor that knows HTTP |
//!
//! [`config`] and [`cli`] wire the floors into the `outpost-coordinator` binary (the running
//! server is composed in [`http::server`], the top floor); [`ctl`] is the operator's CLI
//! (`outpostctl`, `outpost ctl`), which speaks to the API only through `outpost-client`.
//!
//! This crate depends on `outpost-shared` only, never on the agent.
#![forbid(unsafe_code)]

pub mod base;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod fleet;
pub mod http;
pub mod models;
pub mod monitoring;
pub mod ops;
