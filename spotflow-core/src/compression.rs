//! Payload compression applied when a message is enqueued.
//!
//! The Spotflow platform is only known to decode Brotli (`content-encoding=br`), which is what the
//! official SDKs send: [`Compression::Fastest`] and [`Compression::SmallestSize`] produce standard
//! Brotli (window ≤ 24, decodable by any conforming decoder). [`Compression::Lz4`] (the standard
//! LZ4 frame format) and [`Compression::Zstd`] are there for receivers known to decode them (the
//! local emulator does); a platform that does not would store such payloads unreadable.

use std::io::{Read, Write};

use crate::{Error, Result};

/// Compression requested for the messages of a stream sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Send the payload as it is.
    #[default]
    Uncompressed,
    /// Brotli with the fastest settings (quality 1; `content-encoding=br`), readable by the
    /// Spotflow platform. At least the official SDK's ratio on every file of the compression
    /// benchmark; faster than it on payloads of 8 KiB and more, the same code (and speed) below.
    Fastest,
    /// Brotli with the settings that give the smallest size (quality 11, window up to 24;
    /// `content-encoding=br`), readable by the Spotflow platform. Slow: 0.1–0.6 MB/s in the
    /// compression benchmark, so a 16 MiB payload takes seconds to a minute (done off the async
    /// executor).
    SmallestSize,
    /// The standard LZ4 frame format (`content-encoding=lz4`): very fast, lower ratio.
    ///
    /// **Warning:** the Spotflow platform is only known to decode Brotli; use this only with a
    /// receiver known to decode LZ4 frames (e.g. the local emulator).
    Lz4,
    /// A Zstandard frame at `level` (1–22, or negative for faster levels; `content-encoding=zstd`).
    ///
    /// **Warning:** the Spotflow platform is only known to decode Brotli; use this only with a
    /// receiver known to decode Zstandard (e.g. the local emulator).
    Zstd {
        /// Zstandard compression level (`zstd::DEFAULT_COMPRESSION_LEVEL` is 3).
        level: i32,
    },
}

/// Encoding of a payload as it travels; carried with the message so that the receiver can decode
/// it (`content-encoding` property on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentEncoding {
    /// The LZ4 frame format (`lz4`).
    Lz4,
    /// A Zstandard frame (`zstd`).
    Zstd,
    /// Brotli (`br`), the encoding the Spotflow platform decodes.
    Brotli,
}

/// Largest payload the decoders inflate to by default (guards against decompression bombs):
/// the SDK's largest message, 16 MiB.
pub const MAX_DECOMPRESSED_SIZE: usize = 16 * 1024 * 1024;

/// Brotli settings of [`Compression::Fastest`]: quality 1, the official SDK's; what makes ours
/// faster and smaller on payloads of 8 KiB and more is the chunk size (see `brotli_compress`).
/// Chosen with the compression benchmark (`interop/official-sdk`, `compression-bench`): quality 0
/// is slower on small messages and up to 19 % larger; quality 2 is slower on small messages; the
/// text mode and smaller windows changed nothing measurable.
const BROTLI_FASTEST: BrotliSettings = BrotliSettings { quality: 1, min_lgwin: 10, lgwin: 22 };
/// Brotli settings of [`Compression::SmallestSize`]: quality 11 with the largest standard window
/// (24; it helps payloads over 4 MiB and changes nothing below; the text mode changed nothing
/// measurable on the corpus). Each payload gets the smallest window that holds it
/// (`window_for`), here at least 16: at quality 11, windows of 10–14 made the small messages of
/// the corpus 0.3 % larger than the official SDK's window 22, 16 made them 0.3 % smaller.
const BROTLI_SMALLEST: BrotliSettings = BrotliSettings { quality: 11, min_lgwin: 16, lgwin: 24 };

