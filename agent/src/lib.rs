//! Outpost's edge agent: serves ONNX models over the KServe Open Inference Protocol (V2).
//!
//! - [`config`]: TOML + `OUTPOST_*` environment configuration.
//! - [`models`]: the table of served models and their validated start-up.
//! - [`model_store`]: signed bundles on disk, the active version per model, local rollback.
//! - [`reconcile`]: applies the store to what serves (verify, validate, atomic swap).
//! - [`desired`]: the coordinator's signed desired state: verify, download (Range), install.
//! - [`watchdog`]: a new version's probation; switches back on crashes, errors or latency.
//! - [`drift`]: sliding windows of inputs and predictions tested against the bundle's baseline.
//! - [`api::feedback`]: `POST /v1/feedback`, ground-truth labels joined to logged predictions.
//! - [`exit`]: every command's exit codes as one `ExitStatus`.
//! - [`infer`]: the inference pipeline (decode → check → tract → log → summary → encode) and
//!   its `InferError`.
//! - [`pool`]: the bounded inference worker pool.
//! - [`api`]: V2 HTTP endpoints and `/metrics`.
//! - [`metrics`]: Prometheus metric names and recording.
//! - [`server`]: the `serve` lifecycle (bind, load, drain on signal).
//! - [`simulate`]: many simulated agents in one process, for coordinator load tests.
//! - [`cli`], [`check_model`], [`logging`]: the binary's edges.
#![forbid(unsafe_code)]

/// Prefix of environment variables that override configuration keys (`OUTPOST_LOG__FORMAT`).
pub const ENV_PREFIX: &str = "OUTPOST_";

pub mod api;
pub mod at_rest;
pub mod batching;
pub mod check_model;
pub mod cli;
pub mod config;
pub mod damage;
pub mod desired;
pub mod drift;
pub mod exit;
pub mod identity;
pub mod infer;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod model_store;
pub mod models;
pub mod outbox;
pub mod pool;
pub mod prediction_log;
pub mod reconcile;
pub mod server;
pub mod simulate;
pub mod telemetry;
pub mod trust_root;
pub mod trusted_time;
pub mod watchdog;
