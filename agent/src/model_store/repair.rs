//! Damage found at start ([`ModelStore::repair`]): a `state.json` restored from its copy,
//! bundle files that no longer verify moved to `models/quarantine/`, and each model whose active
//! version went with them moved to the newest earlier version that still verifies.

use std::collections::BTreeMap;
use std::path::Path;

use outpost_shared::bundle::{Bundle, ReleaseKeys};

use super::{ModelStore, StoreError, StoreState};

/// What [`ModelStore::repair`] did about damage found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// `state.json` did not read; it was moved aside and restored from `state.json.bak`
    /// (`restored`), or, with that damaged too, the store starts empty.
    StateReplaced { why: String, restored: bool },
    /// A bundle file no longer verifies (flipped bytes, a truncated file): moved aside.
    BundleQuarantined { name: String, version: String, why: String },
    /// The active version's bundle was quarantined: `to` is active instead (`None`: no earlier
    /// version verifies, so the model waits for a good bundle).
    Fallback { name: String, from: String, to: Option<String> },
}

impl Repair {
    /// One line for the log, an event and the coordinator.
    pub fn describe(&self) -> String {
        match self {
            Repair::StateReplaced { why, restored: true } => {
                format!("model store state.json was damaged ({why}); restored from state.json.bak")
            }
            Repair::StateReplaced { why, restored: false } => format!(
                "model store state.json and its copy were damaged ({why}); the store starts empty and \
                 bundle-managed models wait for their next desired state or import"
            ),
            Repair::BundleQuarantined { name, version, why } => {
                format!("bundle {name}@{version} no longer verifies ({why}); moved to models/quarantine/")
            }
            Repair::Fallback { name, from, to: Some(to) } => {
                format!(
                    "{name}: active {from} was quarantined; serving {to}, the newest earlier version that verifies"
                )
            }
            Repair::Fallback { name, from, to: None } => {
                format!(
                    "{name}: active {from} was quarantined and no earlier version verifies; not served until a good bundle arrives"
                )
            }
        }
    }
}

impl ModelStore {
    /// At agent start, before anything loads: restores a damaged `state.json` from its copy,
    /// quarantines every bundle file that no longer verifies against `trusted`, and moves each
    /// model whose active (or candidate) version went with it to the newest earlier version
    /// that verifies. Returns what it did (nothing on a healthy store).
    pub fn repair(&self, trusted: &ReleaseKeys) -> Result<Vec<Repair>, StoreError> {
        let _lock = self.lock()?;
        let mut repairs = Vec::new();
        let aside = self.dir.join("quarantine");
        let mut state = match self.state() {
            Ok(state) => state,
            Err(StoreError::Corrupt { detail, .. }) => {
                let parse = |path: &Path| -> Option<StoreState> {
                    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
                };
                crate::damage::move_aside(&self.state_path(), &aside).map_err(self.io(&self.state_path()))?;
                let restored = parse(&self.backup_path());
                if restored.is_none() && self.backup_path().exists() {
                    crate::damage::move_aside(&self.backup_path(), &aside)
                        .map_err(self.io(&self.backup_path()))?;
                }
                repairs.push(Repair::StateReplaced { why: detail, restored: restored.is_some() });
                let mut state = restored.unwrap_or_default();
                state.generation += 1;
                self.write_state(&state)?;
                state
            }
            Err(e) => return Err(e),
        };
        // Every bundle on disk, verified; the damaged ones moved aside.
        let mut lost: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let names: Vec<String> = std::fs::read_dir(self.dir.join("bundles"))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        for name in names {
            for version in self.installed(&name) {
                let path = self.bundle_path(&name, &version)?;
                let why = match self.bundle_bytes(&name, &version, &path) {
                    Ok(bytes) => match Bundle::open_release(&bytes, trusted) {
                        Ok(_) => continue,
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                crate::damage::move_aside(&path, &aside.join(&name)).map_err(self.io(&path))?;
                repairs.push(Repair::BundleQuarantined { name: name.clone(), version: version.clone(), why });
                lost.entry(name.clone()).or_default().push(version);
            }
        }
        let mut changed = false;
        for (name, versions) in &lost {
            let Some(entry) = state.models.get_mut(name) else { continue };
            let on_disk = self.installed(name);
            entry.history.retain(|v| !versions.contains(v) && on_disk.contains(v));
            if entry.candidate.as_ref().is_some_and(|c| versions.contains(&c.version)) {
                entry.candidate = None;
                changed = true;
            }
            if versions.contains(&entry.active) {
                let from = std::mem::take(&mut entry.active);
                entry.probation = None;
                let to = entry.history.pop();
                repairs.push(Repair::Fallback { name: name.clone(), from, to: to.clone() });
                match to {
                    Some(to) => entry.active = to,
                    None => {
                        state.models.remove(name);
                    }
                }
                changed = true;
            }
        }
        if changed {
            state.generation += 1;
            self.write_state(&state)?;
        }
        Ok(repairs)
    }
}