#[derive(Debug, Clone, Copy)]
struct BrotliSettings {
    quality: i32,
    /// Smallest window used.
    min_lgwin: i32,
    /// Largest window used.
    lgwin: i32,
}

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
    /// Zstandard's default level, for `Compression::Zstd { level: Compression::ZSTD_DEFAULT_LEVEL }`.
    pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

    /// Checks the settings (the Zstandard level range); an error names what is wrong.
    pub fn validate(self) -> Result<()> {
        if let Compression::Zstd { level } = self {
            let range = zstd::compression_level_range();
            if !range.contains(&level) || level == 0 {
                return Err(Error::invalid(
                    "zstd level",
                    format!("{level} (expected {}..={}, not 0)", range.start(), range.end()),
                ));
            }
        }
        Ok(())
    }

    /// The encoding this setting produces (`None` for [`Compression::Uncompressed`]).
    pub fn encoding(self) -> Option<ContentEncoding> {
        match self {
            Compression::Uncompressed => None,
            Compression::Fastest | Compression::SmallestSize => Some(ContentEncoding::Brotli),
            Compression::Lz4 => Some(ContentEncoding::Lz4),
            Compression::Zstd { .. } => Some(ContentEncoding::Zstd),
        }
    }

    /// Payloads at least this long are compressed off the async executor (on Tokio's blocking
    /// pool), so that compressing one never stalls other tasks for more than about 100 µs.
    /// Derived from the compression benchmark's time per payload on the project's 2-core
    /// machines (µs for 4/16/64 KiB: Brotli q1 42/172/668, LZ4 6/21/112, zstd-3 23/62/234,
    /// zstd-9 84/592/1,552; Brotli q11 and zstd-19 take milliseconds even for 1 KiB).
    pub fn offload_threshold(self) -> usize {
        match self {
            Compression::Uncompressed => usize::MAX,
            Compression::Fastest => 4 * 1024,
            Compression::Lz4 => 32 * 1024,
            Compression::Zstd { level } if level <= 3 => 16 * 1024,
            Compression::Zstd { level } if level <= 9 => 4 * 1024,
            // Brotli q11 and high zstd levels: about 1 ms per kilobyte.
            Compression::SmallestSize | Compression::Zstd { .. } => 0,
        }
    }

    /// Compresses `payload`. Returns `None` when compression is off, the payload is empty or the
    /// result would not be smaller; the message is then sent as it is.
    pub fn compress(self, payload: &[u8]) -> Option<(ContentEncoding, Vec<u8>)> {
        if payload.is_empty() {
            return None;
        }
        let compressed = match self {
            Compression::Uncompressed => return None,
            Compression::Fastest => brotli_compress(payload, BROTLI_FASTEST),
            Compression::SmallestSize => brotli_compress(payload, BROTLI_SMALLEST),
            Compression::Lz4 => lz4_frame_compress(payload),
            Compression::Zstd { level } => zstd::bulk::compress(payload, level).ok()?,
        };
        (compressed.len() < payload.len()).then_some((self.encoding()?, compressed))
    }
}

/// The smallest Brotli window (`min..=max`) that holds `len` bytes. The encoder's buffers (at
/// quality 11 a hash forest of two 4-byte entries per window byte: 128 MiB at window 24,
/// allocated, page-faulted and freed for every message) and the decoder's ring buffer scale with
/// the window, and a window larger than the payload buys nothing: with the fixed window 24, one
/// 256-byte `SmallestSize` message cost about 80 ms on a device's blocking thread, about 0.7 ms
/// with this (the throughput bench: 12 against 1,542 messages/s).
fn window_for(len: usize, min: i32, max: i32) -> i32 {
    (min..max).find(|w| (1usize << w) - 16 >= len).unwrap_or(max)
}

fn brotli_compress(payload: &[u8], s: BrotliSettings) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: s.quality,
        lgwin: window_for(payload.len(), s.min_lgwin, s.lgwin),
        size_hint: payload.len(),
        ..Default::default()
    };
    // The input is handed to the encoder in chunks of this size. At qualities 0 and 1 the encoder
    // compresses each chunk it is handed as its own fragment: 8 KiB chunks instead of the 4 KiB of
    // `BrotliCompress` (what the official SDK calls) give a better ratio and speed on every file of
    // the benchmark corpus (64 KiB JSON 6.2x vs 5.8x; larger chunks lose on binary data).
    let mut input_buffer = [0u8; 8192];
    let mut output_buffer = [0u8; 4096];
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    // Reading a slice and writing a Vec cannot fail.
    let _ = brotli::BrotliCompressCustomAlloc(
        &mut &payload[..],
        &mut out,
        &mut input_buffer,
        &mut output_buffer,
        &params,
        brotli::enc::StandardAlloc::default(),
    );
    out
}

fn lz4_frame_compress(payload: &[u8]) -> Vec<u8> {
    let info = lz4_flex::frame::FrameInfo::new().content_size(Some(payload.len() as u64));
    let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::with_capacity(payload.len() / 2 + 64));
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(payload);
    encoder.finish().unwrap_or_default()
}

/// Decodes a payload received with `encoding`, up to [`MAX_DECOMPRESSED_SIZE`] bytes.
pub fn decompress(encoding: ContentEncoding, payload: &[u8]) -> Result<Vec<u8>> {
    decompress_limited(encoding, payload, MAX_DECOMPRESSED_SIZE)
}

