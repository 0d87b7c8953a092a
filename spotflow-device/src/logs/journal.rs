//! The log journal: the file every accepted record is appended to (one `write`, no `fsync`) before
//! the application's logging call returns, and the checkpoint that says which records already
//! moved into the durable queue.
//!
//! A record written to the journal survives the process being killed (the bytes are in the
//! kernel's page cache); the flusher moves records into the queue (which makes them durable
//! against power loss) at least every batch interval. Each line is a JSON object that starts with
//! `{"journal":"<id>","seq":<n>,`; a record is identified by the journal's id and its sequence
//! number, so a record moved twice (a crash between the move and the checkpoint) is a duplicate the
//! platform drops.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where the journal lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum JournalLocation {
    /// Beside the client's database: `{db}-logs` (and `{db}-logs.pos`).
    #[default]
    BesideDatabase,
    /// This file (and `{file}.pos`).
    File(PathBuf),
    /// In memory: records not yet in the queue are lost when the process ends (for tests, and
    /// for devices without a writable disk).
    Memory,
}

/// The journal's bytes: a file opened for appending, or memory.
#[derive(Debug)]
enum Bytes {
    File {
        append: File,
        read: File,
        path: PathBuf,
    },
    /// The bytes from offset `base` on (what moved is dropped at once).
    Memory {
        bytes: Vec<u8>,
        base: u64,
    },
}

/// The journal and its checkpoint. Not thread-safe: the logger keeps it under its lock.
#[derive(Debug)]
pub(crate) struct Journal {
    bytes: Bytes,
    /// The journal's id: 8 hex digits, made with the journal.
    pub(crate) id: String,
    /// End of the journal (bytes).
    pub(crate) written: u64,
    /// Offset of the first record not yet in the queue.
    pub(crate) moved: u64,
    /// Sequence number of the next record to write.
    pub(crate) next_seq: u64,
    /// Sequence number of the first record not yet in the queue (records before it found in
    /// the journal are skipped: they were moved before a crash that lost the checkpoint's update).
    pub(crate) next_unmoved_seq: u64,
}

/// What the checkpoint file holds: `{id} {offset} {next unmoved seq}`.
fn parse_checkpoint(text: &str) -> Option<(String, u64, u64)> {
    let mut parts = text.split_whitespace();
    let id = parts.next()?.to_owned();
    let offset = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, offset, seq))
}

