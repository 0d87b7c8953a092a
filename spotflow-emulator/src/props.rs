//! The telemetry property bag and payload decoding.

use percent_encoding::percent_decode_str;
use spotflow_core::{decompress, ContentEncoding};

use crate::db::StoredMessage;

/// A property bag the platform refuses.
#[derive(Debug, thiserror::Error)]
pub enum PropertyError {
    /// A key or value is not UTF-8 once percent-decoded.
    #[error("property {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// Why a payload is stored as it arrived.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// An encoding the platform does not know.
    #[error("unknown content encoding {0:?}")]
    UnknownEncoding(String),
    /// Corrupt data, or larger than the largest message once decoded.
    #[error(transparent)]
    Decompression(#[from] spotflow_core::Error),
}

/// Parses `k=v&k2=v2` (values percent-decoded, a key without `=` gets ""). Invalid UTF-8 after
/// decoding is an error.
pub fn parse_property_bag(bag: &str) -> Result<Vec<(String, String)>, PropertyError> {
    let mut out = Vec::new();
    for part in bag.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| PropertyError::NotUtf8(s.to_owned()))
        };
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

/// Fills the message's properties from the bag.
pub fn apply_properties(message: &mut StoredMessage, properties: Vec<(String, String)>) {
    for (k, v) in properties {
        let flag = |v: &str| v.eq_ignore_ascii_case("true");
        match k.as_str() {
            "stream-group-name" => message.stream_group = Some(v),
            "stream-name" => message.stream = Some(v),
            "batch-id" => message.batch_id = Some(v),
            "batch-slice-id" => message.batch_slice_id = Some(v),
            "message-id" => message.message_id = Some(v),
            "chunk-id" => message.chunk_id = Some(v),
            "complete-batch" => message.complete_batch = flag(&v),
            "complete-message" => message.complete_message = flag(&v),
            "has-externalized-payload" => message.externalized = flag(&v),
            "content-encoding" => message.content_encoding = Some(v),
            "$.mid" => message.message_key = Some(v),
            _ => message.other_properties.push((k, v)),
        }
    }
}

/// Decodes a payload sent with `encoding` (`br`, `lz4` frame, `zstd`); an error for an unknown
/// encoding, corrupt data or a payload over the SDK's largest message (16 MiB,
/// [`spotflow_core::MAX_DECOMPRESSED_SIZE`]) once decoded: a decompression bomb is stored as it
/// arrived, flagged.
pub fn decode_payload(encoding: Option<&str>, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
    match encoding {
        None => Ok(payload.to_vec()),
        Some(token) => match ContentEncoding::from_token(token) {
            Some(enc) => Ok(decompress(enc, payload)?),
            None => Err(DecodeError::UnknownEncoding(token.to_owned())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_official_examples() {
        let props = parse_property_bag(
            "stream-group-name=sg%201&stream-name=st%2F1&batch-id=b1&message-id=m2&complete-message=true&ignore-payload=true",
        )
        .unwrap();
        let mut m = StoredMessage::default();
        apply_properties(&mut m, props);
        assert_eq!(m.stream_group.as_deref(), Some("sg 1"));
        assert_eq!(m.stream.as_deref(), Some("st/1"));
        assert_eq!((m.batch_id.as_deref(), m.message_id.as_deref()), (Some("b1"), Some("m2")));
        assert!(m.complete_message && !m.complete_batch);
        assert_eq!(m.other_properties, vec![("ignore-payload".to_owned(), "true".to_owned())]);
        assert_eq!(parse_property_bag("%24.mid=abc&k1=v%201&flag").unwrap()[2], ("flag".to_owned(), String::new()));
        assert!(parse_property_bag("a=%ff").is_err());
    }

    #[test]
    fn decodes_payloads() {
        let raw = b"hello hello hello hello hello hello ".repeat(20);
        let lz4 = spotflow_core::Compression::Lz4.compress(&raw).unwrap().1;
        assert_eq!(decode_payload(Some("lz4"), &lz4).unwrap(), raw);
        let zstd = spotflow_core::Compression::Zstd { level: 19 }.compress(&raw).unwrap().1;
        assert_eq!(decode_payload(Some("zstd"), &zstd).unwrap(), raw);
        let br = spotflow_core::Compression::Fastest.compress(&raw).unwrap().1;
        assert_eq!(decode_payload(Some("br"), &br).unwrap(), raw);
        // "hello" compressed by brotli (quality 11).
        let br = [0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        assert_eq!(decode_payload(Some("br"), &br).unwrap(), b"hello");
        assert!(decode_payload(Some("br"), b"garbage!").is_err());
        assert!(decode_payload(Some("gzip"), b"x").is_err());
        // A bomb: 17 MiB of zeros in a few kilobytes.
        let bomb = spotflow_core::Compression::Zstd { level: 3 }.compress(&vec![0u8; 17 << 20]).unwrap().1;
        assert!(bomb.len() < 8 * 1024);
        assert!(decode_payload(Some("zstd"), &bomb).unwrap_err().to_string().contains("more than"));
    }
}