/// Decodes a payload received with `encoding`; a payload that would decode to more than `limit`
/// bytes is an error (a decompression bomb costs at most `limit` bytes of memory).
pub(crate) fn decompress_limited(encoding: ContentEncoding, payload: &[u8], limit: usize) -> Result<Vec<u8>> {
    let what = match encoding {
        ContentEncoding::Lz4 => "lz4 payload",
        ContentEncoding::Zstd => "zstd payload",
        ContentEncoding::Brotli => "brotli payload",
    };
    let reader: Box<dyn Read + '_> = match encoding {
        ContentEncoding::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(payload)),
        ContentEncoding::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(payload).map_err(|e| Error::invalid(what, e))?)
        }
        ContentEncoding::Brotli => Box::new(brotli::Decompressor::new(payload, 4096)),
    };
    let mut out = Vec::with_capacity(payload.len().saturating_mul(4).min(limit));
    reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| Error::invalid(what, e))?;
    if out.len() > limit {
        return Err(Error::invalid(what, format!("decodes to more than {limit} bytes")));
    }
    Ok(out)
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

    const ALL: [Compression; 5] = [
        Compression::Fastest,
        Compression::SmallestSize,
        Compression::Lz4,
        Compression::Zstd { level: 3 },
        Compression::Zstd { level: 19 },
    ];

    #[test]
    fn round_trips_every_setting() {
        let payload = sample();
        for c in ALL {
            c.validate().unwrap();
            let (enc, data) = c.compress(&payload).expect("compressible");
            assert_eq!(Some(enc), c.encoding());
            assert!(data.len() < payload.len());
            assert_eq!(decompress(enc, &data).unwrap(), payload);
            assert_eq!(ContentEncoding::from_token(enc.as_str()), Some(enc));
            assert_eq!(ContentEncoding::from_code(ContentEncoding::code(Some(enc))).unwrap(), Some(enc));
        }
        assert!(Compression::Uncompressed.compress(&payload).is_none());
    }

    #[test]
    fn the_default_settings_are_brotli() {
        assert_eq!(Compression::Fastest.encoding(), Some(ContentEncoding::Brotli));
        assert_eq!(Compression::SmallestSize.encoding(), Some(ContentEncoding::Brotli));
        // The decoder of brotli-decompressor (not the encoder's crate) reads it back.
        let (_, data) = Compression::SmallestSize.compress(&sample()).unwrap();
        let mut out = Vec::new();
        brotli::Decompressor::new(&data[..], 4096).read_to_end(&mut out).unwrap();
        assert_eq!(out, sample());
    }

    #[test]
    fn the_window_fits_the_payload() {
        assert_eq!(window_for(0, 10, 24), 10);
        assert_eq!(window_for(1008, 10, 24), 10);
        assert_eq!(window_for(1009, 10, 24), 11);
        assert_eq!(window_for(1009, 16, 24), 16);
        assert_eq!(window_for(300_000, 10, 24), 19);
        assert_eq!(window_for(16 << 20, 10, 24), 24);
        assert_eq!(window_for(16 << 20, 10, 22), 22);
        // A stream with a small window decodes like any other.
        let payload = b"{\"t\":1,\"temperatureCelsius\":21.5}".repeat(20);
        for c in [Compression::Fastest, Compression::SmallestSize] {
            let (enc, data) = c.compress(&payload).unwrap();
            assert_eq!(decompress(enc, &data).unwrap(), payload);
        }
    }

    #[test]
    fn lz4_is_the_standard_frame_format() {
        let (_, data) = Compression::Lz4.compress(&sample()).unwrap();
        // LZ4 frame magic number 0x184D2204, little-endian.
        assert_eq!(&data[..4], &[0x04, 0x22, 0x4d, 0x18]);
    }

    #[test]
    fn incompressible_and_empty_stay_raw() {
        assert!(Compression::Fastest.compress(b"").is_none());
        let noise: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for c in ALL {
            assert!(c.compress(&noise).is_none(), "{c:?}");
        }
    }

    #[test]
    fn invalid_zstd_levels_are_refused() {
        assert!(Compression::Zstd { level: 0 }.validate().is_err());
        assert!(Compression::Zstd { level: 23 }.validate().is_err());
        assert!(Compression::Zstd { level: -5 }.validate().is_ok());
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 1 << 20];
        for c in ALL {
            let (enc, data) = c.compress(&zeros).unwrap();
            assert_eq!(decompress_limited(enc, &data, 1 << 20).unwrap().len(), 1 << 20);
            let err = decompress_limited(enc, &data, 1000).unwrap_err().to_string();
            assert!(err.contains("more than 1000 bytes"), "{err}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for enc in [ContentEncoding::Lz4, ContentEncoding::Zstd, ContentEncoding::Brotli] {
            assert!(decompress(enc, b"").is_err() || decompress(enc, b"").unwrap().is_empty());
            assert!(decompress(enc, b"not compressed at all").is_err(), "{enc:?}");
            assert!(decompress(enc, &[255, 255, 255, 255, 1, 2]).is_err(), "{enc:?}");
        }
        assert!(ContentEncoding::from_code(9).is_err());
    }
}
