//! Unit tests of bundles: layout, signatures, manifests, baselines.

use super::*;

fn manifest() -> Manifest {
    Manifest {
        name: "bc".into(),
        version: "1.2.0".into(),
        created_at: 1_700_000_000,
        model: ModelFile { sha256: String::new(), size: 0 },
        inputs: vec![TensorSchema { name: "input".into(), datatype: "FP32".into(), shape: vec![-1, 2] }],
        outputs: vec![TensorSchema { name: "label".into(), datatype: "INT64".into(), shape: vec![-1] }],
        nan_policy: NanPolicy::Reject,
        training: Training::default(),
        metadata: BTreeMap::new(),
        baseline: None,
        reference: None,
        card: Some("# bc".into()),
        encryption: None,
    }
}

fn signed(key: &SigningKey) -> Vec<u8> {
    let mut b = Bundle::build(manifest(), b"not really onnx".to_vec()).unwrap();
    b.sign(key).unwrap();
    b.to_bytes()
}

#[test]
fn signed_bundles_round_trip_and_verify() {
    let (key, _) = SigningKey::generate().unwrap();
    let bytes = signed(&key);
    let b = Bundle::open(&bytes, &[key.public_key()]).unwrap();
    assert_eq!(b.manifest.model.sha256, sha256_hex(b"not really onnx"));
    assert_eq!(b.to_bytes(), bytes);
}

/// What a source hands out, so a test can see how much of it a refusal read.
struct Counting<'a> {
    bytes: &'a [u8],
    read: usize,
}

impl std::io::Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.bytes.len() - self.read);
        buf[..n].copy_from_slice(&self.bytes[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
}

#[test]
fn a_bundle_read_from_a_source_checks_its_sizes_before_it_reads_the_model() {
    let (key, _) = SigningKey::generate().unwrap();
    let bytes = signed(&key);
    let mut whole = Counting { bytes: &bytes, read: 0 };
    let b = Bundle::read(&mut whole, bytes.len() as u64).unwrap();
    assert_eq!(b.to_bytes(), bytes, "read and parse agree");
    // A file longer than the bundle says (an upload with trailing garbage): refused with the
    // model unread.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    let mut source = Counting { bytes: &longer, read: 0 };
    let refused = Bundle::read(&mut source, longer.len() as u64).unwrap_err();
    assert!(matches!(refused, BundleError::TrailingBytes(4096)), "{refused}");
    assert_eq!(source.read, bytes.len() - b"not really onnx".len(), "the model was not read");
    // Garbage costs the magic bytes only.
    let garbage = vec![0u8; 1 << 20];
    let mut source = Counting { bytes: &garbage, read: 0 };
    assert!(matches!(Bundle::read(&mut source, garbage.len() as u64), Err(BundleError::Magic)));
    assert_eq!(source.read, MAGIC.len());
    // A source that fails says so instead of claiming a truncated bundle.
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("input/output error"))
        }
    }
    let failed = Bundle::read(Failing, 100).unwrap_err();
    assert!(failed.to_string().contains("cannot read the bundle: input/output error"), "{failed}");
}

#[test]
fn rejects_every_flipped_byte() {
    let (key, _) = SigningKey::generate().unwrap();
    let bytes = signed(&key);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(Bundle::open(&bad, &[key.public_key()]).is_err(), "flipped byte {i} accepted");
    }
}

#[test]
fn rejects_truncated_unsigned_and_untrusted_bundles() {
    let (key, _) = SigningKey::generate().unwrap();
    let (other, _) = SigningKey::generate().unwrap();
    let bytes = signed(&key);
    for cut in [0, 5, 20, bytes.len() - 1] {
        assert!(Bundle::open(&bytes[..cut], &[key.public_key()]).is_err(), "cut at {cut} accepted");
    }
    assert_eq!(
        Bundle::open(&bytes[..bytes.len() - 1], &[key.public_key()]).unwrap_err(),
        BundleError::Truncated("the model is cut short")
    );
    let unsigned = Bundle::build(manifest(), b"m".to_vec()).unwrap().to_bytes();
    assert_eq!(Bundle::open(&unsigned, &[key.public_key()]).unwrap_err(), BundleError::Unsigned);
    let err = Bundle::open(&bytes, &[other.public_key()]).unwrap_err().to_string();
    assert!(err.contains(key.key_id()) && err.contains(other.key_id()), "{err}");
}

#[test]
fn either_of_two_keys_is_enough_while_keys_rotate() {
    let (old, _) = SigningKey::generate().unwrap();
    let (new, _) = SigningKey::generate().unwrap();
    let mut b = Bundle::build(manifest(), b"m".to_vec()).unwrap();
    b.sign(&old).unwrap();
    b.sign(&new).unwrap();
    assert!(matches!(b.sign(&new), Err(BundleError::AlreadySigned(_))));
    let bytes = b.to_bytes();
    assert_eq!(Bundle::open(&bytes, &[new.public_key()]).unwrap().signatures.len(), 2);
    Bundle::open(&bytes, &[old.public_key()]).unwrap();
}

