//! Trust roots: signed statements of which keys hold which role (TUF's `root.json`).
//!
//! A [`Root`] names three roles, each a set of Ed25519 public keys and a threshold:
//!
//! - `root` — signs root statements themselves;
//! - `release` — signs model bundles (a bundle needs valid signatures by `threshold` distinct
//!   release keys, e.g. 2 of 3);
//! - `online` — signs desired states and acks (threshold 1: a message carries one signature).
//!
//! Roots are numbered. Version N+1 is accepted only when it is signed by a threshold of the
//! **root keys of version N** (so whoever holds the old root authorised the change) *and* by a
//! threshold of its own root keys (so a new root role is live, not a typo) — TUF's rule. A
//! version may not be skipped: a device at version 1 applies 2, then 3. A root statement is
//! self-authenticating, so it may travel by any path (inside a desired state, on a USB stick);
//! the signatures decide. What it stops: a stolen online key cannot name a new release key or
//! another online key (it holds no root signature); a single stolen release key cannot ship a
//! model when the threshold is 2 or more (key compromise); and an old root cannot be fed back
//! (versions only go up: rollback).
//!
//! The signed bytes are `outpost-root-v1\0` ‖ postcard(`Root`) — postcard encodes a struct as its
//! fields in order, so the bytes are a function of the values, whatever JSON spacing carried
//! them. The file form is JSON: `{"signed": {...}, "signatures": [{"key_id", "signature"}]}`.
//! Parsing outside bytes never panics; sizes are bounded first (fuzz target `root_parse`).

use serde::{Deserialize, Serialize};

use super::keys::{PublicKey, SigningKey};

/// Largest root statement accepted, in bytes.
pub const MAX_ROOT_BYTES: usize = 64 * 1024;
/// Most keys one role may list.
pub const MAX_KEYS_PER_ROLE: usize = 16;
/// Most signatures one statement may carry.
pub const MAX_ROOT_SIGNATURES: usize = 32;
/// Most root statements carried in one message (a device far behind catches up in steps).
pub const MAX_CHAIN: usize = 64;

const DOMAIN: &[u8] = b"outpost-root-v1\0";

/// One role: its keys (hex, 64 digits each) and how many must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub keys: Vec<String>,
    pub threshold: u32,
}

/// Which keys hold which role, as of `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub version: u64,
    /// When the statement was drafted (unix ms); informative.
    pub issued_at_ms: u64,
    pub root: Role,
    pub release: Role,
    pub online: Role,
}

/// One signature over a root statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSignature {
    /// [`key_id_of`] the signer's public key.
    pub key_id: String,
    /// 64 bytes, hex.
    pub signature: String,
}

/// A root statement and its signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoot {
    pub signed: Root,
    pub signatures: Vec<RootSignature>,
}

/// Why a root statement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("root statement is {size} bytes, more than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("root statement is malformed: {0}")]
    Malformed(String),
    #[error("root version {version}: role `{role}` {problem}")]
    Role { version: u64, role: &'static str, problem: String },
    #[error("root statement carries {0} signatures, more than {MAX_ROOT_SIGNATURES}")]
    TooManySignatures(usize),
    #[error("root version {found} does not follow version {current}: root versions go up one at a time")]
    Version { found: u64, current: u64 },
    #[error(
        "root version {version} is signed by {valid} of the {threshold} required {whose} root keys \
         (valid signatures by: {signers}): refused"
    )]
    Threshold { version: u64, whose: String, valid: usize, threshold: u32, signers: String },
    #[error("{0} root statements in one message, more than {MAX_CHAIN}")]
    ChainTooLong(usize),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

impl Role {
    /// A role of `keys` with `threshold`.
    pub fn of(keys: &[PublicKey], threshold: u32) -> Role {
        Role { keys: keys.iter().map(|k| hex(k.as_bytes())).collect(), threshold }
    }

