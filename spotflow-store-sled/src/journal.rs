//! The append journal: what makes an append durable with one fdatasync.
//!
//! sled's flush costs two round trips to the disk once it is made power-loss safe (its write and
//! `sync_file_range`, then the fdatasync of its log that `sync_file_range` lacks). So an append
//! group is written to this journal and fdatasync'd once, and applied to sled without a flush.
//! Every few MiB (and at close or a state change), sled is flushed and the journal emptied.
//!
//! At open, records whose sequence number is above the highest one sled recovered are applied
//! again: they are exactly the appends that were acknowledged but not yet flushed by sled.
//!
//! Removals of acknowledged messages are noted in the journal too, written but not synced: they
//! survive the process being killed (the kernel holds the write) and reach the disk with the next
//! append's fdatasync. At open they are applied again, so a device killed while sending redelivers
//! only what was in flight. (A removal lost to a power cut is a redelivery, which the platform
//! drops by key.)
//!
//! The file is written once with zeros ([`PREALLOCATED`] bytes) and then overwritten in place:
//! an fdatasync of blocks that already belong to the file flushes the data alone, where an append
//! also has to commit the file's new size (measured here: ≈ 7,000–8,000 overwrites + fdatasync per
//! second against ≈ 5,000 appends). Emptying the journal starts a new generation instead of
//! truncating it.
//!
//! Layout: a 16-byte header `[MAGIC][generation: u64 LE]`, then frames `[len: u32 LE][crc32:
//! u32 LE][body]`, the checksum covering the generation and the body, one frame per append group
//! (body `[1]` then `[seq: u64 LE][len: u32 LE][message value]` per message) or per removal
//! (body `[2]` then `[seq: u64 LE]` per message). Reading stops at the first frame that is short,
//! fails its checksum or is malformed: a torn write at the end (a group that was never
//! acknowledged), or the frames of an older generation behind the current ones. A group is one
//! frame, so no part of an unacknowledged group can be read as valid after a later group that
//! overwrote its start. Records are never appended after an open before the journal was emptied
//! (a new generation), so frames of a torn write cannot resurface either.

use std::fs::File;
#[cfg(unix)]
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[cfg(windows)]
use positional::FileExt;

/// Unix's positional reads and writes, on Windows: `seek_read`/`seek_write` move the file's
/// cursor too, which the journal never uses.
#[cfg(windows)]
mod positional {
    use std::io::{Error, ErrorKind, Result};
    use std::os::windows::fs::FileExt as _;

    pub trait FileExt {
        fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<()>;
        fn write_all_at(&self, buf: &[u8], at: u64) -> Result<()>;
    }

