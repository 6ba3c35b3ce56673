//! Unit tests of the device's trust root: adoption, rotation, bootstrap, pins, damage.

use super::*;
use outpost_shared::protocol::SigningKey;
use outpost_shared::protocol::root::{Role, Root};

fn key() -> SigningKey {
    SigningKey::generate().unwrap().0
}

struct Keys {
    root: SigningKey,
    release: SigningKey,
    online: SigningKey,
}

fn v1(k: &Keys) -> SignedRoot {
    let mut s = SignedRoot::unsigned(Root {
        version: 1,
        issued_at_ms: 1,
        root: Role::of(&[k.root.public_key()], 1),
        release: Role::of(&[k.release.public_key()], 1),
        online: Role::of(&[k.online.public_key()], 1),
    });
    s.sign(&k.root);
    s
}

fn keys() -> Keys {
    Keys { root: key(), release: key(), online: key() }
}

#[test]
fn an_enrolment_root_is_kept_and_decides_control_and_release_keys() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    let trust = Trust::open(dir.path(), Some(k.online.public_key()), Vec::new()).unwrap();
    assert_eq!(trust.version(), 0);
    trust.adopt_initial(v1(&k)).unwrap();
    let again = Trust::open(dir.path(), None, Vec::new()).unwrap();
    assert_eq!(again.version(), 1);
    assert_eq!(again.control_key(k.online.key_id()), Some(k.online.public_key()));
    assert_eq!(again.control_key(k.release.key_id()), None, "a release key signs no control message");
    assert_eq!(again.release(), ReleaseKeys::any(vec![k.release.public_key()]));
}

#[test]
fn a_rotation_signed_without_the_old_root_is_refused_and_the_held_root_stays() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    let trust = Trust::open(dir.path(), None, Vec::new()).unwrap();
    trust.adopt_initial(v1(&k)).unwrap();
    let (thief_root, thief_online) = (key(), key());
    let mut body = v1(&k).signed.next(2);
    body.root = Role::of(&[thief_root.public_key()], 1);
    body.online = Role::of(&[thief_online.public_key()], 1);
    let mut forged = SignedRoot::unsigned(body.clone());
    forged.sign(&thief_root);
    forged.sign(&k.online); // the online key holds no root signature
    let err = trust.update(&[forged.to_bytes()]).unwrap_err().to_string();
    assert!(
        err.contains("signed by 0 of the 1 required version 1's (the current root's) root keys"),
        "{err}"
    );
    assert_eq!(Trust::open(dir.path(), None, Vec::new()).unwrap().version(), 1);
    assert_eq!(trust.control_key(thief_online.key_id()), None);

    // The same statement with the old root's signature too is accepted and kept.
    let mut rotation = forged.clone();
    rotation.sign(&k.root);
    assert_eq!(trust.update(&[v1(&k).to_bytes(), rotation.to_bytes()]).unwrap(), Some(2));
    assert_eq!(trust.update(&[rotation.to_bytes()]).unwrap(), None, "nothing newer: nothing moves");
    let again = Trust::open(dir.path(), None, Vec::new()).unwrap();
    assert_eq!(again.version(), 2);
    assert_eq!(again.control_key(thief_online.key_id()), Some(thief_online.public_key()));
    assert_eq!(again.control_key(k.online.key_id()), None, "the rotated-out online key is no longer trusted");
}

#[test]
fn a_device_without_a_root_adopts_only_a_chain_naming_its_enrolment_key() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let stranger = Trust::open(dir.path(), Some(key().public_key()), Vec::new()).unwrap();
    let err = stranger.update(&[v1(&k).to_bytes()]).unwrap_err().to_string();
    assert!(err.contains("does not name the coordinator key this device was enrolled with"), "{err}");
    assert_eq!(stranger.version(), 0);

    let legacy = Trust::open(dir.path(), Some(k.release.public_key()), Vec::new()).unwrap();
    assert_eq!(legacy.control_key(k.release.key_id()), Some(k.release.public_key()));
    assert_eq!(legacy.update(&[v1(&k).to_bytes()]).unwrap(), Some(1));
    assert_eq!(
        legacy.control_key(k.release.key_id()),
        None,
        "after adoption only the online role signs control"
    );

    let unenrolled = Trust::open(tempfile::tempdir().unwrap().path(), None, Vec::new()).unwrap();
    assert!(unenrolled.update(&[v1(&k).to_bytes()]).unwrap_err().to_string().contains("not enrolled"));
}

#[test]
fn configured_release_keys_take_precedence_over_the_roots() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let own = key().public_key();
    let pinned = Trust::open(dir.path(), None, vec![own]).unwrap();
    pinned.adopt_initial(v1(&k)).unwrap();
    assert!(pinned.release_configured());
    assert_eq!(pinned.release(), ReleaseKeys::any(vec![own]), "the owner's keys, not the fleet's");
    assert_eq!(
        pinned.control_key(k.online.key_id()),
        Some(k.online.public_key()),
        "control follows the root"
    );
    let following = Trust::open(dir.path(), None, Vec::new()).unwrap();
    assert_eq!(following.release(), ReleaseKeys::any(vec![k.release.public_key()]));
}

#[test]
fn a_damaged_root_file_falls_back_to_its_copy_and_both_damaged_is_an_error() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    Trust::open(dir.path(), None, Vec::new()).unwrap().adopt_initial(v1(&k)).unwrap();
    let file = path(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.iter().position(|&b| b == b'"').unwrap() + 3;
    bytes[at] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(Trust::open(dir.path(), None, Vec::new()).unwrap().version(), 1);
    // A flipped key digit: valid JSON, broken signature.
    let text = String::from_utf8(std::fs::read(bak(&file)).unwrap()).unwrap();
    let flipped = text.replacen(&hex::encode(k.online.public_key().as_bytes()), &hex::encode([7u8; 32]), 1);
    std::fs::write(bak(&file), flipped).unwrap();
    let err = Trust::open(dir.path(), None, Vec::new()).unwrap_err().to_string();
    assert!(err.contains("root.json") && err.contains("enrol again"), "{err}");
}
