//! The agent's local store of signed model bundles: which versions are on disk, which one is
//! active per model, and the activation history that `rollback` walks back — all usable with
//! no network at all.
//!
//! Layout under `<data_dir>/models/`: `bundles/<name>/<version>.bundle` (verified bundle files,
//! written atomically, never modified; encrypted at `name@version` when encryption at rest is
//! on — [`crate::at_rest`] — and decrypted only in memory, straight into the verifier and tract), `state.json` (active version and history per model, a
//! generation counter bumped on every change, replaced atomically) and `.lock`. Every change
//! happens under an exclusive lock on `.lock`, so `outpost-agent import` and `rollback` can run
//! beside a serving agent: the agent polls `state.json` and swaps when the generation moves.
//! Only the last `keep` versions per model stay on disk; the active one is never removed.
//!
//! Damage never stops the agent ([`ModelStore::repair`], at start): `state.json` is also
//! written as `state.json.bak`, so a damaged one is restored from its copy; a bundle file that
//! no longer verifies is moved to `models/quarantine/`, and a model whose active version went
//! with it is served from the newest earlier version that still verifies (the coordinator's
//! desired state brings the lost one back where there is a coordinator).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

mod repair;

pub use repair::Repair;

use outpost_shared::bundle::{Bundle, BundleError, Manifest, ReleaseKeys};
use outpost_shared::protocol::messages::{SlotMode, WatchdogPolicy};
use serde::{Deserialize, Serialize};

use crate::at_rest::{AtRest, Store};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("model store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model store state {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{id} is already installed with other bytes (sha256 {installed}); versions are immutable")]
    Conflict { id: String, installed: String },
    #[error("model `{0}` has no version installed")]
    UnknownModel(String),
    #[error("model `{name}` has no version `{version}` on disk")]
    NotInstalled { name: String, version: String },
    #[error("model `{name}` cannot go back {steps} version(s): only {available} earlier version(s) on disk")]
    NoHistory { name: String, steps: usize, available: usize },
    #[error("several models are installed ({0}): name the one to roll back")]
    Ambiguous(String),
    #[error(transparent)]
    Name(#[from] outpost_shared::names::NameError),
    #[error("installed bundle {path} does not read: {why}")]
    Unreadable { path: PathBuf, why: crate::at_rest::Unreadable },
    #[error(
        "{name}@{version} is older than {floor}, the newest release this device has been told is current: an imported \
         bundle cannot take it back (a replayed old bundle is refused); go back with `outpost-agent rollback`, or have \
         the coordinator deploy {version} (a new, higher desired-state revision)"
    )]
    OlderThanFloor { name: String, version: String, floor: String },
}

/// One model's local state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredModel {
    pub active: String,
    /// Versions active before this one, oldest first.
    pub history: Vec<String>,
    /// The active version is on probation: watched by the watchdog, which may switch back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<Probation>,
    /// A second version beside the active one: a canary or a standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<StoredCandidate>,
    /// The newest release this device was told is current (activated by a desired state or an
    /// import): an imported bundle may not activate an older one — a replayed old bundle (an old
    /// USB stick at an air-gapped site) is refused. Explicit rollbacks (`outpost-agent rollback`,
    /// a new desired state naming an older version, the watchdog) do not lower it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_floor: Option<String>,
}

/// The candidate slot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCandidate {
    pub version: String,
    pub mode: SlotMode,
}

/// A newly activated version under watch (see [`crate::watchdog`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probation {
    pub version: String,
    /// Where the watchdog goes back to.
    pub previous: String,
    pub since_ms: u64,
    pub policy: WatchdogPolicy,
    /// Agent runs on this version that ended without a clean exit.
    pub crashes: u32,
    /// Set while an agent runs; cleared by a clean exit. Found set at start = a crash.
    pub running: bool,
}

/// What the watchdog did to a model at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAction {
    /// A crash while on probation was counted; the version gets another chance.
    Crashed { name: String, version: String, crashes: u32, allowed: u32 },
    /// Too many crashes: the previous version is active again.
    RolledBack { name: String, from: String, to: String, crashes: u32 },
}

/// The whole local state (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreState {
    /// Bumped by every change; a serving agent applies the state when it moves.
    pub generation: u64,
    pub models: BTreeMap<String, StoredModel>,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// The store in a data directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    keep: usize,
    at_rest: AtRest,
}

impl ModelStore {
    /// The store under `data_dir` (created on first write); keeps `keep` versions per model;
    /// bundle files written as `at_rest` says.
    pub fn new(data_dir: &Path, keep: usize, at_rest: &AtRest) -> ModelStore {
        ModelStore { dir: data_dir.join("models"), keep: keep.max(1), at_rest: at_rest.clone() }
    }

