//! The fleet floor: the devices and the wire to them.
//!
//! Owns the device records, enrolment tokens and stored envelopes ([`devices`], the floor's
//! repository), the fleet CA and signing key ([`ca`]), desired states ([`desired`]), ingest of signed
//! telemetry ([`ingest`]), liveness — one rule for whether a device is online, stale or offline
//! ([`liveness`]) —, revocation and the CA's revocation list ([`revocation`]), the MQTT link
//! ([`link`]) and the embedded broker ([`broker`]).
//! May import: [`crate::base`], [`crate::models`], [`crate::monitoring`] (ingest feeds them).
//! Never `ops` or `http`.

pub mod broker;
pub mod ca;
pub mod desired;
pub mod devices;
pub mod ingest;
pub mod link;
pub mod liveness;
pub mod revocation;
pub mod roots;
