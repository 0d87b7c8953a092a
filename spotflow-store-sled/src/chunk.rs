//! Chunks: several queued messages in one sled value.
//!
//! sled 0.34 splits a leaf node once it holds more than 16 entries, and keeps metadata in memory
//! for every page it has ever written, even when the page itself is out of the cache. One message
//! per entry makes a leaf of about 8 messages (sequential keys leave the left half of each split
//! behind), so with a million messages queued that metadata alone was 30 MiB and still growing.
//! Packing up to [`MAX_MESSAGES`] messages or [`MAX_BYTES`] into one entry divides the number of
//! pages by about 15 with 256-byte messages. A chunk stays well under sled's blob threshold
//! (a quarter of its 512 KiB segment) even as a 17-entry leaf, so no value becomes a file of its own
//! unless a single message is that large.
//!
//! A chunk's key is the big-endian sequence number of its first message when it was created;
//! chunks cover increasing, disjoint ranges. Its value is a list of records
//! `[seq: u64 LE][len: u32 LE][message value: len bytes]` in increasing `seq` order, where the
//! message value is what the journal holds for it (`[queued size: u64 LE][encoded message]`).

/// A chunk is full (and written to sled) once it holds this many messages...
pub const MAX_MESSAGES: usize = 32;
/// ...or this many bytes.
pub const MAX_BYTES: usize = 4096;

const RECORD_HEADER: usize = 12;

/// A chunk in memory: its key and its records `(seq, message value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The sled key (the first sequence number it was created with).
    pub key: u64,
    /// The messages, in increasing `seq` order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Encoded size.
    bytes: usize,
}

impl Chunk {
    /// An empty chunk whose first message will be `key`.
    pub fn new(key: u64) -> Chunk {
        Chunk { key, records: Vec::new(), bytes: 0 }
    }

    /// Decodes a chunk read from sled; `None` if the value is not a valid chunk.
    pub fn decode(key: u64, value: &[u8]) -> Option<Chunk> {
        let mut chunk = Chunk::new(key);
        for record in records(value) {
            let (seq, message) = record?;
            chunk.push(seq, message.to_vec());
        }
        Some(chunk)
    }

    /// Adds the next message.
    pub fn push(&mut self, seq: u64, value: Vec<u8>) {
        self.bytes += RECORD_HEADER + value.len();
        self.records.push((seq, value));
    }

    /// Takes out `seq`; returns its message value if it was there.
    pub fn remove(&mut self, seq: u64) -> Option<Vec<u8>> {
        let at = self.records.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        let (_, value) = self.records.remove(at);
        self.bytes -= RECORD_HEADER + value.len();
        Some(value)
    }

    /// Keeps the first `len` messages.
    pub fn truncate(&mut self, len: usize) {
        for (_, value) in self.records.drain(len.min(self.records.len())..) {
            self.bytes -= RECORD_HEADER + value.len();
        }
    }

    /// Whether it takes no more messages.
    pub fn is_full(&self) -> bool {
        self.records.len() >= MAX_MESSAGES || self.bytes >= MAX_BYTES
    }

    /// The highest sequence number in it.
    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|(s, _)| *s)
    }

    /// The value stored in sled.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes);
        for (seq, value) in &self.records {
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }
}

/// The records of an encoded chunk, without copying; an item is `None` where the value is not a
/// valid chunk (and the iteration then ends).
pub fn records(value: &[u8]) -> impl Iterator<Item = Option<(u64, &[u8])>> {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = rest.get(..RECORD_HEADER).and_then(|header| {
            let seq = u64::from_le_bytes(header[..8].try_into().ok()?);
            let len = u32::from_le_bytes(header[8..].try_into().ok()?) as usize;
            let message = rest.get(RECORD_HEADER..RECORD_HEADER.checked_add(len)?)?;
            Some((seq, message, RECORD_HEADER + len))
        });
        match parsed {
            Some((seq, message, used)) => {
                rest = &rest[used..];
                Some(Some((seq, message)))
            }
            None => {
                rest = &[];
                Some(None)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_fills_by_count_or_bytes() {
        let mut chunk = Chunk::new(7);
        for seq in 7..7 + MAX_MESSAGES as u64 {
            assert!(!chunk.is_full());
            chunk.push(seq, vec![seq as u8; 10]);
        }
        assert!(chunk.is_full());
        let decoded = Chunk::decode(7, &chunk.encode()).unwrap();
        assert_eq!(decoded, chunk);
        assert_eq!(decoded.last_seq(), Some(6 + MAX_MESSAGES as u64));

        let mut big = Chunk::new(1);
        big.push(1, vec![0; MAX_BYTES - RECORD_HEADER - 1]);
        assert!(!big.is_full());
        big.push(2, Vec::new());
        assert!(big.is_full());
    }

    #[test]
    fn removal_keeps_the_order_and_the_size() {
        let mut chunk = Chunk::new(1);
        for seq in 1..=5 {
            chunk.push(seq, vec![seq as u8; seq as usize]);
        }
        assert_eq!(chunk.remove(3), Some(vec![3; 3]));
        assert_eq!(chunk.remove(3), None);
        assert_eq!(chunk.remove(9), None);
        let seqs: Vec<u64> = chunk.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 2, 4, 5]);
        assert_eq!(chunk.encode().len(), chunk.bytes);
        assert_eq!(Chunk::decode(1, &chunk.encode()).unwrap(), chunk);
        chunk.truncate(2);
        assert_eq!(chunk.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(chunk.encode().len(), chunk.bytes);
        chunk.truncate(5);
        assert_eq!(chunk.records.len(), 2);
    }

    #[test]
    fn a_damaged_value_is_not_a_chunk() {
        let mut chunk = Chunk::new(1);
        chunk.push(1, b"hello".to_vec());
        let encoded = chunk.encode();
        assert!(Chunk::decode(1, &encoded[..encoded.len() - 1]).is_none());
        assert!(Chunk::decode(1, &encoded[..5]).is_none());
        assert_eq!(Chunk::decode(1, &[]).unwrap().records.len(), 0);
    }
}
