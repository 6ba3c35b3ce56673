//! The commands that need no coordinator: `bundle build/inspect/…` and `key …`.

#[allow(unused_imports)]
use super::*;

/// The commands that need no coordinator.
pub(super) fn run_offline(command: &Command) -> Option<Result<(), Failure>> {
    use crate::models::packaging;
    use outpost_shared::bundle::Bundle;
    let invalid = |e: packaging::PackagingError| Failure::Refused(e.to_string());
    let write = |path: &PathBuf, bytes: &[u8]| {
        outpost_shared::files::write_atomic(path, bytes)
            .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))
    };
    let result = match command {
        Command::Key(KeyCommand::Generate { out }) => {
            packaging::generate_key(out).map_err(invalid).map(|key| {
                say!("{}", hex::encode(key.public_key().as_bytes()));
                eprintln!(
                    "key {} written to {} (mode 0600); the line above is its public key",
                    key.key_id(),
                    out.display()
                );
            })
        }
        Command::Root(roots::RootCommand::Sign { file, key, out }) => roots::sign(file, key, out.as_ref()),
        Command::Key(KeyCommand::Show { file }) => packaging::read_key(file).map_err(invalid).map(|key| {
            say!("{}", hex::encode(key.public_key().as_bytes()));
            eprintln!("key id {}", key.key_id());
        }),
        Command::Bundle(BundleCommand::Encrypt { file, key, out }) => (|| {
            let key = load_bundle_key(key)?;
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let bundle =
                Bundle::parse(&bytes).map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            bundle.verify_model().map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            let dropped = bundle.signatures.len();
            let bundle = bundle.encrypt(&key).map_err(|e| Failure::Refused(e.to_string()))?;
            let out = out.as_ref().unwrap_or(file);
            write(out, &bundle.to_bytes())?;
            say!(
                "{} encrypted to bundle key {} → {}",
                bundle.manifest.id(),
                outpost_shared::bundle::bundle_key_id(&key),
                out.display()
            );
            if dropped > 0 {
                eprintln!(
                    "{dropped} signature(s) covered the clear manifest and were dropped: sign it again"
                );
            }
            Ok(())
        })(),
        Command::Bundle(BundleCommand::Create(args)) => (|| {
            let key = args.key.as_deref().map(packaging::read_key).transpose().map_err(invalid)?;
            let (mut bundle, evidence) = args.build.bundle()?;
            if let Some(key) = &key {
                bundle.sign(key).map_err(|e| Failure::Refused(e.to_string()))?;
            }
            let bytes = bundle.to_bytes();
            write(&args.out, &bytes)?;
            say!(
                "{} written to {} ({} bytes, {}); model {}",
                bundle.manifest.id(),
                args.out.display(),
                bytes.len(),
                key.map_or("unsigned".to_owned(), |k| format!("signed by key {}", k.key_id())),
                evidence
            );
            Ok(())
        })(),
        Command::Bundle(BundleCommand::Sign { file, key, out }) => (|| {
            let key = packaging::read_key(key).map_err(invalid)?;
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let mut bundle =
                Bundle::parse(&bytes).map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            bundle.verify_model().map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            bundle.sign(&key).map_err(|e| Failure::Refused(e.to_string()))?;
            let out = out.as_ref().unwrap_or(file);
            write(out, &bundle.to_bytes())?;
            say!(
                "{} signed by key {} ({} signatures) → {}",
                bundle.manifest.id(),
                key.key_id(),
                bundle.signatures.len(),
                out.display()
            );
            Ok(())
        })(),
        Command::Bundle(BundleCommand::Inspect { file, trust }) => (|| {
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let bundle =
                Bundle::parse(&bytes).map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            let mut text = packaging::describe(&bundle);
            let mut failed = Vec::new();
            match bundle.verify_model() {
                Ok(()) => text.push_str("check       model sha256 matches the manifest\n"),
                Err(e) => failed.push(e.to_string()),
            }
            let keys = trust
                .iter()
                .map(|t| {
                    hex::decode(t.trim())
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            outpost_shared::protocol::keys::PublicKey::from_bytes(&b)
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|e| {
                            Failure::Usage(format!("--trust `{t}` is not an Ed25519 public key in hex: {e}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !keys.is_empty() {
                match bundle.verify_signature(&keys) {
                    Ok(key_id) => {
                        text.push_str(&format!("check       signature by trusted key {key_id} verifies\n"))
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            if failed.is_empty() { Ok(()) } else { Err(Failure::Refused(failed.join("; "))) }
        })(),
        _ => return None,
    };
    Some(result)
}
