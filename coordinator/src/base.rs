//! The ground floor: what every other floor stands on and nothing else.
//!
//! Owns the sled database and its error type ([`store`]), PostgreSQL's URL, schema, pool and
//! leases ([`pg`]), the handle naming which of the two holds the records ([`backing`]), the feed of its committed changes
//! ([`feed`]), the hash-chained audit log
//! ([`audit`]), backups of the whole data directory ([`backup`]), the Prometheus metric
//! registry ([`metrics`]), the clock ([`clock`]), and how
//! numbers ([`numbers`]) and Markdown ([`markdown`]) are shown to people.
//! May import: `outpost_shared` and outside crates only — no other floor of this crate.

pub mod audit;
pub mod backing;
pub mod backup;
pub mod clock;
pub mod feed;
pub mod markdown;
pub mod metrics;
pub mod numbers;
pub mod pg;
pub mod secrets;
pub mod store;
