//! The monitoring floor: what the fleet's telemetry says about each model over time.
//!
//! Owns SLOs ([`slo`]), ground truth and quality ([`quality`]), drift history and reports
//! ([`report`]), datasets for retraining ([`dataset`]), following a model's records as they are
//! stored ([`follow`]), retention of monitoring history
//! ([`retention`]) and model cards ([`card`], which join a version's bundle facts with what the
//! fleet measured).
//! May import: [`crate::base`], [`crate::models`]. Never `fleet`, `ops` or `http`.

pub mod card;
pub mod dataset;
pub mod follow;
pub mod quality;
pub mod report;
pub mod retention;
pub mod slo;
