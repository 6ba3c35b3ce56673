//! The operations floor: the engines that change what the fleet runs.
//!
//! Owns deploying ([`deploy`]: the one way to build, store and send desired states, used by
//! the API, rollouts and retraining alike), staged rollouts ([`rollout`]), the retraining loop
//! ([`retraining`]) and fleet alerts ([`alerts`]). Each engine is built from the narrow handles
//! it needs, never from the HTTP state.
//! May import: every lower floor (`base`, `models`, `monitoring`, `fleet`). Never `http`.

pub mod alerts;
pub mod deploy;
pub mod retraining;
pub mod rollout;
