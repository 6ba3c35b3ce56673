//! Unit tests of the outbox: seqs, acks, the byte bound, damage, locking, the sled migration.

use super::*;
use outpost_shared::protocol::messages::{Event, EventKind};

fn event(n: usize) -> AgentMessage {
    AgentMessage::Event(Event { at_ms: 1, kind: EventKind::AgentStarted, message: "x".repeat(n) })
}

/// Rewrites entry `seq`'s stored bytes with `change`, its checksum made to hold again (so the
/// damage reaches the envelope's own authentication, as a flip before the checksum was taken
/// would).
fn tamper_stored(dir: &Path, seq: u64, change: impl FnOnce(&mut Vec<u8>)) {
    let path = entry_path(&dir.join("outbox"), seq);
    let (cursor, mut stored) = parse_entry(&std::fs::read(&path).unwrap()).unwrap();
    change(&mut stored);
    std::fs::write(&path, entry_bytes(cursor, &stored)).unwrap();
}

#[test]
fn sealed_entries_hide_the_telemetry_and_a_flipped_one_is_removed_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    let at_rest = AtRest::sealed(std::sync::Arc::new(crate::at_rest::Sealer::ephemeral().unwrap()));
    let marker = "telemetry-marker-31415";
    {
        let outbox = Outbox::open(dir.path(), 1 << 20, &at_rest).unwrap();
        for _ in 0..5 {
            let message = AgentMessage::Event(Event {
                at_ms: 1,
                kind: EventKind::AgentStarted,
                message: marker.into(),
            });
            outbox.append(&key, &message, None).unwrap();
        }
        // What goes to the coordinator is the signed envelope, in the clear.
        let sent = outbox.pending_after(None, 10).unwrap();
        assert_eq!(sent.len(), 5);
        assert!(protocol::open(&sent[0].1, |_| Some(key.public_key())).is_ok());
    }
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("outbox")).unwrap().filter_map(Result::ok) {
        if entry.path().is_file() {
            on_disk.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    assert!(!on_disk.windows(marker.len()).any(|w| w == marker.as_bytes()), "telemetry in the clear on disk");
    tamper_stored(dir.path(), 3, |stored| stored[20] ^= 0x08);
    let outbox = Outbox::open(dir.path(), 1 << 20, &at_rest).unwrap();
    let seqs: Vec<u64> = outbox.pending_after(None, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, vec![1, 2, 4, 5]);
    assert_eq!((outbox.unreadable(), outbox.stats().messages), (1, 4));
    // Without the keys nothing is sent and nothing is removed: the right key brings it back.
    drop(outbox);
    let clear = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    assert!(clear.pending_after(None, 10).unwrap().is_empty());
    assert_eq!((clear.unreadable(), clear.stats().messages), (0, 4));
}

#[test]
fn seqs_survive_reopen_and_acks_free_exactly_what_they_cover() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    {
        let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 1);
        assert_eq!(outbox.append(&key, &event(10), Some(42)).unwrap(), 2);
    }
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    assert_eq!(outbox.prediction_cursor().unwrap(), Some(42));
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 3);
    assert_eq!(outbox.stats().messages, 3);
    let pending: Vec<u64> = outbox.pending_after(Some(1), 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(pending, vec![2, 3]);
    assert_eq!(outbox.count_through(2, 64), 2);
    assert_eq!(outbox.count_through(2, 1), 1);
    assert_eq!(outbox.apply_ack(&Ack::from_seqs("d", [1, 3, 99])).unwrap(), 2);
    assert_eq!(outbox.apply_ack(&Ack::from_seqs("d", [1, 3])).unwrap(), 0, "acks are idempotent");
    let left: Vec<u64> = outbox.pending_after(None, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(left, vec![2]);
    // Every stored envelope opens with the device key and carries its seq.
    let (seq, wire) = &outbox.pending_after(None, 1).unwrap()[0];
    assert_eq!(protocol::open(wire, |_| Some(key.public_key())).unwrap().seq, *seq);
    // Acked entries' files are gone; the cursor outlives the entry that carried it.
    assert!(!entry_path(&dir.path().join("outbox"), 1).exists());
    assert_eq!(outbox.apply_ack(&Ack::from_seqs("d", [2])).unwrap(), 1);
    drop(outbox);
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    assert_eq!((outbox.stats().messages, outbox.prediction_cursor().unwrap()), (0, Some(42)));
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 4, "seqs go on after everything was acked");
}

