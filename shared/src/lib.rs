//! Outpost's common crate: the model runtime and the types every other crate speaks.
//!
//! - [`datatype`]: tensor element types, named as the Open Inference Protocol (V2) names them.
//! - [`tensor`]: conversions between V2 wire data (JSON numbers, little-endian bytes) and tensors.
//! - [`runtime`]: load an ONNX model with tract, describe its signature, check inputs, run it.
//! - [`protocol`]: signed envelopes (postcard + Ed25519), message bodies and MQTT topic names.
//! - [`tls`]: rustls client settings (ring only) for the MQTT link; [`files`]: atomic and
//!   owner-only (0600) file writes for keys, tokens and certificates.
//! - [`drift`]: drift statistics (KS, chi-square, Wasserstein, Jensen–Shannon, PSI) that agree
//!   with scipy, and the choice of test by sample size.
//! - [`histogram`]: a mergeable latency/score histogram with bounded relative error.
//! - [`trees`]: our own ai.onnx.ml tree-ensemble kernel, registered into tract's op registry.
//! - [`bundle`]: the signed model bundle (manifest, ONNX bytes, Ed25519 signatures).
//! - [`reference`]: reference input/output pairs produced by another runtime, and the check
//!   that our runtime reproduces them before a model may serve.
//!
//! No network I/O and no async runtime live here: the agent and the coordinator both build on
//! this crate, so a model validated centrally behaves the same on every device.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod datatype;
pub mod drift;
pub mod endpoints;
pub mod env;
pub mod files;
#[cfg(feature = "server")]
pub mod front;
pub mod histogram;
pub mod keysource;
pub mod names;
pub mod protocol;
pub mod reference;
pub mod runtime;
pub mod tensor;
pub mod tls;
pub mod trees;

pub use datatype::DataType;
pub use runtime::{Dim, Model, RuntimeError, Signature, TensorSpec};
pub use tract_onnx::prelude::Tensor;
