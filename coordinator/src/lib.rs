//! Outpost's coordinator — not built yet: this crate reserves its place in the workspace.
//!
//! It will own the model registry and artifact store, the validation gate, fleet state, the
//! rollout engine, monitoring, the HTTP API with RBAC, the dashboard and the embedded broker
//! (see `../shared/DESIGN.md` §4). It depends on `outpost-shared` only, never on the agent:
//! the model runtime it validates with is the same one every agent serves with.
#![forbid(unsafe_code)]
