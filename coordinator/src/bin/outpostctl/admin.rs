//! `outpostctl token …` and `audit …`: API tokens and the audit log.

#[allow(unused_imports)]
use super::*;

/// Runs one `admin` command against the coordinator.
pub(super) fn run(cli: &Cli, api: &Api) -> Result<(), Failure> {
    match &cli.command {
        Command::Token(ApiTokenCommand::Create { name, role, expires }) => {
            let response: serde_json::Value = api.post_json(
                "/api/v1/tokens",
                &serde_json::json!({"name": name, "role": role, "expires": expires}),
            )?;
            say!("{}", response["token"].as_str().unwrap_or_default());
            eprintln!(
                "token `{name}` with role {role}, expires: {}; it is shown only this once",
                expiry(response["expires_at_ms"].as_u64())
            );
        }
        Command::Token(ApiTokenCommand::List) => {
            let tokens: Vec<serde_json::Value> = api.get("/api/v1/tokens")?;
            say!("{:<24} {:<9} {:<36} CREATED BY", "NAME", "ROLE", "EXPIRES");
            for t in tokens {
                say!(
                    "{:<24} {:<9} {:<36} {}",
                    t["name"].as_str().unwrap_or("?"),
                    t["role"].as_str().unwrap_or("?"),
                    expiry(t["expires_at_ms"].as_u64()),
                    t["created_by"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Token(ApiTokenCommand::Revoke { name }) => {
            let _: serde_json::Value = api.delete(&format!("/api/v1/tokens/{name}"))?;
            say!("token `{name}` revoked");
        }
        Command::Audit(AuditCommand::Verify) => {
            let verdict: serde_json::Value = api.get("/api/v1/audit/verify")?;
            if verdict["ok"].as_bool() == Some(true) {
                say!("audit log intact: {} entries, hash chain verified", verdict["entries"]);
            } else {
                return Err(Failure::Refused(format!(
                    "audit log does not verify: {}",
                    verdict["problem"].as_str().unwrap_or("unknown problem")
                )));
            }
        }
        Command::Audit(AuditCommand::List { limit }) => {
            let entries: Vec<serde_json::Value> = api.get(&format!("/api/v1/audit?limit={limit}"))?;
            if cli.json() {
                say!("{}", serde_json::to_string_pretty(&entries).unwrap_or_default());
            } else {
                // Fields come from outside (a model name in a URL, a device id asked for):
                // control characters are shown escaped, so none can draw a fake line.
                let field = |e: &serde_json::Value, key: &str| printable(e[key].as_str().unwrap_or(""));
                for e in entries {
                    say!(
                        "{:>5} {} {:<10} {:<9} {:<22} {:<28} {:<8} {}",
                        e["seq"],
                        outpost_coordinator::models::packaging::utc(e["at_ms"].as_u64().unwrap_or(0) / 1000),
                        field(&e, "actor"),
                        field(&e, "role"),
                        field(&e, "action"),
                        field(&e, "target"),
                        field(&e, "outcome"),
                        field(&e, "detail")
                    );
                }
            }
        }
        _ => return Err(Failure::Usage(format!("not a admin command: {:?}", cli.command))),
    }
    Ok(())
}

/// `text` with control characters escaped (`\u{1b}`, `\n`): safe to print on a terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// `never`, `2027-03-05T10:00:00Z`, or `2026-12-01T10:00:00Z (expired)`.
fn expiry(at_ms: Option<u64>) -> String {
    let utc = |ms: u64| outpost_coordinator::models::packaging::utc(ms / 1000);
    match at_ms {
        None => "never".into(),
        Some(ms) if ms <= outpost_coordinator::base::store::now_ms() => format!("{} (expired)", utc(ms)),
        Some(ms) => utc(ms),
    }
}
