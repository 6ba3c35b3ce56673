//! `outpost-agent keys`: the keyring of encryption at rest.
use super::*;
use crate::at_rest::{self, KeySource};

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(ExitStatus::Usage)
}

/// `42s ago`, `5m ago`, `3h ago`, `12d ago`.
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

pub fn run(command: &KeysCommand) -> ExitCode {
    let data = match command {
        KeysCommand::Status(data) | KeysCommand::Rotate(data) => data,
        KeysCommand::Rewrap(args) => &args.data,
    };
    let config = match data.load() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (dir, encryption) = (&config.data_dir, &config.encryption);
    let source = match encryption.source(dir) {
        Ok(source) => source,
        Err(e) => return fail(e),
    };
    match command {
        KeysCommand::Status(_) => {
            let mode = match encryption.mode {
                at_rest::Mode::On => "on",
                at_rest::Mode::Off => "off",
            };
            println!("encryption  {mode} ({})", at_rest::CIPHER);
            println!("key source  {source}");
            match at_rest::status(dir) {
                Ok(Some(status)) => {
                    println!(
                        "keyring     {} (key fingerprint {})",
                        dir.join("keyring.json").display(),
                        status.kek_fingerprint
                    );
                    println!("{:<10} {:<12} CURRENT", "DATA KEY", "CREATED");
                    let now = outpost_shared::endpoints::now_ms();
                    for key in status.keys {
                        let created = ago(now.saturating_sub(key.created_ms) / 1000);
                        println!("{:08x}   {created:<12} {}", key.id, if key.current { "yes" } else { "" });
                    }
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    println!("keyring     none yet (made when the agent first starts with encryption on)");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::Rotate(_) => match at_rest::rotate(dir, encryption) {
            Ok((before, after)) => {
                println!(
                    "new data key {after:08x} (was {before:08x}); a serving agent uses it from its next start; \
                     records sealed with older keys stay readable until evicted"
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        KeysCommand::Rewrap(args) => {
            let to: KeySource = match at_rest::parse_source(&args.to) {
                Ok(to) => to,
                Err(e) => return fail(e),
            };
            match at_rest::rewrap(dir, encryption, &to) {
                Ok(fingerprint) => {
                    println!(
                        "every data key is now wrapped by the key from {to} (fingerprint {fingerprint}); \
                         before the agent's next start, point `[encryption] key` at where that key will come from"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}
