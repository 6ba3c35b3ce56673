//! `outpostctl token …`, `audit …` and `cluster status`: API tokens, the audit log, and the
//! coordinator's replicas and leaders.

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
            if cli.structured() {
                say!("{}", render(cli, &tokens));
                return Ok(());
            }
            let mut table =
                Table::new().col("NAME").col("ROLE").col("EXPIRES").col("CREATED BY").wide("CREATED AT");
            for t in tokens {
                let text = |key: &str| t[key].as_str().unwrap_or("?").to_owned();
                table.row(vec![
                    text("name"),
                    text("role"),
                    expiry(t["expires_at_ms"].as_u64()),
                    text("created_by"),
                    t["created_at_ms"]
                        .as_u64()
                        .map_or("-".into(), |ms| crate::models::packaging::utc(ms / 1000)),
                ]);
            }
            table.print(cli.wide());
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
            if cli.structured() {
                say!("{}", render(cli, &entries));
            } else {
                // Fields come from outside (a model name in a URL, a device id asked for): the
                // table shows control characters escaped, so none can draw a fake line.
                let mut table = Table::new()
                    .num("SEQ")
                    .col("AT")
                    .col("ACTOR")
                    .col("ROLE")
                    .col("ACTION")
                    .col("TARGET")
                    .col("OUTCOME")
                    .col("DETAIL")
                    .wide("HASH");
                for e in entries {
                    let field = |key: &str| e[key].as_str().unwrap_or("").to_owned();
                    table.row(vec![
                        e["seq"].to_string(),
                        crate::models::packaging::utc(e["at_ms"].as_u64().unwrap_or(0) / 1000),
                        field("actor"),
                        field("role"),
                        field("action"),
                        field("target"),
                        field("outcome"),
                        field("detail"),
                        field("hash"),
                    ]);
                }
                table.print(cli.wide());
            }
        }
        Command::Cluster(ClusterCommand::Status) => cluster_status(cli, api)?,
        _ => return Err(Failure::Usage(format!("not an admin command: {:?}", cli.command))),
    }
    Ok(())
}

/// `outpostctl cluster status`: replicas with their last heartbeat, then each engine's lease —
/// its holder (the leader) and term.
fn cluster_status(cli: &Cli, api: &Api) -> Result<(), Failure> {
    let status: serde_json::Value = api.get("/api/v1/cluster")?;
    if cli.structured() {
        say!("{}", render(cli, &status));
        return Ok(());
    }
    if status["store"] == "sled" {
        say!("one coordinator on sled (store.url = \"sled\"): no replicas, every engine runs in it");
        return Ok(());
    }
    let seconds = |ms: &serde_json::Value| format!("{:.1}s", ms.as_i64().unwrap_or(0) as f64 / 1000.0);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let empty = Vec::new();
    let mut replicas =
        Table::new().col("REPLICA").col("VERSION").col("SCHEMA").col("HEARTBEAT").wide("STARTED");
    for r in status["replicas"].as_array().unwrap_or(&empty) {
        replicas.row(vec![
            text(&r["id"]),
            text(&r["version"]),
            r["schema"].to_string(),
            format!("{} ago", seconds(&r["heartbeat_age_ms"])),
            crate::models::packaging::utc(r["started_at_ms"].as_u64().unwrap_or(0) / 1000),
        ]);
    }
    replicas.print(cli.wide());
    say!("");
    let mut leases = Table::new().col("ENGINE").col("LEADER").col("TERM").col("EXPIRES").wide("SINCE");
    for l in status["leases"].as_array().unwrap_or(&empty) {
        let left = l["expires_in_ms"].as_i64().unwrap_or(0);
        leases.row(vec![
            text(&l["engine"]),
            text(&l["holder"]),
            l["term"].to_string(),
            if left >= 0 {
                format!("in {}", seconds(&l["expires_in_ms"]))
            } else {
                format!("{} ago (no leader)", seconds(&serde_json::json!(-left)))
            },
            crate::models::packaging::utc(l["acquired_at_ms"].as_u64().unwrap_or(0) / 1000),
        ]);
    }
    leases.print(cli.wide());
    Ok(())
}

/// `never`, `2027-03-05T10:00:00Z`, or `2026-12-01T10:00:00Z (expired)`.
fn expiry(at_ms: Option<u64>) -> String {
    let utc = |ms: u64| crate::models::packaging::utc(ms / 1000);
    match at_ms {
        None => "never".into(),
        Some(ms) if ms <= crate::base::store::now_ms() => format!("{} (expired)", utc(ms)),
        Some(ms) => utc(ms),
    }
}