#[test]
fn a_threshold_of_release_keys_needs_that_many_distinct_valid_signatures() {
    let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate().unwrap().0).collect();
    let release = ReleaseKeys { keys: keys.iter().map(SigningKey::public_key).collect(), threshold: 2 };
    let (outsider, _) = SigningKey::generate().unwrap();
    let mut b = Bundle::build(manifest(), b"m".to_vec()).unwrap();
    b.sign(&keys[0]).unwrap();
    b.sign(&outsider).unwrap();
    let err = Bundle::open_release(&b.to_bytes(), &release).unwrap_err();
    assert!(matches!(err, BundleError::BelowThreshold { valid: 1, threshold: 2, .. }), "{err}");
    assert!(err.to_string().contains(keys[0].key_id()), "{err}");
    b.sign(&keys[2]).unwrap();
    let opened = Bundle::open_release(&b.to_bytes(), &release).unwrap();
    assert_eq!(opened.verify_release(&release).unwrap().len(), 2);
    // A forged signature by a release key is named, never silently skipped.
    let mut forged = b.clone();
    forged.signatures[0].signature = [7; 64];
    assert_eq!(
        forged.verify_release(&release).unwrap_err(),
        BundleError::BadSignature(keys[0].key_id().to_owned())
    );
    // Threshold 1 is the configured-keys rule: any one.
    Bundle::open_release(&b.to_bytes(), &ReleaseKeys::any(vec![keys[2].public_key()])).unwrap();
}

#[test]
fn a_registry_check_wants_every_signature_trusted_and_valid() {
    let (release, _) = SigningKey::generate().unwrap();
    let (offline, _) = SigningKey::generate().unwrap();
    let (stranger, _) = SigningKey::generate().unwrap();
    let trusted = [release.public_key(), offline.public_key()];
    let mut b = Bundle::build(manifest(), b"m".to_vec()).unwrap();
    assert_eq!(b.verify_every_signature(&trusted).unwrap(), Vec::<String>::new(), "unsigned passes");
    b.sign(&release).unwrap();
    b.sign(&offline).unwrap();
    assert_eq!(b.verify_every_signature(&trusted).unwrap(), [release.key_id(), offline.key_id()]);
    // The release key's id with a forged signature: named, refused.
    let mut forged = b.clone();
    forged.signatures[0].signature = [b'A'; 64];
    assert_eq!(
        forged.verify_every_signature(&trusted).unwrap_err(),
        BundleError::BadSignature(release.key_id().to_owned())
    );
    // One good signature does not carry an unknown one (agents would take the bundle on the
    // good one; a registry must not list the other).
    let mut extra = b.clone();
    extra.sign(&stranger).unwrap();
    let err = extra.verify_every_signature(&trusted).unwrap_err();
    assert!(matches!(&err, BundleError::UntrustedKey { found, .. } if *found == stranger.key_id()), "{err}");
}

#[test]
fn manifests_are_checked() {
    let mut m = manifest();
    m.version = "1.2".into();
    assert!(Bundle::build(m, vec![]).unwrap_err().to_string().contains("version `1.2`"));
    let mut m = manifest();
    m.name = "a b".into();
    assert!(Bundle::build(m, vec![]).is_err());
    let mut m = manifest();
    m.training.dataset_sha256 = Some("xyz".into());
    assert!(Bundle::build(m, vec![]).unwrap_err().to_string().contains("dataset_sha256"));
}

#[test]
fn baseline_statistics_match_numpy() {
    let names = vec!["a".to_string(), "b".to_string()];
    let rows: Vec<Vec<f64>> = (0..11).map(|i| vec![i as f64, if i == 3 { f64::NAN } else { 1.0 }]).collect();
    let b = Baseline::compute(&names, &rows, &sha256_hex(b"")).unwrap();
    let a = &b.features[0];
    assert_eq!((a.count, a.missing, a.min, a.max, a.mean), (11, 0, 0.0, 10.0, 5.0));
    // numpy.quantile(range(11), 0.25) == 2.5; std (ddof=0) == sqrt(10).
    assert_eq!(a.quantiles[25], 2.5);
    assert!((a.std - 10f64.sqrt()).abs() < 1e-12);
    assert_eq!(b.features[1].missing, 1);
    assert_eq!(b.sample.len(), 11);
    assert_eq!(b.sample[3][1], None);
    assert!(Baseline::compute(&names, &[vec![1.0]], "").is_err());
}

#[test]
fn an_encrypted_bundle_verifies_without_the_key_and_opens_only_with_it() {
    use crate::keysource::{KeySource, SourcedKey};
    let key = SourcedKey::generate(KeySource::Env("FLEET".into())).unwrap();
    let other = SourcedKey::generate(KeySource::Env("OTHER".into())).unwrap();
    let (signer, _) = SigningKey::generate().unwrap();
    let model = b"the clear model bytes, long enough to search for".to_vec();
    let mut bundle = Bundle::build(manifest(), model.clone()).unwrap().encrypt(&key).unwrap();
    assert!(matches!(bundle.clone().encrypt(&key), Err(BundleError::Encryption(_))), "encrypted twice");
    bundle.sign(&signer).unwrap();
    let bytes = bundle.to_bytes();
    assert!(!bytes.windows(16).any(|w| model.windows(16).any(|m| m == w)), "plaintext in the bundle");
    // Signatures and the hash check out without any key.
    let mut opened = Bundle::open(&bytes, &[signer.public_key()]).unwrap();
    assert_eq!(opened.manifest.encryption.as_ref().unwrap().key_id, bundle_key_id(&key));
    let err = opened.clone().decrypt(std::slice::from_ref(&other)).unwrap_err().to_string();
    assert!(err.contains(&bundle_key_id(&key)) && err.contains(&bundle_key_id(&other)), "{err}");
    assert!(opened.clone().decrypt(&[]).unwrap_err().to_string().contains("held: none"));
    opened.decrypt(&[other, key]).unwrap();
    assert_eq!(opened.model, model);
    // A tampered nonce (the manifest re-signed by someone with a release key) still does not open.
    let mut tampered = Bundle::parse(&bytes).unwrap();
    tampered.manifest.encryption.as_mut().unwrap().nonce = "00".repeat(12);
    let key = SourcedKey::generate(KeySource::Env("FLEET".into())).unwrap();
    assert!(tampered.decrypt(&[key]).is_err());
}
