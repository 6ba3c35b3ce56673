//! Outpost's coordinator: enrols devices, ingests their signed telemetry, and shows the fleet.
//!
//! - [`config`]: settings (TOML + `OUTPOST_COORDINATOR_*` env).
//! - [`ca`]: the fleet CA (device client certificates, broker certificates) and the
//!   coordinator's Ed25519 signing key.
//! - [`store`]: state in sled — tokens, devices, every envelope stored once.
//! - [`ingest`]: verify → store → what to ack; shared by live traffic and imported files.
//! - [`link`]: the MQTT connection (rumqttc, mTLS) that feeds ingest and publishes acks.
//! - [`broker`]: the embedded MQTT broker (rumqttd, mTLS), used unless `broker.url` is set.
//! - [`api`]: HTTP API (enrolment tokens, enrolment, fleet view, telemetry import), metrics.
//! - [`packaging`]: build, sign and describe model bundles (offline; `outpostctl bundle`, `key`).
//! - [`server`], [`cli`]: the `outpost-coordinator` binary; `src/bin/outpostctl.rs` is the
//!   operator's CLI.
//!
//! - [`registry`]: immutable signed versions, content-addressed artifacts, stages.
//! - [`validation`]: the gate a version must pass before it may be deployed.
//! - [`alerts`]: fleet-level alert rules (sustained drift, error surges, silent devices,
//!   backlogs), grouped across devices, sent to Alertmanager and a JSON webhook.
//! - [`dataset`]: uploaded predictions joined with their labels, exported as CSV for retraining.
//! - [`retraining`]: the retraining loop (export → the operator's command → next patch version
//!   with lineage → validation gate → canary when the policy allows).
//! - [`retention`]: hourly pruning of monitoring history older than `retention.monitoring_days`.
//! - [`slo`]: objectives per model (availability, latency percentile, accuracy) with
//!   compliance and burn rate over a rolling window, fleet-wide.
//! - [`card`]: model cards (bundle facts, validation per class and segment, fleet quality, drift).
//! - [`report`]: drift history and the weekly drift report (Markdown, HTML).
//! - [`quality`]: ground-truth labels from agents, and accuracy/precision/recall/F1 per version
//!   and per device label.
//! - [`desired`]: per-device desired state, signed and published retained.
//! - [`auth`]: API tokens, roles and rate limits; [`audit`]: the hash-chained audit log.
//!
//! - [`rollout`]: staged rollouts in waves, gated on the candidate's live numbers against the
//!   baseline's, with automatic rollback and incidents; persisted, resumed after a restart.
//!
//! This crate depends on `outpost-shared` only, never on the agent.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod ca;
pub mod card;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod dataset;
pub mod desired;
pub mod ingest;
pub mod link;
pub mod metrics;
pub mod packaging;
pub mod quality;
pub mod registry;
pub mod report;
pub mod retention;
pub mod retraining;
pub mod rollout;
pub mod server;
pub mod slo;
pub mod store;
pub mod validation;