    /// The role's keys, parsed.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.keys.iter().filter_map(|k| PublicKey::from_hex(k).ok()).collect()
    }

    /// The role's key with this id, if any.
    pub fn find(&self, key_id: &str) -> Option<PublicKey> {
        self.public_keys().into_iter().find(|k| k.key_id() == key_id)
    }

    /// Whether `key` holds this role.
    pub fn holds(&self, key: &PublicKey) -> bool {
        self.public_keys().contains(key)
    }

    fn validate(&self, version: u64, role: &'static str) -> Result<(), RootError> {
        let problem = |problem: String| RootError::Role { version, role, problem };
        if self.keys.is_empty() {
            return Err(problem("lists no key".into()));
        }
        if self.keys.len() > MAX_KEYS_PER_ROLE {
            return Err(problem(format!("lists {} keys, more than {MAX_KEYS_PER_ROLE}", self.keys.len())));
        }
        let mut seen = Vec::new();
        for (i, text) in self.keys.iter().enumerate() {
            let key = PublicKey::from_hex(text)
                .map_err(|e| problem(format!("key {i} is not an Ed25519 public key ({e})")))?;
            if seen.contains(&key) {
                return Err(problem(format!("lists key {} twice", key.key_id())));
            }
            seen.push(key);
        }
        if self.threshold == 0 || self.threshold as usize > self.keys.len() {
            return Err(problem(format!(
                "threshold {} must be between 1 and its {} key(s)",
                self.threshold,
                self.keys.len()
            )));
        }
        Ok(())
    }
}

impl Root {
    /// The bytes signatures cover.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = DOMAIN.to_vec();
        // Serializing owned plain data into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Every role well formed; the online role signs with one key at a time.
    pub fn validate(&self) -> Result<(), RootError> {
        if self.version == 0 {
            return Err(RootError::Malformed("root versions start at 1".into()));
        }
        self.root.validate(self.version, "root")?;
        self.release.validate(self.version, "release")?;
        self.online.validate(self.version, "online")?;
        if self.online.threshold != 1 {
            return Err(RootError::Role {
                version: self.version,
                role: "online",
                problem: format!(
                    "threshold is {}: a desired state or ack carries one signature, so it must be 1",
                    self.online.threshold
                ),
            });
        }
        Ok(())
    }

    /// The statement that follows this one, with the same roles (to edit, then sign).
    pub fn next(&self, issued_at_ms: u64) -> Root {
        Root { version: self.version + 1, issued_at_ms, ..self.clone() }
    }
}

impl SignedRoot {
    /// An unsigned statement.
    pub fn unsigned(root: Root) -> SignedRoot {
        SignedRoot { signed: root, signatures: Vec::new() }
    }

    /// Reads a statement from outside bytes: bounded, well formed, every role valid. Checks
    /// nothing about signatures (see [`SignedRoot::verify_initial`], [`SignedRoot::verify_successor`]).
    pub fn parse(bytes: &[u8]) -> Result<SignedRoot, RootError> {
        if bytes.len() > MAX_ROOT_BYTES {
            return Err(RootError::TooLarge { size: bytes.len(), max: MAX_ROOT_BYTES });
        }
        let root: SignedRoot =
            serde_json::from_slice(bytes).map_err(|e| RootError::Malformed(e.to_string()))?;
        root.signed.validate()?;
        if root.signatures.len() > MAX_ROOT_SIGNATURES {
            return Err(RootError::TooManySignatures(root.signatures.len()));
        }
        Ok(root)
    }