#[test]
fn the_byte_bound_drops_the_oldest_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    let outbox = Outbox::open(dir.path(), 2_000, &AtRest::clear()).unwrap();
    for _ in 0..10 {
        outbox.append(&key, &event(400), None).unwrap();
    }
    let stats = outbox.stats();
    assert!(stats.bytes <= 2_000, "{stats:?}");
    assert_eq!(stats.messages + outbox.dropped(), 10);
    let first = outbox.pending_after(None, 1).unwrap()[0].0;
    assert_eq!(first, 10 - stats.messages + 1, "the oldest go first");
    let files = std::fs::read_dir(dir.path().join("outbox")).unwrap().filter_map(Result::ok);
    let entries = files.filter(|e| e.file_name().to_string_lossy().ends_with(".env")).count();
    assert_eq!(entries as u64, stats.messages, "dropped entries leave the disk too");
}

/// A healthy outbox in `dir` that handed out `n` seqs (closed again); returns the last.
fn filled(dir: &Path, key: &SigningKey, n: usize) -> u64 {
    let outbox = Outbox::open(dir, 1 << 20, &AtRest::clear()).unwrap();
    assert!(outbox.recovered().is_none());
    (0..n).map(|_| outbox.append(key, &event(50), Some(3)).unwrap()).last().unwrap_or(0)
}

/// Overwrites every file of the outbox with garbage of the same size (what a dying card
/// leaves), keeping the directory.
fn ruin(outbox_dir: &Path) {
    for entry in std::fs::read_dir(outbox_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let len = std::fs::metadata(&path).unwrap().len().max(64) as usize;
            std::fs::write(&path, vec![0xA5; len]).unwrap();
        }
    }
}

#[test]
fn a_damaged_outbox_is_quarantined_and_seqs_continue_above_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    filled(dir.path(), &key, 3);
    assert_eq!(read_high_water(&dir.path().join(SEQ_FILE)), Some(3));
    ruin(&dir.path().join("outbox"));
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    let r = outbox.recovered().expect("the damage was noticed").clone();
    assert_eq!(r.next_seq, 4, "above every seq the damaged outbox handed out");
    let moved_to = r.moved_to.expect("moved aside");
    assert!(moved_to.starts_with(dir.path().join("quarantine")) && moved_to.exists(), "{moved_to:?}");
    assert!(r.what.contains("seqs below 4"), "{}", r.what);
    assert_eq!(outbox.stats().messages, 0, "what was in it is gone, and said so");
    assert_eq!(outbox.prediction_cursor().unwrap(), None);
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 4);
    drop(outbox);
    // Healthy again: nothing to recover, no gap.
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    assert!(outbox.recovered().is_none());
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 5);
}

#[test]
fn an_outbox_recovered_short_goes_on_above_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    filled(dir.path(), &key, 3);
    // As if seqs 4–10 had been handed out and their files lost.
    write_high_water(&dir.path().join(SEQ_FILE), 10).unwrap();
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    let r = outbox.recovered().expect("noticed").clone();
    assert_eq!((r.next_seq, r.moved_to), (11, None));
    assert!(r.what.contains("telemetry 4–10"), "{}", r.what);
    assert_eq!(outbox.stats().messages, 3, "what it still holds stays");
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 11);
}

#[test]
fn without_a_readable_mark_a_replacement_starts_at_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    filled(dir.path(), &key, 1);
    // A flipped digit: the checksum no longer holds, so it is no mark at all.
    let text = std::fs::read_to_string(dir.path().join(SEQ_FILE)).unwrap();
    std::fs::write(dir.path().join(SEQ_FILE), text.replacen('1', "7", 1)).unwrap();
    assert_eq!(read_high_water(&dir.path().join(SEQ_FILE)), None);
    ruin(&dir.path().join("outbox"));
    let before = now_ms();
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    let next = outbox.recovered().expect("quarantined").next_seq;
    assert!(next >= before, "{next} < {before}");
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), next);
    assert_eq!(read_high_water(&dir.path().join(SEQ_FILE)), Some(next), "written again");
}

#[test]
fn a_locked_outbox_is_an_error_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    assert!(matches!(Outbox::open(dir.path(), 1 << 20, &AtRest::clear()), Err(OutboxError::Locked(_))));
    assert!(!dir.path().join("quarantine").exists(), "nothing moved aside");
}

