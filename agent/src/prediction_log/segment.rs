//! One segment of the prediction log: an append-only file `predictions/seg-<first id>.log` of
//! checksummed frames, indexed in memory by blocks of [`BLOCK_FRAMES`] frames.
//!
//! # File format
//! An 8-byte header ([`MAGIC`]), then frames, each
//! `MARK (4) ‖ len u32 LE ‖ id u64 LE ‖ crc32 u32 LE (over len ‖ id ‖ payload) ‖ payload`,
//! where the payload is what [`super::encode`] makes of a record. 20 bytes per record on top
//! of the record itself (≈ 8 % for a breast_cancer-sized one).
//!
//! # Damage
//! A frame whose checksum fails — bytes a worn card flipped — is skipped, its id remembered
//! when its header still names one in place, and reading resumes at the next frame that
//! checks out (found by its mark). A segment therefore never stops the agent and one flipped
//! byte costs one record, not a segment. A tail that stops inside a frame (a write cut short
//! by a crash or a full disk) is cut off at open.
//!
//! # Memory
//! A block index entry (32 bytes) per [`BLOCK_FRAMES`] records — ≈ 0.5 bytes per record — and
//! nothing else: reads go through the OS's page cache with positioned reads, so the log has no
//! cache of its own to grow under load.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{LogError, decode};
use crate::at_rest::AtRest;

/// The first bytes of every segment file (format 1).
pub(super) const MAGIC: [u8; 8] = *b"OPLOG\0\0\x01";
/// The first bytes of every frame: what reading resumes at after damage.
const MARK: [u8; 4] = *b"\xA7OPR";
/// Mark, length, id and checksum.
pub(super) const FRAME_HEADER: usize = 4 + 4 + 8 + 4;
/// Largest payload a frame may claim; a larger length is damage.
pub(super) const MAX_PAYLOAD: usize = 64 << 20;
/// Ids are handed out from 1 up: a frame naming one this high is damage (or forged), and
/// keeps every id sum below overflowing.
const MAX_ID: u64 = 1 << 62;
/// Records per index entry.
const BLOCK_FRAMES: u32 = 64;
/// How many records from the end a segment's open decodes for its newest readable one.
const NEWEST_TRIES: usize = 64;
/// Damaged regions remembered per segment (to answer "unreadable", not "unknown").
const DAMAGED_KEPT: usize = 4096;
/// Bytes read at a time when a segment is scanned at open.
const SCAN_CHUNK: usize = 1 << 20;

/// A run of consecutive frames: where it starts and the ids it holds.
#[derive(Debug, Clone, Copy)]
struct Block {
    offset: u64,
    min_id: u64,
    max_id: u64,
    frames: u32,
}

pub(super) struct Segment {
    pub(super) path: PathBuf,
    file: File,
    /// Bytes in the file that hold whole frames (appends go here).
    len: u64,
    blocks: Vec<Block>,
    /// Ids that may have been in damaged frames, as inclusive ranges: those between the
    /// whole frames on either side of a damaged region (ids are written in order).
    damaged: Vec<(u64, u64)>,
    /// The id the segment is named after.
    pub(super) first_id: u64,
    /// Highest id held (0 when empty).
    pub(super) max_id: u64,
    /// Newest record time in this segment (unix ms), for age eviction.
    pub(super) newest_at_ms: u64,
    pub(super) records: u64,
    /// Written since the last sync.
    dirty: bool,
}

/// What opening a segment found wrong with it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Damage {
    /// Damaged regions skipped (each one lost at least one record).
    pub(super) regions: u64,
    /// Bytes skipped in them.
    pub(super) bytes: u64,
    /// Bytes cut off the end: a frame whose write was cut short.
    pub(super) torn_tail: u64,
}

/// One step through a run of frames.
enum Step<'a> {
    Frame {
        id: u64,
        payload: &'a [u8],
        next: usize,
    },
    /// Not a frame that checks out; `id` is what its header says when the header is whole.
    Damaged {
        id: Option<u64>,
    },
    /// The bytes end inside a frame (or its header).
    Short,
}

