//! The keyring: data keys wrapped by the key-encryption key in `<data_dir>/keyring.json` (with a
//! `.bak` copy), made at first start, rotated and re-wrapped without rewriting a record.

use super::*;

/// `keyring.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: u32,
    cipher: String,
    /// The fingerprint of the KEK that wrapped the keys.
    kek: String,
    current: u32,
    keys: Vec<WrappedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedKey {
    id: u32,
    created_ms: u64,
    /// hex(nonce ‖ sealed key ‖ tag)
    wrapped: String,
}

fn keyring_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keyring.json")
}

fn backup_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keyring.json.bak")
}

fn wrap_aad(id: u32) -> Vec<u8> {
    [&b"outpost/at-rest/keyring\0"[..], &id.to_be_bytes()[..]].concat()
}

fn wrap(kek: &Kek, id: u32, key: &[u8; 32]) -> Result<String, AtRestError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| AtRestError::Random)?;
    let mut sealed = key.to_vec();
    kek.cipher()
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(wrap_aad(id)), &mut sealed)
        .map_err(|_| AtRestError::Random)?;
    Ok(hex::encode([&nonce[..], &sealed].concat()))
}

fn unwrap(kek: &Kek, key: &WrappedKey) -> Option<[u8; 32]> {
    let raw = hex::decode(&key.wrapped).ok()?;
    if raw.len() != NONCE_LEN + 32 + TAG {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).ok()?;
    let mut sealed = raw[NONCE_LEN..].to_vec();
    let plain = kek.cipher().open_in_place(nonce, Aad::from(wrap_aad(key.id)), &mut sealed).ok()?;
    <[u8; 32]>::try_from(&plain[..]).ok()
}

fn read_keyring(data_dir: &Path) -> Result<Option<KeyringFile>, AtRestError> {
    let path = keyring_path(data_dir);
    let parse = |p: &Path| -> Result<Option<KeyringFile>, String> {
        match std::fs::read(p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    };
    match parse(&path) {
        Ok(Some(file)) => Ok(Some(file)),
        // A damaged or missing keyring beside a good copy: the copy (written first) serves.
        first => match parse(&backup_path(data_dir)) {
            Ok(Some(file)) => {
                tracing::warn!(keyring = %path.display(), "keyring unreadable or missing: using its .bak copy");
                Ok(Some(file))
            }
            _ => first.map_err(|problem| AtRestError::Keyring { path, problem }),
        },
    }
}

fn write_keyring(data_dir: &Path, file: &KeyringFile) -> Result<(), AtRestError> {
    let bytes = serde_json::to_vec_pretty(file)
        .map_err(|e| AtRestError::Keyring { path: keyring_path(data_dir), problem: e.to_string() })?;
    for path in [backup_path(data_dir), keyring_path(data_dir)] {
        outpost_shared::files::write_private(&path, &bytes)
            .map_err(|source| AtRestError::Io { path, source })?;
    }
    Ok(())
}

fn new_key_id(taken: &[WrappedKey]) -> Result<u32, AtRestError> {
    let rng = SystemRandom::new();
    loop {
        let mut id = [0u8; 4];
        rng.fill(&mut id).map_err(|_| AtRestError::Random)?;
        let id = u32::from_be_bytes(id);
        if id != 0 && taken.iter().all(|k| k.id != id) {
            return Ok(id);
        }
    }
}

fn new_data_key(kek: &Kek, taken: &[WrappedKey]) -> Result<WrappedKey, AtRestError> {
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| AtRestError::Random)?;
    let id = new_key_id(taken)?;
    Ok(WrappedKey { id, created_ms: outpost_shared::endpoints::now_ms(), wrapped: wrap(kek, id, &key)? })
}

/// What [`open`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The keyring was made now (first start with encryption on).
    pub created_keyring: bool,
    /// The default key file was made now.
    pub created_key_file: bool,
}