    /// The file form (pretty JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn version(&self) -> u64 {
        self.signed.version
    }

    /// Adds (or replaces) `key`'s signature.
    pub fn sign(&mut self, key: &SigningKey) {
        let signature = hex(&key.sign(&self.signed.signing_bytes()));
        self.signatures.retain(|s| s.key_id != key.key_id());
        self.signatures.push(RootSignature { key_id: key.key_id().to_owned(), signature });
    }

    /// The ids of `role`'s keys with a valid signature on this statement (each counted once).
    pub fn valid_signers(&self, role: &Role) -> Vec<String> {
        let message = self.signed.signing_bytes();
        let mut signers = Vec::new();
        for s in &self.signatures {
            let Some(key) = role.find(&s.key_id) else { continue };
            let Some(signature) = unhex(&s.signature) else { continue };
            if key.verify(&message, &signature).is_ok() && !signers.contains(&s.key_id) {
                signers.push(s.key_id.clone());
            }
        }
        signers
    }

    fn require(&self, role: &Role, whose: String) -> Result<(), RootError> {
        let signers = self.valid_signers(role);
        if signers.len() < role.threshold as usize {
            return Err(RootError::Threshold {
                version: self.version(),
                whose,
                valid: signers.len(),
                threshold: role.threshold,
                signers: if signers.is_empty() { "none".into() } else { signers.join(", ") },
            });
        }
        Ok(())
    }

    /// A first root (trusted by how it arrived: enrolment, or a pin): signed by a threshold of
    /// its own root keys.
    pub fn verify_initial(&self) -> Result<(), RootError> {
        self.signed.validate()?;
        self.require(&self.signed.root, format!("version {}'s own", self.version()))
    }

    /// `next` may replace this root: it is the next version, signed by a threshold of this
    /// root's root keys and of its own.
    pub fn verify_successor(&self, next: &SignedRoot) -> Result<(), RootError> {
        if next.version() != self.version() + 1 {
            return Err(RootError::Version { found: next.version(), current: self.version() });
        }
        next.signed.validate()?;
        next.require(&self.signed.root, format!("version {}'s (the current root's)", self.version()))?;
        next.require(&next.signed.root, format!("version {}'s own", next.version()))
    }
}

/// What [`advance`] made of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The statements accepted, oldest first (each verified against the one before).
    pub accepted: Vec<SignedRoot>,
    /// Why the walk stopped early, if it did (statements after a refused one are not looked at).
    pub refused: Option<RootError>,
}