/// Reads the frame at `at` of `buf`.
fn step(buf: &[u8], at: usize) -> Step<'_> {
    let Some(header) = buf.get(at..at + FRAME_HEADER) else { return Step::Short };
    if header[..4] != MARK {
        return Step::Damaged { id: None };
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(&header[8..16]);
    let id = u64::from_le_bytes(id_bytes);
    let crc = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    if len > MAX_PAYLOAD || id == 0 || id >= MAX_ID {
        return Step::Damaged { id: None };
    }
    let start = at + FRAME_HEADER;
    let Some(payload) = buf.get(start..start + len) else { return Step::Short };
    if checksum(len as u32, id, payload) != crc {
        return Step::Damaged { id: Some(id) };
    }
    Step::Frame { id, payload, next: start + len }
}

fn checksum(len: u32, id: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&id.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The next place at or after `from` where a frame's mark starts (`None`: none in `buf`).
fn find_mark(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(MARK.len()).position(|w| w == MARK).map(|p| from + p)
}

/// Appends one frame for record `id` to `out`.
pub(super) fn put_frame(out: &mut Vec<u8>, id: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&MARK);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&checksum(len, id, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A record read back: its stored bytes, or the news that its frame is damaged.
pub(super) enum Found {
    Stored(Vec<u8>),
    Damaged,
}

/// Frames of a segment as they come from a scan or a read: `(id, Ok(stored bytes))`, or
/// `(id, Err(()))` for a damaged frame whose header named `id`.
pub(super) type Frames = Vec<(u64, Result<Vec<u8>, ()>)>;

/// Frames from several segments, each with its segment's place in the list.
pub(super) type Tagged = Vec<(u64, usize, Result<Vec<u8>, ()>)>;

impl Segment {
    /// Creates an empty segment for ids from `first_id` (synced, so it survives a crash).
    pub(super) fn create(root: &Path, first_id: u64) -> Result<Segment, LogError> {
        let path = segment_path(root, first_id);
        let io = |source| LogError::Io { path: path.clone(), source };
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io)?;
        if let Err(e) = file.write_all_at(&MAGIC, 0).and_then(|()| file.sync_all()) {
            // A full disk: leave no empty file behind to be in the way of the next attempt.
            let _ = std::fs::remove_file(&path);
            return Err(io(e));
        }
        if let Ok(dir) = File::open(root) {
            let _ = dir.sync_all();
        }
        Ok(Segment::empty(path, file, first_id))
    }

    /// A segment holding nothing yet (its header only).
    fn empty(path: PathBuf, file: File, first_id: u64) -> Segment {
        Segment {
            path,
            file,
            len: MAGIC.len() as u64,
            blocks: Vec::new(),
            damaged: Vec::new(),
            first_id,
            max_id: 0,
            newest_at_ms: 0,
            records: 0,
            dirty: false,
        }
    }

    /// Opens a segment file and indexes it: frames that do not check out are skipped
    /// (reported in [`Damage`]), a torn tail is cut off.
    pub(super) fn open(path: &Path, first_id: u64, at_rest: &AtRest) -> Result<(Segment, Damage), LogError> {
        let io = |source| LogError::Io { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut segment = Segment::empty(path.to_owned(), file, first_id);
        let mut damage = Damage::default();
        if file_len < MAGIC.len() as u64 {
            // Created but its header never reached the disk whole: an empty segment.
            segment.file.set_len(0).map_err(io)?;
            segment.file.write_all_at(&MAGIC, 0).map_err(io)?;
            damage.torn_tail = file_len;
            return Ok((segment, damage));
        }
        let good_len = segment.scan(file_len, &mut damage).map_err(io)?.max(MAGIC.len() as u64);
        if good_len < file_len {
            // A write cut short: nothing after it was ever acknowledged as on disk.
            segment.file.set_len(good_len).map_err(io)?;
            damage.torn_tail = file_len - good_len;
            tracing::warn!(
                segment = %path.display(),
                bytes = damage.torn_tail,
                "prediction log: cut off the end of a segment that stops inside a record (a write cut short)"
            );
        }
        if segment.read_upto(0, MAGIC.len()).map_err(io)? != MAGIC {
            segment.file.write_all_at(&MAGIC, 0).map_err(io)?;
        }
        segment.len = good_len;
        segment.newest_at_ms = segment.newest_at_ms(at_rest);
        Ok((segment, damage))
    }

    /// Reads the file from the header on, indexing every frame that checks out; returns where
    /// the whole frames end (damage that runs to the end of the file is a torn tail: a write
    /// cut short by a crash, a power cut or a full disk).
    fn scan(&mut self, file_len: u64, damage: &mut Damage) -> std::io::Result<u64> {
        let mut buf: Vec<u8> = Vec::new();
        // `buf[0]` is at file offset `base`; `at` is the next place in `buf` to read from.
        let mut base = 0u64;
        let mut at = MAGIC.len();
        let mut eof = false;
        // Bytes wanted in `buf` after `at` before the next step.
        let mut want = FRAME_HEADER;
        // Where the damaged region being skipped started, and the id its header named.
        let mut damaged_from: Option<(u64, Option<u64>)> = None;
        // The id of the last whole frame read.
        let mut last_good: Option<u64> = None;
        if self.read_upto(0, MAGIC.len())? != MAGIC {
            // The header itself is damaged (the frames after it may still be fine).
            damaged_from = Some((0, None));
        }
        loop {
            if !eof && buf.len().saturating_sub(at) < want {
                let keep_from = at.min(buf.len());
                buf.drain(..keep_from);
                base += keep_from as u64;
                at -= keep_from;
                let read_from = base + buf.len() as u64;
                let more = self.read_upto(read_from, want.max(SCAN_CHUNK))?;
                eof = read_from + more.len() as u64 >= file_len || more.is_empty();
                buf.extend_from_slice(&more);
                want = FRAME_HEADER;
            }
            if let Some((from, named)) = damaged_from {
                // Skipping damage: look for the next mark that starts a frame that checks out.
                match find_mark(&buf, at) {
                    Some(mark) => {
                        at = mark;
                        match step(&buf, at) {
                            Step::Frame { id, .. } => {
                                damaged_from = None;
                                self.note_damage(damage, from, base + at as u64);
                                self.remember_damaged(last_good, Some(id), named);
                            }
                            Step::Short if !eof => want = buf.len() - at + SCAN_CHUNK,
                            Step::Damaged { .. } | Step::Short => at += 1,
                        }
                    }
                    None if eof => {
                        // Nothing whole after it: a torn tail, cut off where it starts.
                        self.remember_damaged(last_good, None, named);
                        return Ok(from);
                    }
                    None => {
                        // Keep the last bytes: a mark may straddle the next read.
                        at = buf.len().saturating_sub(MARK.len() - 1).max(at);
                        want = buf.len() - at + SCAN_CHUNK;
                    }
                }
                continue;
            }
            match step(&buf, at) {
                Step::Frame { id, next, .. } => {
                    self.index(id, base + at as u64);
                    last_good = Some(id);
                    at = next;
                }
                Step::Damaged { id } => {
                    damaged_from = Some((base + at as u64, id));
                    at += 1;
                }
                Step::Short if !eof => want = buf.len().saturating_sub(at) + SCAN_CHUNK,
                Step::Short if at >= buf.len() => return Ok(base + at as u64),
                Step::Short => {
                    // A frame cut short, or a damaged length pointing past the end: look on
                    // for a frame that checks out before deciding which.
                    damaged_from = Some((base + at as u64, None));
                    at += 1;
                }
            }
        }
    }

    fn note_damage(&mut self, damage: &mut Damage, from: u64, to: u64) {
        damage.regions += 1;
        damage.bytes += to.saturating_sub(from);
        tracing::error!(
            segment = %self.path.display(),
            from,
            to,
            "prediction log: damaged bytes skipped (the records there are lost; the rest of the segment reads)"
        );
    }

    /// Notes the ids a damaged region may have held: those between the whole frames before
    /// (`before`) and after it (`after`), or the id its header `named` when that is all there
    /// is to go on (a flipped header can name anything, so only a plausible one).
    fn remember_damaged(&mut self, before: Option<u64>, after: Option<u64>, named: Option<u64>) {
        let low = before.map_or(self.first_id, |id| id + 1);
        let range = match (after, named) {
            (Some(after), _) if after > low => Some((low, after - 1)),
            (_, Some(named)) if named >= low && named - low < 1 << 20 => Some((low, named)),
            _ => None,
        };
        if let Some(range) = range {
            if self.damaged.len() >= DAMAGED_KEPT {
                self.damaged.remove(0);
            }
            self.damaged.push(range);
        }
    }

    /// Up to `n` bytes from `offset` (fewer at the end of the file).
    fn read_upto(&self, offset: u64, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        let mut filled = 0;
        while filled < n {
            match self.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn index(&mut self, id: u64, offset: u64) {
        match self.blocks.last_mut() {
            Some(block) if block.frames < BLOCK_FRAMES => {
                block.min_id = block.min_id.min(id);
                block.max_id = block.max_id.max(id);
                block.frames += 1;
            }
            _ => self.blocks.push(Block { offset, min_id: id, max_id: id, frames: 1 }),
        }
        self.max_id = self.max_id.max(id);
        self.records += 1;
    }

    /// The newest time among the last frames that still read.
    fn newest_at_ms(&self, at_rest: &AtRest) -> u64 {
        let mut newest = 0;
        let mut tried = 0;
        for i in (0..self.blocks.len()).rev() {
            let Ok(frames) = self.block_frames(i) else { break };
            for (id, stored) in frames.iter().rev() {
                if let Ok(stored) = stored
                    && let Ok(record) = decode(at_rest, *id, stored)
                {
                    newest = newest.max(record.at_ms);
                }
                tried += 1;
            }
            if newest > 0 || tried >= NEWEST_TRIES {
                break;
            }
        }
        newest
    }

    /// The frames of block `i`, in file order.
    fn block_frames(&self, i: usize) -> std::io::Result<Frames> {
        let start = self.blocks[i].offset;
        let end = self.blocks.get(i + 1).map_or(self.len, |b| b.offset);
        let buf = self.read_upto(start, (end - start) as usize)?;
        let mut out = Vec::with_capacity(self.blocks[i].frames as usize);
        let mut at = 0;
        while at < buf.len() {
            match step(&buf, at) {
                Step::Frame { id, payload, next } => {
                    out.push((id, Ok(payload.to_vec())));
                    at = next;
                }
                Step::Damaged { id } => {
                    if let Some(id) = id {
                        out.push((id, Err(())));
                    }
                    at = find_mark(&buf, at + 1).unwrap_or(buf.len());
                }
                Step::Short => {
                    // Damage since open (the block's bytes were whole then).
                    at = find_mark(&buf, at + 1).unwrap_or(buf.len());
                }
            }
        }
        Ok(out)
    }

    /// Record `id`'s stored bytes, if this segment holds it.
    pub(super) fn find(&self, id: u64) -> std::io::Result<Option<Found>> {
        // A damaged frame's header may name another record's id: a whole frame wins.
        let mut damaged = self.damaged.iter().any(|&(low, high)| low <= id && id <= high);
        for (i, block) in self.blocks.iter().enumerate() {
            if block.min_id <= id && id <= block.max_id {
                for (found, stored) in self.block_frames(i)? {
                    match stored {
                        Ok(stored) if found == id => return Ok(Some(Found::Stored(stored))),
                        Err(()) if found == id => damaged = true,
                        _ => {}
                    }
                }
            }
        }
        Ok(damaged.then_some(Found::Damaged))
    }

    /// Adds to `out` the frames with ids ≥ `from` from every block that may hold one of the
    /// `limit` lowest such ids across the segments read so far (`out` comes back unsorted
    /// and possibly longer than `limit`: the caller sorts and cuts). Ids reach the writer
    /// almost, not exactly, in order, so a block is skipped only when its lowest id is above
    /// the `limit`-th lowest found.
    pub(super) fn collect_from(
        &self,
        from: u64,
        limit: usize,
        tag: usize,
        out: &mut Tagged,
    ) -> std::io::Result<()> {
        if self.max_id < from {
            return Ok(());
        }
        let mut cutoff: Option<u64> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            if block.max_id < from {
                continue;
            }
            if out.len() >= limit && cutoff.is_none() {
                out.sort_unstable_by_key(|(id, _, stored)| (*id, stored.is_err()));
                out.dedup_by_key(|(id, _, _)| *id);
                out.truncate(limit);
                cutoff = out.last().map(|(id, _, _)| *id);
            }
            if cutoff.is_some_and(|cutoff| block.min_id > cutoff) {
                continue;
            }
            out.extend(
                self.block_frames(i)?.into_iter().filter(|(id, _)| *id >= from).map(|(id, s)| (id, tag, s)),
            );
            cutoff = None;
        }
        Ok(())
    }

    /// Appends `buf` (whole frames; `frames` gives each one's id and place in `buf`). A failed
    /// write is cut back off, so the file never keeps a partial frame.
    pub(super) fn append(
        &mut self,
        buf: &[u8],
        frames: &[(u64, usize)],
        newest_at_ms: u64,
    ) -> std::io::Result<()> {
        if let Err(e) = self.file.write_all_at(buf, self.len) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        for &(id, at) in frames {
            self.index(id, self.len + at as u64);
        }
        self.len += buf.len() as u64;
        self.newest_at_ms = self.newest_at_ms.max(newest_at_ms);
        self.dirty = true;
        Ok(())
    }

    /// Makes what was appended durable (one `fdatasync`, only when something was written).
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The highest id of a frame found damaged at open.
    pub(super) fn damaged_max(&self) -> Option<u64> {
        self.damaged.iter().map(|&(_, high)| high).max()
    }

    /// Bytes of the file.
    pub(super) fn size(&self) -> u64 {
        self.len
    }
}

pub(super) fn segment_path(root: &Path, first_id: u64) -> PathBuf {
    root.join(format!("seg-{first_id:020}.log"))
}

pub(super) fn total_size(segments: &[Segment]) -> u64 {
    segments.iter().map(Segment::size).sum()
}

/// Moves a segment that cannot be read at all to `root/quarantine/` (kept for inspection, out
/// of the budget).
pub(super) fn quarantine(root: &Path, path: &Path, why: &str) -> Result<(), LogError> {
    let target = crate::damage::move_aside(path, &root.join("quarantine"))
        .map_err(|source| LogError::Io { path: path.to_owned(), source })?;
    tracing::error!(
        segment = %path.display(),
        moved_to = %target.display(),
        why,
        "prediction log segment cannot be read: quarantined, serving goes on (its records are lost to feedback joins)"
    );
    Ok(())
}

/// Tests only: where record `id`'s frame ends in a segment file's bytes.
#[cfg(test)]
pub(super) fn frame_end(bytes: &[u8], id: u64) -> Option<usize> {
    let mut at = MAGIC.len();
    while let Step::Frame { id: found, next, .. } = step(bytes, at) {
        if found == id {
            return Some(next);
        }
        at = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(ids: &[u64]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for &id in ids {
            put_frame(&mut out, id, &vec![id as u8; 40 + (id as usize % 7)]);
        }
        out
    }

    fn opened(bytes: &[u8]) -> (Segment, Damage, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        std::fs::write(&path, bytes).unwrap();
        let (segment, damage) = Segment::open(&path, 1, &AtRest::clear()).unwrap();
        (segment, damage, dir)
    }

    fn ids_of(segment: &Segment) -> Vec<u64> {
        let mut out = Vec::new();
        segment.collect_from(0, usize::MAX, 0, &mut out).unwrap();
        out.sort_unstable_by_key(|(id, _, _)| *id);
        out.into_iter().filter(|(_, _, s)| s.is_ok()).map(|(id, _, _)| id).collect()
    }

    #[test]
    fn frames_read_back_by_id_and_in_order() {
        let ids: Vec<u64> = (1..=300).collect();
        let (segment, damage, _dir) = opened(&frames(&ids));
        assert_eq!(damage, Damage::default());
        assert_eq!(segment.records, 300);
        assert_eq!(ids_of(&segment), ids);
        match segment.find(123).unwrap() {
            Some(Found::Stored(bytes)) => assert_eq!(bytes, vec![123u8; 40 + 123 % 7]),
            _ => panic!("123 not found"),
        }
        assert!(segment.find(301).unwrap().is_none());
    }

    #[test]
    fn a_flipped_byte_costs_one_record_and_the_rest_read() {
        let ids: Vec<u64> = (1..=300).collect();
        let mut bytes = frames(&ids);
        // Inside record 150's payload.
        let at = MAGIC.len()
            + (0..149).map(|i| FRAME_HEADER + 40 + ((i + 1) % 7)).sum::<usize>()
            + FRAME_HEADER
            + 5;
        bytes[at] ^= 0x10;
        let (segment, damage, _dir) = opened(&bytes);
        assert_eq!(damage.regions, 1, "{damage:?}");
        let read = ids_of(&segment);
        assert_eq!(read.len(), 299);
        assert!(!read.contains(&150));
        assert!(matches!(segment.find(150).unwrap(), Some(Found::Damaged)), "named as damaged, not unknown");
        assert!(matches!(segment.find(151).unwrap(), Some(Found::Stored(_))));
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_go_on_after_it() {
        let ids: Vec<u64> = (1..=10).collect();
        let whole = frames(&ids);
        let mut bytes = whole.clone();
        bytes.truncate(whole.len() - 7);
        let (mut segment, damage, _dir) = opened(&bytes);
        assert_eq!(segment.records, 9);
        assert!(damage.torn_tail > 0 && damage.regions <= 1, "{damage:?}");
        let mut more = Vec::new();
        put_frame(&mut more, 11, b"eleven");
        segment.append(&more, &[(11, 0)], 0).unwrap();
        let (reopened, damage) = Segment::open(&segment.path, 1, &AtRest::clear()).unwrap();
        assert_eq!(damage, Damage::default());
        assert_eq!(ids_of(&reopened), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
    }

    #[test]
    fn bytes_flipped_at_random_never_panic_and_lose_only_what_they_touch() {
        let ids: Vec<u64> = (1..=200).collect();
        let clean = frames(&ids);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..300 {
            let mut bytes = clean.clone();
            let flips = 1 + (seed % 5) as usize;
            for _ in 0..flips {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (seed % 8);
            }
            let (segment, _damage, _dir) = opened(&bytes);
            let read = ids_of(&segment);
            // Each flip costs at most two records (one inside a frame header can merge a
            // frame with its neighbour only through a checksum that then fails).
            assert!(read.len() >= 200 - 2 * flips, "{} of 200 read after {flips} flips", read.len());
            let mut sorted = read.clone();
            sorted.dedup();
            assert_eq!(sorted, read, "no record read twice");
            for id in read {
                assert!(matches!(segment.find(id).unwrap(), Some(Found::Stored(_))));
            }
        }
    }
}