    impl FileExt for std::fs::File {
        fn read_exact_at(&self, mut buf: &mut [u8], mut at: u64) -> Result<()> {
            while !buf.is_empty() {
                match self.seek_read(buf, at) {
                    Ok(0) => return Err(Error::from(ErrorKind::UnexpectedEof)),
                    Ok(n) => {
                        buf = &mut buf[n..];
                        at += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }

        fn write_all_at(&self, mut buf: &[u8], mut at: u64) -> Result<()> {
            while !buf.is_empty() {
                match self.seek_write(buf, at) {
                    Ok(0) => return Err(Error::from(ErrorKind::WriteZero)),
                    Ok(n) => {
                        buf = &buf[n..];
                        at += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// The journal is emptied (after a sled flush) once it grows past this.
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes of the file written with zeros up front.
pub const PREALLOCATED: u64 = CHECKPOINT_BYTES + 1024 * 1024;

/// Starts the header.
const MAGIC: [u8; 8] = *b"\xff\xff\xff\xffSFJ2";
const FILE_HEADER: u64 = 16;
const FRAME_HEADER: usize = 8;
const APPENDS: u8 = 1;
const REMOVALS: u8 = 2;

/// A record of the journal.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// An acknowledged append: its sequence number and message value.
    Append(u64, Vec<u8>),
    /// Messages removed once the platform acknowledged them.
    Remove(Vec<u64>),
}

/// The journal file of a store.
pub struct Journal {
    file: File,
    path: PathBuf,
    generation: u64,
    /// End of the valid frames (the next frame goes here).
    end: u64,
    /// Where the last frame written starts (for [`Journal::retract_last`]).
    last_frame: Option<u64>,
    /// Bytes the file already holds (written), so that writes below it overwrite.
    allocated: u64,
    /// Emptied since it was opened: appends may go in.
    fresh: bool,
    /// The frame being written, kept between writes: allocating and freeing a large buffer per
    /// group made glibc raise its mmap threshold and fragment the heap (RSS 39 → 79 MiB with a
    /// million messages queued in groups of 1,000).
    frame: Vec<u8>,
}

/// The frame buffer keeps at most this much capacity between writes.
const KEPT_FRAME_CAPACITY: usize = 1024 * 1024;

fn frame_crc(generation: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The entries of a frame body; `None` if it is malformed.
fn parse_body(body: &[u8]) -> Option<Vec<Entry>> {
    let (&kind, mut rest) = body.split_first()?;
    let mut entries = Vec::new();
    match kind {
        APPENDS => {
            while !rest.is_empty() {
                let seq = u64_at(rest, 0)?;
                let len = u32_at(rest, 8)? as usize;
                let value = rest.get(12..12usize.checked_add(len)?)?;
                entries.push(Entry::Append(seq, value.to_vec()));
                rest = &rest[12 + len..];
            }
        }
        REMOVALS => {
            if rest.len() % 8 != 0 {
                return None;
            }
            entries.push(Entry::Remove(rest.chunks_exact(8).filter_map(|b| u64_at(b, 0)).collect()));
        }
        _ => return None,
    }
    Some(entries)
}

/// `len` bytes at `at`, if the file (of `size` bytes) has them. Frames are read one at a time:
/// reading the whole (preallocated) file at once made glibc raise its mmap threshold for good,
/// which fragmented the heap later on.
fn read_at(file: &File, size: u64, at: u64, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    if at.checked_add(len).is_none_or(|end| end > size) {
        return Ok(None);
    }
    let mut buf = vec![0; len as usize];
    file.read_exact_at(&mut buf, at)?;
    Ok(Some(buf))
}

/// A frame header at `at`: its length and checksum.
fn header_at(file: &File, size: u64, at: u64) -> std::io::Result<Option<(u64, u32)>> {
    Ok(read_at(file, size, at, FRAME_HEADER as u64)?.and_then(|h| Some((u64::from(u32_at(&h, 0)?), u32_at(&h, 4)?))))
}

/// The valid frames of a current-format journal, and where they end.
fn read_frames(file: &File, size: u64, generation: u64) -> std::io::Result<(Vec<Entry>, u64)> {
    let mut entries = Vec::new();
    let mut at = FILE_HEADER;
    while let Some((len, crc)) = header_at(file, size, at)? {
        let start = at + FRAME_HEADER as u64;
        let Some(body) = read_at(file, size, start, len)?.filter(|b| len > 0 && frame_crc(generation, b) == crc) else {
            break;
        };
        let Some(parsed) = parse_body(&body) else { break };
        entries.extend(parsed);
        at = start + len;
    }
    Ok((entries, at))
}

impl Journal {
    /// Opens (creating) the journal in the store's directory; returns it with its valid records.
    /// Apply them (durably), then [`Journal::clear`] it before appending.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Vec<Entry>)> {
        let path = dir.join("spotflow-journal");
        let file = spotflow_core::private_fs::open_private_file(&path)?;
        // The file's directory entry must survive a power cut too.
        spotflow_core::sync_dir(dir)?;
        let size = file.metadata()?.len();
        let header = read_at(&file, size, 0, FILE_HEADER)?;
        let (generation, entries, end) = match header.as_deref().and_then(|h| Some((h.get(..8)?, u64_at(h, 8)?))) {
            Some((magic, generation)) if magic == MAGIC => {
                let (entries, end) = read_frames(&file, size, generation)?;
                (generation, entries, end)
            }
            // New (empty, or preallocated and never emptied yet): nothing to replay.
            None => (0, Vec::new(), FILE_HEADER),
            Some((magic, _)) if magic.iter().all(|b| *b == 0) => (0, Vec::new(), FILE_HEADER),
            Some(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a spotflow journal", path.display()),
                ))
            }
        };
        let journal =
            Journal { file, path, generation, end, last_frame: None, allocated: size, fresh: false, frame: Vec::new() };
        Ok((journal, entries))
    }

    /// Appends the records of one group and, with `sync`, makes them durable (one fdatasync).
    /// Without it they survive the process being killed, not a power cut.
    pub fn append(&mut self, records: &[(u64, &[u8])], sync: bool) -> std::io::Result<()> {
        self.write_frame(APPENDS, |body| {
            for (seq, value) in records {
                body.extend_from_slice(&seq.to_le_bytes());
                body.extend_from_slice(&(value.len() as u32).to_le_bytes());
                body.extend_from_slice(value);
            }
        })?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Notes removed messages, without a sync.
    pub fn note_removal(&mut self, seqs: &[u64]) -> std::io::Result<()> {
        self.write_frame(REMOVALS, |body| seqs.iter().for_each(|s| body.extend_from_slice(&s.to_le_bytes())))
    }

    /// Writes a frame after the valid ones. A failed write leaves `end` where it was: the next
    /// frame overwrites it, and a reader stops at its bad checksum meanwhile.
    fn write_frame(&mut self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> std::io::Result<()> {
        if !self.fresh {
            return Err(std::io::Error::other("the journal was not emptied after it was opened"));
        }
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.extend_from_slice(&[0; FRAME_HEADER]);
        frame.push(kind);
        body(&mut frame);
        let written = match u32::try_from(frame.len() - FRAME_HEADER) {
            Ok(len) => {
                let crc = frame_crc(self.generation, &frame[FRAME_HEADER..]);
                frame[..4].copy_from_slice(&len.to_le_bytes());
                frame[4..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
                self.file.write_all_at(&frame, self.end).map(|()| frame.len() as u64)
            }
            Err(_) => Err(std::io::Error::other("append group too large")),
        };
        if frame.capacity() > KEPT_FRAME_CAPACITY {
            frame = Vec::new();
        }
        self.frame = frame;
        let written = written?;
        self.last_frame = Some(self.end);
        self.end += written;
        self.allocated = self.allocated.max(self.end);
        Ok(())
    }

    /// Takes back the last frame written (its group failed afterwards): its header is zeroed, so
    /// that no reader takes it, and the next frame goes in its place.
    pub fn retract_last(&mut self, sync: bool) -> std::io::Result<()> {
        let Some(start) = self.last_frame.take() else { return Ok(()) };
        self.file.write_all_at(&[0; FRAME_HEADER], start)?;
        self.end = start;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Bytes of records since the journal was last emptied.
    pub fn len(&self) -> u64 {
        self.end - FILE_HEADER
    }

    /// Empties the journal (call only once sled holds everything in it durably): a new
    /// generation, whose header makes every frame written so far invalid.
    pub fn clear(&mut self) -> std::io::Result<()> {
        if self.fresh && self.end == FILE_HEADER {
            return Ok(());
        }
        if self.allocated < PREALLOCATED {
            // Only an optimisation: on a (nearly) full disk, frames are appended instead.
            if self.preallocate().is_err() {
                let _ = self.file.set_len(self.allocated);
            }
        }
        let generation = self.generation.wrapping_add(1);
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&generation.to_le_bytes());
        self.file.write_all_at(&header, 0)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.end = FILE_HEADER;
        self.last_frame = None;
        self.fresh = true;
        Ok(())
    }

    fn preallocate(&mut self) -> std::io::Result<()> {
        // Below glibc's mmap threshold (see [`read_at`]).
        let zeros = vec![0u8; 64 * 1024];
        while self.allocated < PREALLOCATED {
            let n = zeros.len().min((PREALLOCATED - self.allocated) as usize);
            self.file.write_all_at(&zeros[..n], self.allocated)?;
            self.allocated += n as u64;
        }
        Ok(())
    }

    /// The journal's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appended(records: &[(u64, &str)]) -> Vec<Entry> {
        records.iter().map(|(s, v)| Entry::Append(*s, v.as_bytes().to_vec())).collect()
    }

    fn reopen(dir: &Path) -> Vec<Entry> {
        Journal::open(dir).unwrap().1
    }

    #[test]
    fn records_round_trip_in_order_and_appends_wait_for_the_first_emptying() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        assert!(entries.is_empty());
        assert!(j.append(&[(1, b"one".as_slice())], true).is_err(), "not emptied since it was opened");
        j.clear().unwrap();
        j.append(&[(1, b"one".as_slice()), (2, b"two".as_slice())], true).unwrap();
        j.note_removal(&[2, 1]).unwrap();
        j.append(&[(3, b"three".as_slice())], false).unwrap();
        assert_eq!(j.len(), (8 + 1 + 2 * 12 + 6) + (8 + 1 + 16) + (8 + 1 + 12 + 5));
        let mut want = appended(&[(1, "one"), (2, "two")]);
        want.push(Entry::Remove(vec![2, 1]));
        want.extend(appended(&[(3, "three")]));
        assert_eq!(reopen(dir.path()), want);
        assert_eq!(std::fs::metadata(dir.path().join("spotflow-journal")).unwrap().len(), PREALLOCATED);
    }

    #[test]
    fn a_torn_or_damaged_frame_ends_the_journal_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spotflow-journal");
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        j.append(&[(1, b"one".as_slice())], true).unwrap();
        let first_end = j.end as usize;
        j.append(&[(2, b"two".as_slice()), (3, b"three".as_slice())], true).unwrap();
        // A flipped byte in the second group drops the whole group, not just one message.
        let mut data = std::fs::read(&path).unwrap();
        data[first_end + FRAME_HEADER + 1 + 12] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(reopen(dir.path()), appended(&[(1, "one")]));
        // A frame cut short at the end of the file.
        std::fs::write(&path, &data[..first_end + 5]).unwrap();
        assert_eq!(reopen(dir.path()), appended(&[(1, "one")]));
    }

    #[test]
    fn a_retracted_frame_is_not_read_and_the_next_one_takes_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        j.append(&[(1, b"one".as_slice())], true).unwrap();
        j.append(&[(2, b"failed".as_slice())], true).unwrap();
        j.retract_last(true).unwrap();
        assert_eq!(reopen(dir.path()), appended(&[(1, "one")]));
        j.append(&[(3, b"three".as_slice())], true).unwrap();
        assert_eq!(reopen(dir.path()), appended(&[(1, "one"), (3, "three")]));
    }

    #[test]
    fn frames_of_an_older_generation_are_not_read_after_the_journal_was_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        j.append(&[(1, b"aaaa".as_slice())], true).unwrap();
        j.append(&[(2, b"bbbb".as_slice())], true).unwrap();
        j.clear().unwrap();
        // Exactly as long as the first frame: the next one read would be the old second frame.
        j.append(&[(3, b"cccc".as_slice())], true).unwrap();
        assert_eq!(reopen(dir.path()), appended(&[(3, "cccc")]));
        // Emptied and reopened: nothing.
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.clear().unwrap();
        assert!(reopen(dir.path()).is_empty());
    }
}