/// Opens (or, at first start, makes) the keyring under the configured key: the sealer every
/// store uses. A wrong or missing key is an error naming its source; nothing is written then.
pub fn open(data_dir: &Path, config: &EncryptionConfig) -> Result<(Sealer, Opened), AtRestError> {
    let source = config.source(data_dir)?;
    let existing = read_keyring(data_dir)?;
    // The default key file is made only for a device that has no keyring yet: a keyring
    // without its key is a lost key, never a reason to make another.
    let may_create = config.key.is_none() && existing.is_none();
    let had_file = matches!(&source, KeySource::File(p) if p.exists());
    let kek = Kek::load(&source, may_create)?;
    let created_key_file = may_create && !had_file;
    let (file, created_keyring) = match existing {
        Some(file) => (file, false),
        None => {
            let first = new_data_key(&kek, &[])?;
            let file = KeyringFile {
                format: 1,
                cipher: CIPHER.into(),
                kek: kek.fingerprint(),
                current: first.id,
                keys: vec![first],
            };
            write_keyring(data_dir, &file)?;
            (file, true)
        }
    };
    let sealer = Sealer::from_keyring(data_dir, &kek, &file)?;
    Ok((sealer, Opened { created_keyring, created_key_file }))
}

/// The stores' [`AtRest`] for this configuration, with what it found logged: on — the keyring
/// opened (made at first start, and the default key file with it); off — in the clear, with the
/// keys still used to read what was sealed before, when there are any.
pub fn for_config(data_dir: &Path, config: &EncryptionConfig) -> Result<AtRest, AtRestError> {
    match config.mode {
        Mode::On => {
            let (sealer, opened) = open(data_dir, config)?;
            if opened.created_key_file {
                // Logged, and on stderr for the offline commands (which log nothing else).
                let note = made_key_file_note(sealer.source());
                tracing::warn!("{note}");
                if !tracing::dispatcher::has_been_set() {
                    eprintln!("note: {note}");
                }
            }
            let at_rest = AtRest::sealed(std::sync::Arc::new(sealer));
            tracing::info!(encryption = %at_rest.describe(), new_keyring = opened.created_keyring, "encryption at rest");
            Ok(at_rest)
        }
        Mode::Off => {
            let at_rest = match read_keyring(data_dir)? {
                None => AtRest::clear(),
                Some(_) => {
                    match open(data_dir, &EncryptionConfig { mode: Mode::On, key: config.key.clone() }) {
                        Ok((sealer, _)) => AtRest::reading(std::sync::Arc::new(sealer)),
                        Err(e) => {
                            tracing::warn!(error = %e, "encryption is off and the keys of earlier sealed records cannot be used: those records stay unread (kept)");
                            AtRest::clear()
                        }
                    }
                }
            };
            tracing::warn!(
                encryption = %at_rest.describe(),
                "encryption at rest is OFF: the prediction log, outbox and installed bundles are written in the clear"
            );
            Ok(at_rest)
        }
    }
}

/// What the agent says once, when it makes the default key file.
pub fn made_key_file_note(source: &str) -> String {
    format!(
        "encryption at rest: made a key file ({source}, 0600) for the prediction log, outbox and bundles. It protects \
         them when they are copied off without the identity directory, not a stolen disk (the key is on it too): for \
         that, give the key as a TPM-sealed systemd credential (`[encryption] key = \"credential:NAME\"`, see \
         deploy/systemd)"
    )
}

/// The keyring on disk and the configured key (never made here: the key commands change an
/// existing keyring only).
fn existing(data_dir: &Path, config: &EncryptionConfig) -> Result<(KeyringFile, Kek), AtRestError> {
    let source = config.source(data_dir)?;
    let file = read_keyring(data_dir)?.ok_or_else(|| AtRestError::Keyring {
        path: keyring_path(data_dir),
        problem: "there is no keyring yet (it is made when the agent first starts with encryption on)".into(),
    })?;
    Ok((file, Kek::load(&source, false)?))
}

