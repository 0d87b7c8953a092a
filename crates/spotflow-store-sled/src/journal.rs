//! The append journal: what makes an append durable with one fdatasync.
//!
//! sled's flush costs two round trips to the disk once it is made power-loss safe (its write and
//! `sync_file_range`, then the fdatasync of its log that `sync_file_range` lacks). So an append
//! group is written to this journal and fdatasync'd once, and applied to sled without a flush.
//! Every few MiB (and at close or a state change), sled is flushed and the journal emptied.
//!
//! At open, records whose sequence number is above the highest one sled recovered are applied
//! again: they are exactly the appends that were acknowledged but not yet flushed by sled. (A
//! removal of such a message that sled lost is a redelivery, which the platform drops by key.)
//!
//! A record is `[len: u32 LE][crc32 of body: u32 LE][body]`, body = `[seq: u64 LE][sled value]`.
//! Reading stops at the first record that is short or fails its checksum: a torn write at the end
//! of the journal is an append that was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The journal is emptied (after a sled flush) once it grows past this.
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

const HEADER: usize = 8;

/// A journaled append: its sequence number and the value sled stores for it.
pub type Record = (u64, Vec<u8>);

/// The journal file of a store.
pub struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Journal {
    /// Opens (creating) the journal in the store's directory; returns it with its valid records
    /// `(seq, sled value)`.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Vec<Record>)> {
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
            let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
            records.push((seq, body[8..].to_vec()));
            at += HEADER + len;
        }
        Ok((Journal { file, path, len: data.len() as u64 }, records))
    }

    /// Appends the records of one group and makes them durable (one fdatasync).
    pub fn append(&mut self, records: &[(u64, &[u8])]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(records.iter().map(|(_, v)| HEADER + 8 + v.len()).sum());
        for (seq, value) in records {
            let start = buf.len();
            buf.extend_from_slice(&[0; HEADER]);
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.extend_from_slice(value);
            let body_len = (buf.len() - start - HEADER) as u32;
            let crc = crc32fast::hash(&buf[start + HEADER..]);
            buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
            buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        }
        self.file.write_all(&buf)?;
        self.len += buf.len() as u64;
        self.file.sync_data()
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
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, records) = Journal::open(dir.path()).unwrap();
        assert!(records.is_empty());
        j.append(&[(1, b"one".as_slice()), (2, b"two".as_slice())]).unwrap();
        j.append(&[(3, b"three".as_slice())]).unwrap();
        drop(j);
        // A torn write: half a record at the end.
        let path = dir.path().join("spotflow-journal");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[20, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (mut j, records) = Journal::open(dir.path()).unwrap();
        assert_eq!(records, vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"three".to_vec())]);
        // A flipped byte ends the valid prefix there.
        let mut data = std::fs::read(&path).unwrap();
        let second = HEADER + 8 + 3;
        data[second + HEADER + 8] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let (_, records) = Journal::open(dir.path()).unwrap();
        assert_eq!(records, vec![(1, b"one".to_vec())]);
        j.clear().unwrap();
        assert_eq!(j.len(), 0);
        let (_, records) = Journal::open(dir.path()).unwrap();
        assert!(records.is_empty());
    }
}