    /// An installed bundle's bytes, in the clear (in memory only).
    fn bundle_bytes(&self, name: &str, version: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
        let stored = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                StoreError::NotInstalled { name: name.to_owned(), version: version.to_owned() }
            }
            _ => StoreError::Io { path: path.to_owned(), source },
        })?;
        self.at_rest
            .read(Store::Bundle, format!("{name}@{version}").as_bytes(), &stored)
            .map_err(|why| StoreError::Unreadable { path: path.to_owned(), why })
    }

    /// How bundle files are kept (encrypted or not).
    pub fn at_rest(&self) -> &AtRest {
        &self.at_rest
    }

    /// The store's folder (`<data_dir>/models`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + use<> {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    }

    fn lock(&self) -> Result<File, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path))?;
        file.lock().map_err(self.io(&path))?;
        Ok(file)
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn backup_path(&self) -> PathBuf {
        self.dir.join("state.json.bak")
    }

    /// Where a version's bundle lives: `bundles/<name>/<version>.bundle`, from names that pass
    /// the one grammar (`outpost_shared::names`), so the path never leaves `bundles/`.
    pub fn bundle_path(&self, name: &str, version: &str) -> Result<PathBuf, StoreError> {
        use outpost_shared::names;
        let dir = names::join(&self.dir.join("bundles"), "model name", name)?;
        names::check("version", version)?;
        Ok(dir.join(format!("{version}.bundle")))
    }

    /// The current state (empty when nothing was ever installed).
    pub fn state(&self) -> Result<StoreState, StoreError> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt { path: path.clone(), detail: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreState::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn write_state(&self, state: &StoreState) -> Result<(), StoreError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), detail: e.to_string() })?;
        // The copy first: whichever write a power cut or a bad sector interrupts, one of the
        // two files holds a whole state.
        let backup = self.backup_path();
        outpost_shared::files::write_atomic(&backup, &bytes).map_err(self.io(&backup))?;
        outpost_shared::files::write_atomic(&path, &bytes).map_err(self.io(&path))
    }

    /// Versions of `name` on disk.
    pub fn installed(&self, name: &str) -> Vec<String> {
        // A name outside the grammar has no versions: nothing can have been stored under it.
        let Ok(dir) = outpost_shared::names::join(&self.dir.join("bundles"), "model name", name) else {
            return Vec::new();
        };
        let mut versions: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".bundle").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_by(|a, b| crate::models::compare_versions(a, b));
        versions
    }

    /// Reads and fully verifies an installed bundle.
    pub fn read(&self, name: &str, version: &str, trusted: &ReleaseKeys) -> Result<Bundle, StoreError> {
        let path = self.bundle_path(name, version)?;
        let bytes = self.bundle_bytes(name, version, &path)?;
        Ok(Bundle::open_release(&bytes, trusted)?)
    }

    /// Verifies `bytes` as a bundle signed by a trusted key and writes it to disk (a no-op when
    /// the same bytes are already there). Does not activate it.
    pub fn install(&self, bytes: &[u8], trusted: &ReleaseKeys) -> Result<Manifest, StoreError> {
        let bundle = Bundle::open_release(bytes, trusted)?;
        let manifest = bundle.manifest.clone();
        let path = self.bundle_path(&manifest.name, &manifest.version)?;
        let _lock = self.lock()?;
        match self.bundle_bytes(&manifest.name, &manifest.version, &path) {
            Ok(existing) if existing == bytes => return Ok(manifest),
            Ok(existing) => {
                // The same manifest and model with other signatures (an export signed again
                // with an offline key) is the same version: the installed file stays.
                let same = Bundle::parse(&existing)
                    .is_ok_and(|e| e.manifest_bytes == bundle.manifest_bytes && e.model == bundle.model);
                if same {
                    return Ok(manifest);
                }
                return Err(StoreError::Conflict {
                    id: manifest.id(),
                    installed: outpost_shared::bundle::sha256_hex(&existing),
                });
            }
            Err(StoreError::NotInstalled { .. }) => {}
            Err(e) => return Err(e),
        }
        let stored = self.at_rest.write(
            Store::Bundle,
            format!("{}@{}", manifest.name, manifest.version).as_bytes(),
            bytes.to_vec(),
        );
        outpost_shared::files::write_atomic(&path, &stored).map_err(self.io(&path))?;
        Ok(manifest)
    }

    /// Makes `version` the active version of `name`; returns the new state.
    pub fn activate(&self, name: &str, version: &str) -> Result<StoreState, StoreError> {
        self.activate_checked(name, version, false)
    }

    /// Like [`ModelStore::activate`], for a bundle imported from a file: refused when `version`
    /// is older than the model's release floor (and not already the active version).
    pub fn activate_imported(&self, name: &str, version: &str) -> Result<StoreState, StoreError> {
        self.activate_checked(name, version, true)
    }

    fn activate_checked(&self, name: &str, version: &str, imported: bool) -> Result<StoreState, StoreError> {
        let _lock = self.lock()?;
        if !self.bundle_path(name, version)?.is_file() {
            return Err(StoreError::NotInstalled { name: name.to_owned(), version: version.to_owned() });
        }
        let mut state = self.state()?;
        let entry = state.models.entry(name.to_owned()).or_default();
        if entry.active == version {
            return Ok(state);
        }
        if imported
            && let Some(floor) = &entry.release_floor
            && crate::models::compare_versions(version, floor).is_lt()
        {
            return Err(StoreError::OlderThanFloor {
                name: name.to_owned(),
                version: version.to_owned(),
                floor: floor.clone(),
            });
        }
        if !entry.active.is_empty() {
            let previous = std::mem::take(&mut entry.active);
            entry.history.retain(|v| *v != previous && *v != version);
            entry.history.push(previous);
        }
        entry.active = version.to_owned();
        let newer = entry
            .release_floor
            .as_deref()
            .is_none_or(|floor| crate::models::compare_versions(version, floor).is_gt());
        if newer {
            entry.release_floor = Some(version.to_owned());
        }
        // A probation belongs to the version it watched; a candidate that became the active
        // version (a blue-green switch, a promoted canary) is no longer a candidate.
        entry.probation = None;
        if entry.candidate.as_ref().is_some_and(|c| c.version == version) {
            entry.candidate = None;
        }
        state.generation += 1;
        self.write_state(&state)?;
        self.prune(name, &mut state)?;
        Ok(state)
    }

    /// Sets (or with `None` removes) `name`'s candidate; its bundle must be on disk. A no-op
    /// when the store already says so.
    pub fn set_candidate(
        &self,
        name: &str,
        candidate: Option<StoredCandidate>,
    ) -> Result<StoreState, StoreError> {
        let _lock = self.lock()?;
        if let Some(c) = &candidate
            && !self.bundle_path(name, &c.version)?.is_file()
        {
            return Err(StoreError::NotInstalled { name: name.to_owned(), version: c.version.clone() });
        }
        let mut state = self.state()?;
        let Some(entry) = state.models.get_mut(name) else {
            return match candidate {
                None => Ok(state),
                Some(_) => Err(StoreError::UnknownModel(name.to_owned())),
            };
        };
        if entry.candidate == candidate {
            return Ok(state);
        }
        entry.candidate = candidate;
        state.generation += 1;
        self.write_state(&state)?;
        Ok(state)
    }

    /// Activates `version` (like [`ModelStore::activate`]) and, when there is a version to go
    /// back to and a `policy`, puts it on probation: the running agent watches it from now.
    pub fn activate_watched(
        &self,
        name: &str,
        version: &str,
        policy: Option<WatchdogPolicy>,
        now_ms: u64,
    ) -> Result<StoreState, StoreError> {
        let before = self.state()?.models.get(name).map(|m| m.active.clone()).filter(|a| !a.is_empty());
        let mut state = self.activate(name, version)?;
        let (Some(policy), Some(previous)) = (policy, before.filter(|b| b != version)) else {
            return Ok(state);
        };
        let _lock = self.lock()?;
        if let Some(entry) = state.models.get_mut(name)
            && entry.active == version
            && entry.history.contains(&previous)
        {
            entry.probation = Some(Probation {
                version: version.to_owned(),
                previous,
                since_ms: now_ms,
                policy,
                crashes: 0,
                running: true,
            });
            self.write_state(&state)?;
        }
        Ok(state)
    }

    /// At agent start-up, before anything loads: counts a crash for every probation whose last
    /// run did not exit cleanly, switches back the versions that crashed more than their
    /// policy allows, ends expired probations, and marks the rest running.
    pub fn boot(&self, now_ms: u64) -> Result<Vec<BootAction>, StoreError> {
        let _lock = self.lock()?;
        let mut state = self.state()?;
        let mut actions = Vec::new();
        let mut changed = false;
        for (name, entry) in state.models.iter_mut() {
            let Some(mut p) = entry.probation.take() else { continue };
            changed = true;
            if p.version != entry.active {
                continue;
            }
            if p.running {
                p.crashes += 1;
                if p.crashes > p.policy.max_crashes {
                    entry.history.retain(|v| *v != p.previous && *v != p.version);
                    entry.active = p.previous.clone();
                    state.generation += 1;
                    actions.push(BootAction::RolledBack {
                        name: name.clone(),
                        from: p.version,
                        to: p.previous,
                        crashes: p.crashes,
                    });
                    continue;
                }
                actions.push(BootAction::Crashed {
                    name: name.clone(),
                    version: p.version.clone(),
                    crashes: p.crashes,
                    allowed: p.policy.max_crashes,
                });
            }
            if now_ms.saturating_sub(p.since_ms) < u64::from(p.policy.probation_secs) * 1000 {
                p.running = true;
                entry.probation = Some(p);
            }
        }
        if changed {
            self.write_state(&state)?;
        }
        Ok(actions)
    }

    /// A clean exit: probations survive, but the run is not counted as a crash.
    pub fn clean_exit(&self) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut state = self.state()?;
        let mut changed = false;
        for p in state.models.values_mut().filter_map(|m| m.probation.as_mut()) {
            changed |= std::mem::replace(&mut p.running, false);
        }
        if changed {
            self.write_state(&state)?;
        }
        Ok(())
    }

    /// Ends `name`'s probation of `version`: kept (`back = false`) or switched back to the
    /// previous version (`back = true`). A no-op if that probation is no longer current.
    pub fn end_probation(
        &self,
        name: &str,
        version: &str,
        back: bool,
    ) -> Result<Option<RolledBack>, StoreError> {
        let _lock = self.lock()?;
        let mut state = self.state()?;
        let Some(entry) = state.models.get_mut(name) else { return Ok(None) };
        let Some(p) = entry.probation.take_if(|p| p.version == version && entry.active == version) else {
            return Ok(None);
        };
        let mut result = None;
        if back {
            entry.history.retain(|v| *v != p.previous && *v != p.version);
            entry.active = p.previous.clone();
            state.generation += 1;
            result = Some(RolledBack { name: name.to_owned(), from: p.version, to: p.previous });
        }
        self.write_state(&state)?;
        Ok(result)
    }

    /// Goes back `steps` activations for `name` (or the only installed model).
    pub fn rollback(&self, name: Option<&str>, steps: usize) -> Result<RolledBack, StoreError> {
        let _lock = self.lock()?;
        let mut state = self.state()?;
        let name = match name {
            Some(name) => name.to_owned(),
            None => match state.models.keys().collect::<Vec<_>>().as_slice() {
                [only] => (*only).clone(),
                [] => return Err(StoreError::UnknownModel("(any)".into())),
                many => {
                    return Err(StoreError::Ambiguous(
                        many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    ));
                }
            },
        };
        let entry = state.models.get_mut(&name).ok_or_else(|| StoreError::UnknownModel(name.clone()))?;
        let steps = steps.max(1);
        if entry.history.len() < steps {
            return Err(StoreError::NoHistory { name, steps, available: entry.history.len() });
        }
        let to = entry.history[entry.history.len() - steps].clone();
        if !self.bundle_path(&name, &to)?.is_file() {
            return Err(StoreError::NotInstalled { name, version: to });
        }
        let from = std::mem::replace(&mut entry.active, to.clone());
        entry.history.truncate(entry.history.len() - steps);
        entry.probation = None;
        state.generation += 1;
        self.write_state(&state)?;
        Ok(RolledBack { name, from, to })
    }

    /// Points `name` back at `good` after `refused` could not serve, so a restart serves the
    /// last good version, not the refused one. A no-op if the active version moved on.
    pub fn restore(&self, name: &str, good: &str, refused: &str) -> Result<StoreState, StoreError> {
        let _lock = self.lock()?;
        let mut state = self.state()?;
        if let Some(entry) = state.models.get_mut(name)
            && entry.active == refused
        {
            entry.active = good.to_owned();
            entry.history.retain(|v| v != good && v != refused);
            entry.probation = None;
            state.generation += 1;
            self.write_state(&state)?;
        }
        Ok(state)
    }

    /// Removes bundles beyond the newest `keep` versions of the activation order.
    fn prune(&self, name: &str, state: &mut StoreState) -> Result<(), StoreError> {
        let Some(entry) = state.models.get_mut(name) else { return Ok(()) };
        let mut keep: Vec<String> = vec![entry.active.clone()];
        keep.extend(entry.candidate.as_ref().map(|c| c.version.clone()));
        for v in entry.history.iter().rev() {
            if keep.len() >= self.keep {
                break;
            }
            keep.push(v.clone());
        }
        let dropped = entry.history.len().saturating_sub(self.keep - 1);
        if dropped > 0 {
            entry.history.drain(..dropped);
            self.write_state(state)?;
        }
        for version in self.installed(name) {
            if !keep.contains(&version) && !self.is_recent_unactivated(name, &version, state) {
                let path = self.bundle_path(name, &version)?;
                std::fs::remove_file(&path).map_err(self.io(&path))?;
            }
        }
        Ok(())
    }

    /// A version installed but never activated (e.g. downloaded ahead of a switch) stays.
    fn is_recent_unactivated(&self, name: &str, version: &str, state: &StoreState) -> bool {
        let entry = &state.models[name];
        entry.active != version && !entry.history.iter().any(|v| v == version) && {
            // Only versions newer than the active one count as "ahead".
            crate::models::compare_versions(version, &entry.active).is_gt()
        }
    }
}

#[cfg(test)]
mod tests;
