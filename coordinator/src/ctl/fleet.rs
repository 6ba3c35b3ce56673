//! `outpostctl device …`, `devices`, `deploy`, `rollback`, `telemetry import`: the fleet and what it runs.

#[allow(unused_imports)]
use super::*;

/// Runs one `fleet` command against the coordinator.
pub(super) fn run(cli: &Cli, api: &Api) -> Result<(), Failure> {
    match &cli.command {
        Command::Device(DeviceCommand::Token(TokenCommand::Create { labels, ttl_secs })) => {
            let labels = parse_labels(labels)?;
            let response: TokenResponse = api.post_json(
                "/api/v1/enrolment-tokens",
                &serde_json::json!({ "labels": labels, "ttl_secs": ttl_secs }),
            )?;
            if cli.structured() {
                say!("{}", render(cli, &response));
            } else {
                say!("{}", response.token);
                eprintln!("one-time token, labels {:?}, expires {}", response.labels, response.expires_at_ms);
            }
        }
        Command::Device(DeviceCommand::Show { id }) => {
            let d: DeviceView = api.get(&format!("/api/v1/devices/{id}"))?;
            if cli.structured() {
                say!("{}", render(cli, &d));
                return Ok(());
            }
            print_device(&d);
        }
        Command::Device(DeviceCommand::Revoke { id }) => {
            let r: serde_json::Value =
                api.post_json(&format!("/api/v1/devices/{id}/revoke"), &serde_json::json!({}))?;
            if cli.structured() {
                say!("{}", render(cli, &r));
            } else {
                say!("device {id} revoked{}", revoked_serial(&r));
            }
        }
        Command::Device(DeviceCommand::Delete { id }) => {
            let r: serde_json::Value = api.delete(&format!("/api/v1/devices/{id}"))?;
            if cli.structured() {
                say!("{}", render(cli, &r));
            } else {
                say!("device {id} deleted from the fleet and revoked{}", revoked_serial(&r));
            }
        }
        Command::Device(DeviceCommand::ExportDesired { id, dir }) => {
            let sealed = api.get_bytes(&format!("/api/v1/devices/{id}/desired/sealed"))?;
            // Read (not verified: the device verifies) for the bundles it names.
            let state = outpost_shared::protocol::decode(&sealed)
                .ok()
                .and_then(|e| outpost_shared::protocol::messages::decode_coordinator(&e.body).ok());
            let Some(outpost_shared::protocol::messages::CoordinatorMessage::Desired(state)) = state else {
                return Err(Failure::Refused(
                    "the coordinator answered something that is not a desired state".into(),
                ));
            };
            let write = |path: &std::path::Path, bytes: &[u8]| {
                outpost_shared::files::write_atomic(path, bytes)
                    .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", path.display())))
            };
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::Refused(format!("cannot create {}: {e}", dir.display())))?;
            let mut shas: Vec<&str> = state.models.iter().map(|m| m.bundle_sha256.as_str()).collect();
            shas.extend(
                state.models.iter().filter_map(|m| m.candidate.as_ref().map(|c| c.bundle_sha256.as_str())),
            );
            for sha in &shas {
                let bytes = api.get_bytes(&format!("/api/v1/artifacts/{sha}"))?;
                write(&dir.join(format!("{sha}.bundle")), &bytes)?;
            }
            write(&dir.join("desired.bin"), &sealed)?;
            let models: Vec<String> =
                state.models.iter().map(|m| format!("{}@{}", m.name, m.version)).collect();
            say!(
                "desired state revision {} for {id} ({}) and {} bundle(s) written to {}; valid until {}",
                state.revision,
                if models.is_empty() { "no models".into() } else { models.join(", ") },
                shas.len(),
                dir.display(),
                crate::models::packaging::utc(state.expires_at_ms / 1000)
            );
        }
        Command::Device(DeviceCommand::Crl) => {
            let pem = api.get_bytes("/api/v1/pki/crl")?;
            say!("{}", String::from_utf8_lossy(&pem).trim_end());
        }
        Command::Rollback { name } => {
            let done: serde_json::Value =
                api.post_json(&format!("/api/v1/models/{name}/rollback"), &serde_json::json!({}))?;
            if cli.structured() {
                say!("{}", render(cli, &done));
            } else {
                say!(
                    "{name} rolled back from {} to {} on {} device(s)",
                    done["from"].as_str().unwrap_or("?"),
                    done["to"].as_str().unwrap_or("?"),
                    done["devices"].as_array().map_or(0, Vec::len)
                );
            }
        }
        Command::Devices { selector } => {
            let selector = parse_labels(selector)?;
            let mut devices: Vec<DeviceView> = api.get("/api/v1/devices")?;
            devices.retain(|d| selector.iter().all(|(k, v)| d.labels.get(k) == Some(v)));
            if cli.structured() {
                say!("{}", render(cli, &devices));
                return Ok(());
            }
            let mut table = Table::new()
                .col("DEVICE")
                .col("STATUS")
                .col("LAST SEEN")
                .num("BACKLOG")
                .num("ENVELOPES")
                .num("PREDICTIONS")
                .col("MODELS")
                .col("LABELS")
                .wide("AGENT")
                .wide("ENROLLED")
                .wide("DESIRED")
                .wide("AT REST")
                .wide("CLOCK")
                .wide("ROOT")
                .wide("KEY ID");
            for d in devices {
                let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let models: Vec<String> =
                    d.models.iter().map(|m| format!("{}@{}({})", m.name, m.version, m.state)).collect();
                let desired = d.desired.as_ref().map(|r| {
                    let models: Vec<String> =
                        r.models.iter().map(|(n, m)| format!("{n}@{}", m.version)).collect();
                    format!("{} (revision {})", models.join(","), r.revision)
                });
                table.row(vec![
                    d.id.clone(),
                    d.status.clone(),
                    ago(d.last_seen_ms),
                    d.backlog.messages.to_string(),
                    d.counts.envelopes.to_string(),
                    d.counts.predictions.to_string(),
                    if models.is_empty() { "-".into() } else { models.join(",") },
                    if labels.is_empty() { "-".into() } else { labels.join(",") },
                    d.agent_version.clone().unwrap_or_else(|| "-".into()),
                    crate::models::packaging::utc(d.enrolled_at_ms / 1000),
                    desired.unwrap_or_else(|| "-".into()),
                    d.at_rest
                        .as_deref()
                        .map_or("-", |s| if s.starts_with("on") { "encrypted" } else { "off" })
                        .into(),
                    d.clock_skew_ms.map_or_else(|| "-".into(), skew),
                    d.root_version.map_or_else(|| "-".into(), |v| v.to_string()),
                    d.key_id.clone(),
                ]);
            }
            table.print(cli.wide());
        }
        Command::Deploy { target, selector, devices, canary, standby, shadow } => {
            let (name, version) = split_target(target)?;
            let selector = parse_labels(selector)?;
            let slot = match (canary, standby) {
                (Some(percent), _) => serde_json::json!({"canary": {"percent": percent}}),
                (None, true) => serde_json::json!("standby"),
                (None, false) if *shadow => serde_json::json!("shadow"),
                (None, false) => serde_json::Value::Null,
            };
            let response: serde_json::Value = api.post_json(
                "/api/v1/deployments",
                &serde_json::json!({"model": name, "version": version, "selector": selector, "devices": devices, "slot": slot}),
            )?;
            if cli.structured() {
                say!("{}", render(cli, &response));
            } else {
                let targets: Vec<&str> = response["devices"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d.as_str()).collect())
                    .unwrap_or_default();
                say!(
                    "{name}@{version} deployed to {} device(s): {} (stage {})",
                    targets.len(),
                    targets.join(", "),
                    response["stage"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Telemetry(TelemetryCommand::Import { file, ack_out }) => {
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            eprintln!("importing {} ({} bytes)…", file.display(), bytes.len());
            let report: ImportReport = api.post_bytes("/api/v1/telemetry/import", &bytes)?;
            let ack = hex::decode(&report.ack_file)
                .map_err(|e| Failure::Refused(format!("coordinator sent an unreadable ack file: {e}")))?;
            outpost_shared::files::write_atomic(ack_out, &ack)
                .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", ack_out.display())))?;
            if cli.structured() {
                let summary = serde_json::json!({
                    "device": report.device, "envelopes": report.envelopes, "stored": report.stored,
                    "duplicates": report.duplicates, "rejected": report.rejected,
                });
                say!("{}", render(cli, &summary));
            } else {
                say!(
                    "device {}: {} envelopes, {} stored, {} already stored, rejected {:?}; ack file written to {}",
                    report.device.as_deref().unwrap_or("-"),
                    report.envelopes,
                    report.stored,
                    report.duplicates,
                    report.rejected,
                    ack_out.display()
                );
            }
        }
        _ => return Err(Failure::Usage(format!("not a fleet command: {:?}", cli.command))),
    }
    Ok(())
}

/// A device clock's skew in words: `in step`, `86400 s behind`, `3 s ahead`.
fn skew(ms: i64) -> String {
    let secs = (ms.abs() + 500) / 1000;
    match ms {
        -999..=999 => "in step".into(),
        ms if ms > 0 => format!("{secs} s behind"),
        _ => format!("{secs} s ahead"),
    }
}

/// The human view of `device show`.
pub(super) fn print_device(d: &DeviceView) {
    let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    say!("device   {} ({}, last seen {})", d.id, d.status, ago(d.last_seen_ms));
    say!("labels   {}", if labels.is_empty() { "-".into() } else { labels.join(",") });
    say!("agent    {}", d.agent_version.as_deref().unwrap_or("-"));
    say!("at rest  {}", d.at_rest.as_deref().unwrap_or("-"));
    if let Some(ms) = d.clock_skew_ms {
        say!("clock    {}", skew(ms));
    }
    if let Some(version) = d.root_version {
        say!("root     trust root version {version}");
    }
    if let Some(s) = &d.control_stale {
        say!(
            "control  STALE: desired state revision {} expired {} and nothing newer arrived",
            s.revision,
            ago(Some(s.expired_at_ms))
        );
    }
    say!("backlog  {} messages, {} bytes", d.backlog.messages, d.backlog.bytes);
    for m in &d.models {
        let reason = m.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        say!("model    {}@{} {} ({}){reason}", m.name, m.version, m.state, m.slot);
    }
    for e in &d.recent_events {
        say!("event    {} {}: {}", ago(Some(e.at_ms)), e.kind.name(), e.message);
    }
    if d.drift.is_empty() {
        say!("drift    no verdicts yet (bundles with a baseline report them once traffic flows)");
    }
    for m in &d.drift {
        say!(
            "drift    {}@{} over {} rows ({} seen), computed {}",
            m.model,
            m.version,
            m.window_rows,
            m.rows_seen,
            ago(d.drift_at_ms)
        );
        let mut table = Table::new().col("FEATURE").col("TEST").num("SCORE").num("THRESHOLD").col("VERDICT");
        for f in m.features.iter().chain(&m.prediction) {
            table.row(vec![
                f.feature.clone(),
                f.test.as_str().to_owned(),
                crate::base::numbers::p_value(f.score),
                crate::base::numbers::p_value(f.threshold),
                if f.drifted { "DRIFT".into() } else { "ok".into() },
            ]);
        }
        for line in table.lines(false) {
            say!("  {line}");
        }
    }
}

/// `; certificate <serial> is in the revocation list`, or nothing when none was recorded.
fn revoked_serial(revocation: &serde_json::Value) -> String {
    match revocation["cert_serial"].as_str() {
        Some(serial) => format!("; certificate {serial} is in the revocation list (`outpostctl device crl`)"),
        None => String::new(),
    }
}
