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
//! A record is `[len: u32 LE][crc32 of body: u32 LE][body]`, body = `[seq: u64 LE][message
//! value]` for an append, `[u64::MAX][seq: u64 LE]...` for a removal. Reading stops at the first
//! record that is short or fails its checksum: a torn write at the end of the journal is an append
//! that was never acknowledged. A failed write is cut off again, so that later records are not
//! hidden behind it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The journal is emptied (after a sled flush) once it grows past this.
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

const HEADER: usize = 8;

/// A record of the journal.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// An acknowledged append: its sequence number and message value.
    Append(u64, Vec<u8>),
    /// Messages removed once the platform acknowledged them.
    Remove(Vec<u64>),
}

/// The body of a removal record starts with this instead of a sequence number.
const REMOVAL: u64 = u64::MAX;

/// The journal file of a store.
pub struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    /// A failed write left bytes past `len` that could not be cut off yet.
    torn: bool,
}

/// Appends one framed record to `buf`.
fn frame(buf: &mut Vec<u8>, head: u64, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&head.to_le_bytes());
    body(buf);
    let body_len = (buf.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

impl Journal {
    /// Opens (creating) the journal in the store's directory; returns it with its valid records.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Vec<Entry>)> {
        let path = dir.join("spotflow-journal");
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        // The file's directory entry must survive a power cut too.
        File::open(dir)?.sync_all()?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut records = Vec::new();
        let mut at = 0;
        while let Some(header) = data.get(at..at + HEADER) {
            let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
            let Some(body) = data.get(at + HEADER..at + HEADER + len) else { break };
            if len < 8 || crc32fast::hash(body) != crc {
                break;
            }
            let head = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
            records.push(if head == REMOVAL {
                Entry::Remove(
                    body[8..].chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())).collect(),
                )
            } else {
                Entry::Append(head, body[8..].to_vec())
            });
            at += HEADER + len;
        }
        // Whatever follows the valid prefix is a torn write: later records go in its place.
        file.set_len(at as u64)?;
        Ok((Journal { file, path, len: at as u64, torn: false }, records))
    }

    /// Appends the records of one group and, with `sync`, makes them durable (one fdatasync).
    /// Without it they survive the process being killed, not a power cut.
    pub fn append(&mut self, records: &[(u64, &[u8])], sync: bool) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(records.iter().map(|(_, v)| HEADER + 8 + v.len()).sum());
        for (seq, value) in records {
            frame(&mut buf, *seq, |b| b.extend_from_slice(value));
        }
        self.write(&buf)?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Notes removed messages, without a sync.
    pub fn note_removal(&mut self, seqs: &[u64]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(HEADER + 8 + 8 * seqs.len());
        frame(&mut buf, REMOVAL, |b| seqs.iter().for_each(|s| b.extend_from_slice(&s.to_le_bytes())));
        self.write(&buf)
    }

    /// Writes at the end; a failed write is cut off (now, or before the next write).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        if let Err(e) = self.file.write_all(buf) {
            self.torn = self.file.set_len(self.len).is_err();
            return Err(e);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Bytes in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Empties the journal (call only once sled holds everything in it durably).
    pub fn clear(&mut self) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        self.torn = false;
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

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, records) = Journal::open(dir.path()).unwrap();
        assert!(records.is_empty());
        j.append(&[(1, b"one".as_slice()), (2, b"two".as_slice())], true).unwrap();
        j.append(&[(3, b"three".as_slice())], true).unwrap();
        j.note_removal(&[2, 1]).unwrap();
        drop(j);
        // A torn write: half a record at the end.
        let path = dir.path().join("spotflow-journal");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[20, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (mut j, records) = Journal::open(dir.path()).unwrap();
        let appends = [(1, "one"), (2, "two"), (3, "three")].map(|(s, v)| Entry::Append(s, v.as_bytes().to_vec()));
        assert_eq!(records[..3], appends);
        assert_eq!(records[3..], [Entry::Remove(vec![2, 1])]);
        // The torn tail was cut off: a record written now is read back after the valid ones.
        j.append(&[(4, b"four".as_slice())], true).unwrap();
        let (_, records) = Journal::open(dir.path()).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(records[4], Entry::Append(4, b"four".to_vec()));
        // A flipped byte ends the valid prefix there.
        let mut data = std::fs::read(&path).unwrap();
        let second = HEADER + 8 + 3;
        data[second + HEADER + 8] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let (mut j, records) = Journal::open(dir.path()).unwrap();
        assert_eq!(records, vec![Entry::Append(1, b"one".to_vec())]);
        j.clear().unwrap();
        assert_eq!(j.len(), 0);
        let (_, records) = Journal::open(dir.path()).unwrap();
        assert!(records.is_empty());
    }
}
