//! The offline bundle commands: import and local rollback.
use super::*;
use crate::model_store::{ModelStore, StoreError};
use outpost_shared::bundle::Bundle;

fn fail(message: impl std::fmt::Display, status: ExitStatus) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(status)
}

fn load(config: Option<&std::path::Path>, data_dir: Option<&PathBuf>) -> Result<Config, ExitCode> {
    let mut config = Config::load(config).map_err(|e| fail(e, ExitStatus::Usage))?;
    if let Some(dir) = data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

/// The device's trust ([`crate::trust_root`]): its root's release keys, or the configured ones.
fn trust(config: &Config) -> Result<crate::trust_root::Trust, ExitCode> {
    let configured = config.registry.keys().map_err(|e| fail(e, ExitStatus::Usage))?;
    let enrolled =
        crate::identity::enrolled_key(&config.data_dir).map_err(|e| fail(e, ExitStatus::Failure))?;
    let keys = config.registry.load_bundle_keys().map_err(|e| fail(e, ExitStatus::Usage))?;
    let trust = crate::trust_root::Trust::open(&crate::identity::dir(&config.data_dir), enrolled, configured)
        .map_err(|e| fail(e, ExitStatus::Usage))?
        .with_bundle_keys(keys);
    if !trust.has_release_keys() {
        return Err(fail(
            "no trusted keys: set registry.trusted_keys in the agent configuration (or enrol: the trust root names them)",
            ExitStatus::Usage,
        ));
    }
    Ok(trust)
}

pub fn import(args: &ImportArgs) -> ExitCode {
    let config = match load(args.config.as_deref(), args.data_dir.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let trust = match trust(&config) {
        Ok(trust) => trust,
        Err(code) => return code,
    };
    let trusted = trust.release();
    let bytes = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(e) => return fail(format!("cannot read {}: {e}", args.file.display()), ExitStatus::Usage),
    };
    let bundle = match Bundle::open_release(&bytes, &trusted) {
        Ok(bundle) => bundle,
        Err(e) => return fail(format!("{} refused: {e}", args.file.display()), ExitStatus::ModelInvalid),
    };
    let id = bundle.manifest.id();
    let mut clear = bundle.clone();
    if let Err(e) = clear.decrypt(trust.bundle_keys()) {
        return fail(format!("{} refused: {e}", args.file.display()), ExitStatus::ModelInvalid);
    }
    // The same checks a serving agent makes before a version may serve, made here first.
    let validated = match crate::models::load_bundle(&clear, Default::default(), &Default::default()) {
        Ok(validated) => validated,
        Err(e) => return fail(format!("{id} refused: {}", e.reason), ExitStatus::ModelInvalid),
    };
    let at_rest = match crate::at_rest::for_config(&config.data_dir, &config.encryption) {
        Ok(at_rest) => at_rest,
        Err(e) => return fail(e, ExitStatus::Usage),
    };
    let store = ModelStore::new(&config.data_dir, config.registry.keep_versions, &at_rest);
    if let Err(e) = store.install(&bytes, &trusted) {
        let code = if matches!(e, StoreError::Conflict { .. }) {
            ExitStatus::ModelInvalid
        } else {
            ExitStatus::Failure
        };
        return fail(e, code);
    }
    println!("installed {id} ({})", validated.evidence);
    if args.activate {
        let before =
            store.state().ok().and_then(|s| s.models.get(&bundle.manifest.name).map(|m| m.active.clone()));
        match store.activate_imported(&bundle.manifest.name, &bundle.manifest.version) {
            Ok(_) => {}
            Err(e @ StoreError::OlderThanFloor { .. }) => return fail(e, ExitStatus::ModelInvalid),
            Err(e) => return fail(e, ExitStatus::Failure),
        }
        match before.filter(|b| !b.is_empty()) {
            Some(before) => println!("activated {id} (was {before})"),
            None => println!("activated {id}"),
        }
    }
    ExitCode::SUCCESS
}

pub fn import_desired(args: &ImportDesiredArgs) -> ExitCode {
    use crate::desired::{DesiredApplier, DesiredError, Fetch};
    let (config, at_rest) = match args.data.at_rest() {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let identity = match crate::identity::Identity::load_or_create(&config.data_dir) {
        Ok(identity) => identity,
        Err(e) => return fail(e, ExitStatus::Failure),
    };
    let enrolment = match identity.enrolment() {
        Ok(Some(enrolment)) => enrolment,
        Ok(None) => {
            return fail(
                "this device is not enrolled: its coordinator key comes with enrolment",
                ExitStatus::Usage,
            );
        }
        Err(e) => return fail(e, ExitStatus::Failure),
    };
    let trust = match trust(&config) {
        Ok(trust) => std::sync::Arc::new(trust),
        Err(code) => return code,
    };
    let payload = match std::fs::read(args.dir.join("desired.bin")) {
        Ok(payload) => payload,
        Err(e) => {
            return fail(
                format!("cannot read {}: {e}", args.dir.join("desired.bin").display()),
                ExitStatus::Usage,
            );
        }
    };
    let clock = std::sync::Arc::new(crate::trusted_time::TrustedClock::open(&config.data_dir));
    let applier = DesiredApplier {
        device_id: enrolment.device_id.clone(),
        trust: std::sync::Arc::clone(&trust),
        store: ModelStore::new(&config.data_dir, config.registry.keep_versions, &at_rest),
        fetch: Fetch::offline(Some(args.dir.clone())),
        reporter: None,
        metrics: match crate::metrics::Metrics::new() {
            Ok(metrics) => std::sync::Arc::new(metrics),
            Err(e) => return fail(e, ExitStatus::Failure),
        },
        clock: std::sync::Arc::clone(&clock),
    };
    let outcome = applier.open(&payload).and_then(|state| applier.apply(&state).map(|done| (state, done)));
    if let Err(e) = clock.persist() {
        eprintln!("warning: cannot keep the trusted time on disk: {e}");
    }
    match outcome {
        Ok((state, done)) => {
            let what = if done.is_empty() { "nothing to change".to_owned() } else { done.join(", ") };
            println!("desired state revision {} applied: {what}", state.revision);
            ExitCode::SUCCESS
        }
        // The rules a replayed, expired, forged or foreign state breaks: refused (exit 3).
        Err(
            e @ (DesiredError::Stale { .. }
            | DesiredError::Expired { .. }
            | DesiredError::Signature(_)
            | DesiredError::OtherDevice(_)
            | DesiredError::Refused(_)),
        ) => fail(format!("{} refused: {e}", args.dir.display()), ExitStatus::ModelInvalid),
        Err(e) => fail(e, ExitStatus::Failure),
    }
}

pub fn rollback(args: &RollbackArgs) -> ExitCode {
    let config = match load(args.config.as_deref(), args.data_dir.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // A rollback moves the active version only; it reads no bundle bytes.
    let store = ModelStore::new(&config.data_dir, config.registry.keep_versions, &Default::default());
    match store.rollback(args.model.as_deref(), args.steps as usize) {
        Ok(done) => {
            println!("model {}: {} -> {}", done.name, done.from, done.to);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e, ExitStatus::Failure),
    }
}
