//! Payload compression applied when a message is enqueued.

use crate::{Error, Result};

/// Compression requested for the messages of a stream sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Send the payload as it is.
    #[default]
    Uncompressed,
    /// Fastest compression: LZ4 (block format with a little-endian `u32` size prefix).
    Fastest,
    /// Smallest size: Zstandard at level 19. Slower; measure before using it on a small device.
    SmallestSize,
}

/// Encoding of a payload as it travels; carried with the message so that the receiver can decode
/// it (`content-encoding` property on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentEncoding {
    /// LZ4 block format with a little-endian `u32` uncompressed-size prefix.
    Lz4,
    /// A Zstandard frame.
    Zstd,
    /// Brotli (produced by the official SDK; decoded by receivers that support it).
    Brotli,
}

/// Largest payload the decoders will inflate to (guards against decompression bombs).
pub const MAX_DECOMPRESSED_SIZE: usize = 256 * 1024 * 1024;

const ZSTD_SMALLEST_LEVEL: i32 = 19;

impl ContentEncoding {
    /// The token used on the wire (`content-encoding=` value).
    pub fn as_str(self) -> &'static str {
        match self {
            ContentEncoding::Lz4 => "lz4",
            ContentEncoding::Zstd => "zstd",
            ContentEncoding::Brotli => "br",
        }
    }

    /// Parses a wire token; `None` for unknown encodings.
    pub fn from_token(token: &str) -> Option<Self> {
        match token {
            "lz4" => Some(ContentEncoding::Lz4),
            "zstd" => Some(ContentEncoding::Zstd),
            "br" => Some(ContentEncoding::Brotli),
            _ => None,
        }
    }

    /// Stable numeric code, for stores that persist the encoding.
    pub fn code(encoding: Option<Self>) -> u8 {
        match encoding {
            None => 0,
            Some(ContentEncoding::Lz4) => 1,
            Some(ContentEncoding::Zstd) => 2,
            Some(ContentEncoding::Brotli) => 3,
        }
    }

    /// Inverse of [`ContentEncoding::code`]; an error for unknown codes.
    pub fn from_code(code: u8) -> Result<Option<Self>> {
        Ok(match code {
            0 => None,
            1 => Some(ContentEncoding::Lz4),
            2 => Some(ContentEncoding::Zstd),
            3 => Some(ContentEncoding::Brotli),
            other => return Err(Error::invalid("content encoding code", other)),
        })
    }
}

impl Compression {
    /// Compresses `payload`. Returns `None` when compression is off, the payload is empty or the
    /// result would not be smaller; the message is then sent as it is.
    pub fn compress(self, payload: &[u8]) -> Option<(ContentEncoding, Vec<u8>)> {
        if payload.is_empty() {
            return None;
        }
        let (encoding, compressed) = match self {
            Compression::Uncompressed => return None,
            Compression::Fastest => (ContentEncoding::Lz4, lz4_flex::compress_prepend_size(payload)),
            Compression::SmallestSize => {
                (ContentEncoding::Zstd, zstd::bulk::compress(payload, ZSTD_SMALLEST_LEVEL).ok()?)
            }
        };
        (compressed.len() < payload.len()).then_some((encoding, compressed))
    }
}

/// Decodes a payload received with `encoding`. Brotli is not decoded by the core (the device never
/// produces it); receivers that need it decode it themselves.
pub fn decompress(encoding: ContentEncoding, payload: &[u8]) -> Result<Vec<u8>> {
    match encoding {
        ContentEncoding::Lz4 => {
            let declared = payload
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| Error::invalid("lz4 payload", "shorter than its size prefix"))?;
            if declared > MAX_DECOMPRESSED_SIZE {
                return Err(Error::invalid("lz4 payload", format!("declares {declared} bytes")));
            }
            lz4_flex::decompress_size_prepended(payload).map_err(|e| Error::invalid("lz4 payload", e))
        }
        ContentEncoding::Zstd => {
            zstd::bulk::decompress(payload, MAX_DECOMPRESSED_SIZE).map_err(|e| Error::invalid("zstd payload", e))
        }
        ContentEncoding::Brotli => Err(Error::invalid("content encoding", "brotli is not decoded by spotflow-core")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(&format!("{{\"t\":{i},\"temperatureCelsius\":21.5,\"humidityPercent\":50.1}}"));
        }
        s.into_bytes()
    }

    #[test]
    fn round_trips_every_setting() {
        let payload = sample();
        for c in [Compression::Fastest, Compression::SmallestSize] {
            let (enc, data) = c.compress(&payload).expect("compressible");
            assert!(data.len() < payload.len());
            assert_eq!(decompress(enc, &data).unwrap(), payload);
            assert_eq!(ContentEncoding::from_token(enc.as_str()), Some(enc));
            assert_eq!(ContentEncoding::from_code(ContentEncoding::code(Some(enc))).unwrap(), Some(enc));
        }
        assert!(Compression::Uncompressed.compress(&payload).is_none());
    }

    #[test]
    fn incompressible_and_empty_stay_raw() {
        assert!(Compression::Fastest.compress(b"").is_none());
        let noise: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        assert!(Compression::Fastest.compress(&noise).is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decompress(ContentEncoding::Lz4, b"").is_err());
        assert!(decompress(ContentEncoding::Lz4, &[255, 255, 255, 255, 1, 2]).is_err());
        assert!(decompress(ContentEncoding::Lz4, &[10, 0, 0, 0, 0xff, 2]).is_err());
        assert!(decompress(ContentEncoding::Zstd, b"not zstd").is_err());
        assert!(ContentEncoding::from_code(9).is_err());
    }
}