/// The sequence number of a journal line (`None` for a line that is not a record).
pub(crate) fn line_seq(line: &[u8]) -> Option<u64> {
    // {"journal":"01234567","seq":
    const PREFIX: usize = r#"{"journal":"01234567","seq":"#.len();
    if !line.starts_with(br#"{"journal":""#) || line.get(PREFIX - 8..PREFIX) != Some(br#"","seq":"#) {
        return None;
    }
    let digits = &line[PREFIX..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

impl Journal {
    /// Opens (creating) the journal at `path`, or one in memory.
    pub(crate) fn open(path: Option<&Path>) -> io::Result<Journal> {
        let Some(path) = path else {
            return Ok(Journal {
                bytes: Bytes::Memory { bytes: Vec::new(), base: 0 },
                id: spotflow_core::secure_random::hex(4),
                written: 0,
                moved: 0,
                next_seq: 0,
                next_unmoved_seq: 0,
            });
        };
        let checkpoint = std::fs::read_to_string(checkpoint_path(path)).ok().and_then(|t| parse_checkpoint(&t));
        spotflow_core::private_fs::prepare_private_file(path)?;
        let append = OpenOptions::new().create(true).append(true).open(path)?;
        let mut read = File::open(path)?;
        let mut contents = Vec::new();
        read.read_to_end(&mut contents)?;
        // A record cut by a power loss (no newline yet) is dropped, so the next one starts a line.
        let complete = contents.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < contents.len() {
            append.set_len(complete as u64)?;
            contents.truncate(complete);
        }
        let last_seq = contents[..complete.saturating_sub(1)].rsplit(|&b| b == b'\n').next().and_then(line_seq);
        let (id, moved, next_unmoved_seq) = match checkpoint {
            // An offset past the end: the journal was emptied after the checkpoint was written.
            Some((id, offset, seq)) => (id, if offset > complete as u64 { 0 } else { offset }, seq),
            None => (spotflow_core::secure_random::hex(4), 0, 0),
        };
        let next_seq = last_seq.map_or(next_unmoved_seq, |s| (s + 1).max(next_unmoved_seq));
        let journal = Journal {
            bytes: Bytes::File { append, read, path: path.to_path_buf() },
            id,
            written: complete as u64,
            moved,
            next_seq,
            next_unmoved_seq,
        };
        journal.checkpoint(journal.moved).save()?;
        Ok(journal)
    }

    /// Appends one record (a whole line) in one write.
    pub(crate) fn append(&mut self, line: &[u8]) -> io::Result<()> {
        match &mut self.bytes {
            Bytes::File { append, .. } => append.write_all(line)?,
            Bytes::Memory { bytes, .. } => bytes.extend_from_slice(line),
        }
        self.written += line.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// A reader of unmoved bytes up to offset `to`, to read without the logger's lock (bytes
    /// before `written` never change until the journal is emptied, which only the mover does).
    pub(crate) fn reader(&self, to: u64) -> io::Result<JournalReader> {
        Ok(match &self.bytes {
            Bytes::File { read, .. } => JournalReader::File(read.try_clone()?),
            Bytes::Memory { bytes, base } => JournalReader::Memory(
                bytes[(self.moved - base) as usize..(to.min(self.written) - base) as usize].to_vec(),
            ),
        })
    }

    /// Records (in memory) that everything before `offset` is in the queue and that the next
    /// unmoved record is `next_seq`. Returns the checkpoint to save (outside the logger's lock,
    /// with [`Checkpoint::save`]) and whether to empty the journal after saving it (all of it
    /// moved, and it has grown past `rotate_at`): the checkpoint then already says offset 0.
    pub(crate) fn moved_to(&mut self, offset: u64, next_seq: u64, rotate_at: u64) -> (Checkpoint, bool) {
        self.moved = offset;
        self.next_unmoved_seq = next_seq;
        if let Bytes::Memory { bytes, base } = &mut self.bytes {
            // Memory is not kept for a restart: drop what moved at once.
            bytes.drain(..(offset - *base) as usize);
            *base = offset;
        }
        let rotate =
            matches!(self.bytes, Bytes::File { .. }) && self.moved == self.written && self.written >= rotate_at;
        (self.checkpoint(if rotate { 0 } else { self.moved }), rotate)
    }

    /// Empties the journal if every record in it moved (none was written since
    /// [`Journal::moved_to`] said to). A crash before this leaves records the checkpoint's
    /// sequence number skips, so none is moved twice.
    pub(crate) fn empty_if_moved(&mut self) -> io::Result<()> {
        if self.moved != self.written {
            return Ok(());
        }
        if let Bytes::File { append, .. } = &mut self.bytes {
            append.set_len(0)?;
        }
        self.moved = 0;
        self.written = 0;
        Ok(())
    }

    fn checkpoint(&self, offset: u64) -> Checkpoint {
        match &self.bytes {
            Bytes::File { path, .. } => Checkpoint {
                path: Some(checkpoint_path(path)),
                text: format!("{} {} {}\n", self.id, offset, self.next_unmoved_seq),
            },
            Bytes::Memory { .. } => Checkpoint { path: None, text: String::new() },
        }
    }
}

/// A checkpoint to write: `{id} {offset} {next unmoved seq}` (nothing for a journal in memory).
#[derive(Debug)]
pub(crate) struct Checkpoint {
    path: Option<PathBuf>,
    text: String,
}

impl Checkpoint {
    /// Writes it (a new file renamed over the old one: never half written). No `fsync`: a
    /// checkpoint lost to a power cut only makes records move again, as duplicates.
    pub(crate) fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let tmp = path.with_extension("pos.tmp");
        spotflow_core::private_fs::write_private_file(&tmp, self.text.as_bytes())?;
        std::fs::rename(&tmp, path)
    }
}

/// Reads a range of the journal without its lock.
pub(crate) enum JournalReader {
    File(File),
    /// A copy of the unmoved bytes (from the first unmoved byte on).
    Memory(Vec<u8>),
}

impl JournalReader {
    /// The bytes `[from, to)` (`from` is where the unmoved bytes start).
    pub(crate) fn read(self, from: u64, to: u64) -> io::Result<Vec<u8>> {
        match self {
            JournalReader::File(mut f) => {
                f.seek(SeekFrom::Start(from))?;
                let mut buf = vec![0; (to - from) as usize];
                f.read_exact(&mut buf)?;
                Ok(buf)
            }
            JournalReader::Memory(mut v) => {
                v.truncate((to - from) as usize);
                Ok(v)
            }
        }
    }
}

/// `{journal}.pos`.
fn checkpoint_path(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".pos");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(j: &Journal, seq: u64) -> Vec<u8> {
        format!("{{\"journal\":\"{}\",\"seq\":{seq},\"message\":\"m\"}}\n", j.id).into_bytes()
    }

    #[test]
    fn seq_of_a_line() {
        assert_eq!(line_seq(br#"{"journal":"0123abcd","seq":42,"x":1}"#), Some(42));
        assert_eq!(line_seq(b"garbage"), None);
        assert_eq!(line_seq(br#"{"journal":"0123abcdef","seq":42,"x":1}"#), None);
        let j = Journal::open(None).unwrap();
        assert_eq!(line_seq(&line(&j, 7)), Some(7));
    }

    #[test]
    fn reopened_journal_resumes_after_the_checkpoint_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db-logs");
        let mut j = Journal::open(Some(&path)).unwrap();
        for seq in 0..3 {
            let l = line(&j, seq);
            j.append(&l).unwrap();
        }
        let first_two = line(&j, 0).len() as u64 + line(&j, 1).len() as u64;
        j.moved_to(first_two, 2, u64::MAX).0.save().unwrap();
        let id = j.id.clone();
        drop(j);
        // A power cut in the middle of the next record.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"journal\":\"").unwrap();
        let j = Journal::open(Some(&path)).unwrap();
        assert_eq!((j.id.as_str(), j.moved, j.next_seq, j.next_unmoved_seq), (id.as_str(), first_two, 3, 2));
        let unmoved = j.reader(j.written).unwrap().read(j.moved, j.written).unwrap();
        assert_eq!(line_seq(&unmoved), Some(2));
        assert!(unmoved.ends_with(b"}\n"));
    }

    #[test]
    fn emptied_journal_keeps_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db-logs");
        let mut j = Journal::open(Some(&path)).unwrap();
        let l = line(&j, 0);
        j.append(&l).unwrap();
        let (checkpoint, empty) = j.moved_to(j.written, 1, 1);
        assert!(empty);
        checkpoint.save().unwrap();
        j.empty_if_moved().unwrap();
        assert_eq!((j.written, std::fs::metadata(&path).unwrap().len()), (0, 0));
        drop(j);
        let j = Journal::open(Some(&path)).unwrap();
        assert_eq!((j.next_seq, j.moved, j.written), (1, 0, 0));
    }

    #[test]
    fn memory_journal_forgets_what_moved() {
        let mut j = Journal::open(None).unwrap();
        let (a, b) = (line(&j, 0), line(&j, 1));
        j.append(&a).unwrap();
        j.append(&b).unwrap();
        let c = line(&j, 2);
        j.append(&c).unwrap();
        // Two batches of one pass: offsets count from the journal's start, as in a file.
        let (a_end, b_end) = (a.len() as u64, (a.len() + b.len()) as u64);
        assert!(!j.moved_to(a_end, 1, u64::MAX).1);
        assert!(!j.moved_to(b_end, 2, u64::MAX).1);
        assert_eq!((j.moved, j.written), (b_end, b_end + c.len() as u64));
        assert_eq!(j.reader(j.written).unwrap().read(j.moved, j.written).unwrap(), c);
    }
}