/// Walks `chain` (any order; versions at or below `current` are ignored) from `current` one
/// version at a time.
pub fn advance(current: &SignedRoot, chain: &[SignedRoot]) -> Advance {
    if chain.len() > MAX_CHAIN {
        return Advance { accepted: Vec::new(), refused: Some(RootError::ChainTooLong(chain.len())) };
    }
    let mut newer: Vec<&SignedRoot> = chain.iter().filter(|r| r.version() > current.version()).collect();
    newer.sort_by_key(|r| r.version());
    let mut accepted: Vec<SignedRoot> = Vec::new();
    for next in newer {
        let at = accepted.last().unwrap_or(current);
        if next.version() == at.version() && next == at {
            continue;
        }
        if let Err(e) = at.verify_successor(next) {
            return Advance { accepted, refused: Some(e) };
        }
        accepted.push(next.clone());
    }
    Advance { accepted, refused: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate().unwrap().0
    }

    fn root(
        version: u64,
        root: &[&SigningKey],
        threshold: u32,
        release: &[&SigningKey],
        online: &SigningKey,
    ) -> Root {
        let public = |keys: &[&SigningKey]| keys.iter().map(|k| k.public_key()).collect::<Vec<_>>();
        Root {
            version,
            issued_at_ms: 1,
            root: Role::of(&public(root), threshold),
            release: Role::of(&public(release), 1),
            online: Role::of(&[online.public_key()], 1),
        }
    }

    fn signed(root: Root, by: &[&SigningKey]) -> SignedRoot {
        let mut s = SignedRoot::unsigned(root);
        for k in by {
            s.sign(k);
        }
        s
    }

    #[test]
    fn a_rotation_needs_the_old_roots_signature() {
        let (r1, r2, online, online2, release) = (key(), key(), key(), key(), key());
        let v1 = signed(root(1, &[&r1], 1, &[&release], &online), &[&r1]);
        v1.verify_initial().unwrap();
        // v2 moves the root role to r2 and the online role to online2.
        let body = root(2, &[&r2], 1, &[&release], &online2);
        let only_new = signed(body.clone(), &[&r2]);
        let err = v1.verify_successor(&only_new).unwrap_err();
        assert!(err.to_string().contains("signed by 0 of the 1 required version 1's"), "{err}");
        let by_online = signed(body.clone(), &[&online, &r2]);
        assert!(matches!(v1.verify_successor(&by_online), Err(RootError::Threshold { .. })));
        let only_old = signed(body.clone(), &[&r1]);
        assert!(v1.verify_successor(&only_old).unwrap_err().to_string().contains("version 2's own"));
        let both = signed(body, &[&r1, &r2]);
        v1.verify_successor(&both).unwrap();
        // Tampering after signing breaks every signature.
        let mut tampered = both.clone();
        tampered.signed.online = Role::of(&[key().public_key()], 1);
        assert!(v1.verify_successor(&tampered).is_err());
    }

    #[test]
    fn versions_go_up_one_at_a_time_and_thresholds_count_distinct_keys() {
        let (a, b, c, online, release) = (key(), key(), key(), key(), key());
        let v1 = signed(root(1, &[&a, &b, &c], 2, &[&release], &online), &[&a, &b]);
        v1.verify_initial().unwrap();
        let mut one_twice = signed(root(1, &[&a, &b, &c], 2, &[&release], &online), &[&a]);
        one_twice.signatures.push(one_twice.signatures[0].clone());
        assert!(one_twice.verify_initial().unwrap_err().to_string().contains("signed by 1 of the 2"));
        let v3 = signed(root(3, &[&a, &b, &c], 2, &[&release], &online), &[&a, &b]);
        assert_eq!(v1.verify_successor(&v3), Err(RootError::Version { found: 3, current: 1 }));
        let v2 = signed(root(2, &[&a, &b, &c], 2, &[&release], &online), &[&b, &c]);
        // A chain in any order is walked one version at a time; older or equal ones are ignored.
        let walked = advance(&v1, &[v3.clone(), v1.clone(), v2.clone()]);
        assert_eq!(walked.refused, None);
        assert_eq!(walked.accepted.iter().map(SignedRoot::version).collect::<Vec<_>>(), vec![2, 3]);
        let gap = advance(&v1, std::slice::from_ref(&v3));
        assert!(gap.accepted.is_empty() && matches!(gap.refused, Some(RootError::Version { .. })));
    }

    #[test]
    fn malformed_roles_and_outside_bytes_are_refused_with_a_reason() {
        let (r, online, release) = (key(), key(), key());
        let good = signed(root(1, &[&r], 1, &[&release], &online), &[&r]);
        let back = SignedRoot::parse(&good.to_bytes()).unwrap();
        assert_eq!(back, good);
        back.verify_initial().unwrap();
        let mut bad = good.signed.clone();
        bad.release.threshold = 2;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("role `release` threshold 2 must be between 1 and its 1")
        );
        let mut bad = good.signed.clone();
        bad.online = Role::of(&[online.public_key(), release.public_key()], 2);
        assert!(bad.validate().unwrap_err().to_string().contains("must be 1"));
        let mut bad = good.signed.clone();
        bad.root.keys.push(bad.root.keys[0].clone());
        bad.root.threshold = 1;
        assert!(bad.validate().unwrap_err().to_string().contains("twice"));
        let mut bad = good.signed.clone();
        bad.release.keys = vec!["zz".into()];
        assert!(bad.validate().unwrap_err().to_string().contains("not an Ed25519 public key"));
        for junk in [&b""[..], b"{}", b"[1,2]", b"{\"signed\":1}", &[0xff; 10]] {
            assert!(SignedRoot::parse(junk).is_err());
        }
        assert!(matches!(
            SignedRoot::parse(&vec![b' '; MAX_ROOT_BYTES + 1]),
            Err(RootError::TooLarge { .. })
        ));
        let mut garbage_sig = good.clone();
        garbage_sig.signatures[0].signature = "not hex".into();
        assert!(garbage_sig.verify_initial().is_err());
    }
}
