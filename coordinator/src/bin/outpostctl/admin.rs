//! `outpostctl token …` and `audit …`: API tokens and the audit log.

#[allow(unused_imports)]
use super::*;

/// Runs one `admin` command against the coordinator.
pub(super) fn run(cli: &Cli, api: &Api) -> Result<(), Failure> {
    match &cli.command {
        Command::Token(ApiTokenCommand::Create { name, role }) => {
            let response: serde_json::Value =
                api.post_json("/api/v1/tokens", &serde_json::json!({"name": name, "role": role}))?;
            say!("{}", response["token"].as_str().unwrap_or_default());
            eprintln!("token `{name}` with role {role}; it is shown only this once");
        }
        Command::Token(ApiTokenCommand::List) => {
            let tokens: Vec<serde_json::Value> = api.get("/api/v1/tokens")?;
            for t in tokens {
                say!(
                    "{:<24} {:<9} created by {}",
                    t["name"].as_str().unwrap_or("?"),
                    t["role"].as_str().unwrap_or("?"),
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
            if cli.json {
                say!("{}", serde_json::to_string_pretty(&entries).unwrap_or_default());
            } else {
                for e in entries {
                    say!(
                        "{:>5} {} {:<10} {:<9} {:<22} {:<28} {:<8} {}",
                        e["seq"],
                        outpost_coordinator::models::packaging::utc(e["at_ms"].as_u64().unwrap_or(0) / 1000),
                        e["actor"].as_str().unwrap_or(""),
                        e["role"].as_str().unwrap_or(""),
                        e["action"].as_str().unwrap_or(""),
                        e["target"].as_str().unwrap_or(""),
                        e["outcome"].as_str().unwrap_or(""),
                        e["detail"].as_str().unwrap_or("")
                    );
                }
            }
        }
        _ => return Err(Failure::Usage(format!("not a admin command: {:?}", cli.command))),
    }
    Ok(())
}