/// `outpost-agent keys rotate`: a new data key for new records; the old ones stay for reading.
/// Returns (previous current key id, new current key id).
pub fn rotate(data_dir: &Path, config: &EncryptionConfig) -> Result<(u32, u32), AtRestError> {
    let (mut file, kek) = existing(data_dir, config)?;
    // Checks the key (and every wrapped key) before anything is written.
    Sealer::from_keyring(data_dir, &kek, &file)?;
    let key = new_data_key(&kek, &file.keys)?;
    let before = file.current;
    file.current = key.id;
    file.keys.push(key);
    write_keyring(data_dir, &file)?;
    Ok((before, file.current))
}

/// `outpost-agent keys rewrap --to SOURCE`: every data key re-wrapped under the new KEK.
/// Returns the new key's fingerprint.
pub fn rewrap(data_dir: &Path, config: &EncryptionConfig, to: &KeySource) -> Result<String, AtRestError> {
    let (mut file, old) = existing(data_dir, config)?;
    let keys = unwrap_all(data_dir, &old, &file)?;
    let new = Kek::load(to, false)?;
    file.keys = keys
        .iter()
        .map(|(meta, key)| {
            Ok(WrappedKey { id: meta.id, created_ms: meta.created_ms, wrapped: wrap(&new, meta.id, key)? })
        })
        .collect::<Result<_, AtRestError>>()?;
    file.kek = new.fingerprint();
    write_keyring(data_dir, &file)?;
    Ok(file.kek)
}

/// What `keys status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringStatus {
    /// The fingerprint of the key-encryption key that wraps the data keys.
    pub kek_fingerprint: String,
    pub keys: Vec<DataKeyInfo>,
}

/// One data key (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyInfo {
    pub id: u32,
    pub created_ms: u64,
    /// New records are sealed with it.
    pub current: bool,
}

/// The keyring's keys, `None` before the first start with encryption on.
pub fn status(data_dir: &Path) -> Result<Option<KeyringStatus>, AtRestError> {
    Ok(read_keyring(data_dir)?.map(|file| KeyringStatus {
        keys: file
            .keys
            .iter()
            .map(|k| DataKeyInfo { id: k.id, created_ms: k.created_ms, current: k.id == file.current })
            .collect(),
        kek_fingerprint: file.kek,
    }))
}

fn unwrap_all(
    data_dir: &Path,
    kek: &Kek,
    file: &KeyringFile,
) -> Result<Vec<(WrappedKey, [u8; 32])>, AtRestError> {
    let path = keyring_path(data_dir);
    if file.kek != kek.fingerprint() {
        return Err(AtRestError::WrongKey {
            source_name: kek.source().to_string(),
            found: kek.fingerprint(),
            expected: file.kek.clone(),
            keyring: path,
        });
    }
    if file.cipher != CIPHER || file.format != 1 {
        return Err(AtRestError::Keyring {
            path,
            problem: format!(
                "format {} with {}: this build reads format 1 with {CIPHER}",
                file.format, file.cipher
            ),
        });
    }
    file.keys
        .iter()
        .map(|k| {
            unwrap(kek, k).map(|key| (k.clone(), key)).ok_or_else(|| AtRestError::Keyring {
                path: path.clone(),
                problem: format!("data key {:08x} does not open under the configured key (damaged)", k.id),
            })
        })
        .collect()
}

impl Sealer {
    fn from_keyring(data_dir: &Path, kek: &Kek, file: &KeyringFile) -> Result<Sealer, AtRestError> {
        let keys: BTreeMap<u32, LessSafeKey> =
            unwrap_all(data_dir, kek, file)?.into_iter().map(|(meta, key)| (meta.id, cipher(&key))).collect();
        if !keys.contains_key(&file.current) {
            return Err(AtRestError::Keyring {
                path: keyring_path(data_dir),
                problem: format!("its current key {:08x} is not among its keys", file.current),
            });
        }
        Sealer::new(keys, file.current, kek.source().to_string())
    }
}
