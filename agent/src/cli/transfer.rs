//! The offline commands: enrolment and the air-gap file transfers.
use super::*;
use crate::identity::Identity;
use crate::outbox::Outbox;
use outpost_shared::protocol::messages::{self, CoordinatorMessage};
use outpost_shared::protocol::transfer::{self as files, TransferFile};

fn fail(message: impl std::fmt::Display, status: ExitStatus) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(status)
}

pub fn enroll(args: &EnrollArgs) -> ExitCode {
    let data_dir = match args.data.resolve() {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    // The identity (keys, certificates) is the owner's only, like everything `serve` writes.
    if let Err(e) = outpost_shared::files::keep_private(&data_dir) {
        return fail(format!("cannot create {}: {e}", data_dir.display()), ExitStatus::Failure);
    }
    let identity = match Identity::load_or_create(&data_dir) {
        Ok(identity) => identity,
        Err(e) => return fail(e, ExitStatus::Failure),
    };
    // The default storage key is made with the identity, so a copy of the identity folder
    // (a Kubernetes Secret, mounted read-only) carries it.
    if let Ok(config) = args.data.load()
        && config.encryption.mode == crate::at_rest::Mode::On
        && config.encryption.key.is_none()
    {
        let source = crate::at_rest::default_source(&data_dir);
        let existed = matches!(&source, crate::at_rest::KeySource::File(p) if p.exists());
        if let Err(e) = crate::at_rest::Kek::load(&source, true) {
            return fail(e, ExitStatus::Failure);
        }
        if !existed {
            eprintln!("note: {}", crate::at_rest::made_key_file_note(&source.to_string()));
        }
    }
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(token) => token,
            Err(e) => return fail(format!("cannot read {}: {e}", path.display()), ExitStatus::Usage),
        },
        (None, None) => return fail("pass --token or --token-file", ExitStatus::Usage),
    };
    let ca = match &args.ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => return fail(format!("cannot read {}: {e}", path.display()), ExitStatus::Usage),
        },
        None => None,
    };
    match identity.enrol(&args.coordinator, &token, ca.as_deref()) {
        Ok(enrolment) => {
            println!("{}", enrolment.device_id);
            eprintln!(
                "enrolled as {} with labels {:?}; broker {}",
                enrolment.device_id, enrolment.labels, enrolment.broker_url
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e, ExitStatus::Failure),
    }
}

fn open(data: &DataDirArgs) -> Result<(Identity, Outbox), ExitCode> {
    let (config, at_rest) = data.at_rest()?;
    let data_dir = config.data_dir;
    let identity = Identity::load_or_create(&data_dir).map_err(|e| fail(e, ExitStatus::Failure))?;
    // The bound only matters when appending; these commands never append.
    let outbox = Outbox::open(&data_dir, u64::MAX, &at_rest).map_err(|e| fail(e, ExitStatus::Failure))?;
    Ok((identity, outbox))
}

pub fn export(args: &TransferArgs) -> ExitCode {
    let (identity, outbox) = match open(&args.data) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let device = match identity.enrolment() {
        Ok(Some(enrolment)) => enrolment.device_id,
        Ok(None) => identity.device_id.clone(),
        Err(e) => return fail(e, ExitStatus::Failure),
    };
    let mut envelopes = Vec::new();
    let mut after = None;
    loop {
        match outbox.pending_after(after, 1024) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                after = batch.last().map(|(seq, _)| *seq);
                envelopes.extend(batch.into_iter().map(|(_, wire)| wire));
            }
            Err(e) => return fail(e, ExitStatus::Failure),
        }
    }
    let count = envelopes.len();
    let file = TransferFile { device: device.clone(), created_at_ms: crate::outbox::now_ms(), envelopes };
    let bytes = files::encode_telemetry(&file);
    if let Err(e) = outpost_shared::files::write_atomic(&args.file, &bytes) {
        return fail(format!("cannot write {}: {e}", args.file.display()), ExitStatus::Failure);
    }
    println!(
        "exported {count} messages of device {device} ({} bytes) to {}",
        bytes.len(),
        args.file.display()
    );
    ExitCode::SUCCESS
}

pub fn import_ack(args: &TransferArgs) -> ExitCode {
    let (identity, outbox) = match open(&args.data) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let enrolment = match identity.enrolment() {
        Ok(Some(enrolment)) => enrolment,
        Ok(None) => return fail(crate::identity::IdentityError::NotEnrolled, ExitStatus::Failure),
        Err(e) => return fail(e, ExitStatus::Failure),
    };
    // Acks are signed by an online key of the held trust root (or the enrolment key without one).
    let trust = match enrolment.coordinator_key().map_err(|e| e.to_string()).and_then(|key| {
        crate::trust_root::Trust::open(&identity.dir, Some(key), Vec::new()).map_err(|e| e.to_string())
    }) {
        Ok(trust) => trust,
        Err(e) => return fail(e, ExitStatus::Failure),
    };
    let bytes = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(e) => return fail(format!("cannot read {}: {e}", args.file.display()), ExitStatus::Usage),
    };
    let file = match files::decode_acks(&bytes) {
        Ok(file) => file,
        Err(e) => return fail(format!("{}: {e}", args.file.display()), ExitStatus::Usage),
    };
    let (mut freed, mut refused) = (0u64, 0u64);
    for wire in &file.envelopes {
        let ack = outpost_shared::protocol::open(wire, |id| trust.control_key(id))
            .map_err(|e| e.to_string())
            .and_then(|o| messages::decode_coordinator(&o.body).map_err(|e| e.to_string()));
        match ack {
            Ok(CoordinatorMessage::Ack(ack)) if ack.device == enrolment.device_id => {
                match outbox.apply_ack(&ack) {
                    Ok(n) => freed += n,
                    Err(e) => return fail(e, ExitStatus::Failure),
                }
            }
            Ok(_) => {
                refused += 1;
                eprintln!("warning: skipped an ack for another device");
            }
            Err(e) => {
                refused += 1;
                eprintln!("warning: skipped an ack that does not verify: {e}");
            }
        }
    }
    let left = outbox.stats().messages;
    println!("freed {freed} messages; {left} still unacknowledged; {refused} acks refused");
    if refused > 0 && freed == 0 { ExitCode::from(ExitStatus::Failure) } else { ExitCode::SUCCESS }
}
