//! The models floor: what a model version *is*, before any device runs it.
//!
//! Owns the registry of immutable signed versions and their stages ([`registry`]), the
//! validation gate a version must pass before it may be deployed ([`validation`]), and
//! building, signing and describing bundles ([`packaging`]).
//! May import: [`crate::base`]. Never `fleet`, `monitoring`, `ops` or `http`.

pub mod packaging;
pub mod registry;
pub mod validation;