#[test]
fn an_outbox_written_by_the_sled_version_is_rewritten_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    // The sled layout: entries (big-endian seq → stored envelope) and meta.
    let wires: Vec<Vec<u8>> = (1..=3u64)
        .map(|seq| protocol::seal(&key, seq, now_ms(), &messages::encode(&event(20))).unwrap())
        .collect();
    {
        let db = sled::open(dir.path().join("outbox")).unwrap();
        let entries = db.open_tree("entries").unwrap();
        let meta = db.open_tree("meta").unwrap();
        for (seq, wire) in (1..=3u64).zip(&wires) {
            entries.insert(seq.to_be_bytes(), wire.as_slice()).unwrap();
        }
        meta.insert(b"next_seq", &4u64.to_be_bytes()).unwrap();
        meta.insert(b"prediction_cursor", &77u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    assert!(outbox.recovered().is_none(), "{:?}", outbox.recovered());
    let pending = outbox.pending_after(None, 10).unwrap();
    assert_eq!(pending.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(pending[1].1, wires[1], "byte for byte: a resend dedupes at the coordinator");
    assert_eq!(outbox.prediction_cursor().unwrap(), Some(77));
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 4);
    assert!(!migrate::is_sled(&dir.path().join("outbox")), "the sled files are gone");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("outbox.") && n != SEQ_FILE)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_rewrite_cut_short_between_its_renames_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    filled(dir.path(), &key, 2);
    // The new layout complete beside, the old one already renamed away.
    std::fs::rename(dir.path().join("outbox"), dir.path().join("outbox.new")).unwrap();
    let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
    assert_eq!(outbox.stats().messages, 2);
    assert_eq!(outbox.append(&key, &event(10), None).unwrap(), 3);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    /// Bytes flipped anywhere in the outbox's files: it opens (damaged or not), and every
    /// new seq is above every seq handed out before — never a replay at the coordinator.
    #[test]
    fn flipped_bytes_anywhere_never_stop_the_outbox_nor_reuse_a_seq(
        flips in proptest::collection::vec((0usize..32, 0.0f64..1.0, 1u8..=255), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let used = filled(dir.path(), &key, 20);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path()).filter(|p| p.is_file()))
            .collect();
        files.sort();
        for (file, at, mask) in flips {
            let path = &files[file % files.len()];
            let mut bytes = std::fs::read(path).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let i = ((bytes.len() - 1) as f64 * at) as usize;
            bytes[i] ^= mask;
            std::fs::write(path, bytes).unwrap();
        }
        let outbox = Outbox::open(dir.path(), 1 << 20, &AtRest::clear()).unwrap();
        let next = outbox.append(&key, &event(50), None).unwrap();
        proptest::prop_assert!(next > used, "seq {next} after {used}");
    }
}

#[test]
fn urgent_entries_are_listed_until_acked_dropped_or_the_outbox_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    let at_rest = AtRest::clear();
    {
        let outbox = Outbox::open(dir.path(), 1 << 20, &at_rest).unwrap();
        for _ in 0..3 {
            outbox.append(&key, &event(10), None).unwrap();
        }
        let state = outbox.append_urgent(&key, &event(10)).unwrap();
        outbox.append(&key, &event(10), None).unwrap();
        let later = outbox.append_urgent(&key, &event(10)).unwrap();
        assert_eq!(outbox.urgent(), vec![state, later]);
        // Readable on their own, ahead of the three older entries.
        let wires = outbox.read_seqs(outbox.urgent()).unwrap();
        assert_eq!(wires.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![state, later]);
        assert_eq!(protocol::open(&wires[0].1, |_| Some(key.public_key())).unwrap().seq, state);
        outbox.apply_ack(&Ack::from_seqs("d", [state])).unwrap();
        assert_eq!(outbox.urgent(), vec![later]);
        assert_eq!(outbox.read_seqs(vec![state, later]).unwrap().len(), 1, "an acked entry is skipped");
    }
    // The mark is not kept: after a restart the backlog goes oldest first.
    let outbox = Outbox::open(dir.path(), 1 << 20, &at_rest).unwrap();
    assert!(outbox.urgent().is_empty());
    assert_eq!(outbox.stats().messages, 5);
    // The byte bound drops an urgent entry like any other, and its mark with it.
    let small = tempfile::tempdir().unwrap();
    let bounded = Outbox::open(small.path(), 1 << 20, &at_rest).unwrap();
    let first = bounded.append_urgent(&key, &event(400_000)).unwrap();
    bounded.append(&key, &event(400_000), None).unwrap();
    assert_eq!(bounded.urgent(), vec![first]);
    bounded.append(&key, &event(400_000), None).unwrap();
    assert!(bounded.urgent().is_empty());
    assert_eq!(bounded.dropped(), 1);
}
