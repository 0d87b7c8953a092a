//! The golden scenario's shared pieces (`interop/golden/scenario.txt`): the payload generators and
//! the value decoding, used by both the official SDK's harness and our SDK's golden test, so that
//! both send the same bytes.

/// A payload of the scenario: `text:WORD`, `telemetry:N` (a JSON array of N records) or
/// `random:LEN:SEED` (bytes of a xorshift64* generator: the top byte of each step).
pub fn scenario_payload(spec: &str) -> Option<Vec<u8>> {
    let parts: Vec<&str> = spec.split(':').collect();
    Some(match parts.as_slice() {
        ["text", word] => word.as_bytes().to_vec(),
        ["telemetry", n] => {
            let records: Vec<String> = (0..n.parse::<u64>().ok()?)
                .map(|i| {
                    format!(
                        "{{\"t\":{},\"temperatureCelsius\":{}.{},\"state\":\"running\"}}",
                        1_780_000_000_000u64 + i * 1000,
                        20 + i % 7,
                        i % 10
                    )
                })
                .collect();
            format!("[{}]", records.join(",")).into_bytes()
        }
        ["random", len, seed] => {
            let mut x = seed.parse::<u64>().ok()?.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..len.parse::<usize>().ok()?)
                .map(|_| {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                })
                .collect()
        }
        _ => return None,
    })
}

/// Decodes `%XX` escapes of a scenario value (`None` for a bad escape or invalid UTF-8).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_values() {
        assert_eq!(scenario_payload("text:hi").unwrap(), b"hi");
        assert!(scenario_payload("telemetry:2").unwrap().starts_with(b"[{\"t\":1780000000000,"));
        let r = scenario_payload("random:300:3").unwrap();
        assert_eq!((r.len(), r == scenario_payload("random:300:3").unwrap()), (300, true));
        assert_ne!(r, scenario_payload("random:300:4").unwrap());
        assert!(scenario_payload("nope:1").is_none());
        assert_eq!(percent_decode("b%201%2Fx").as_deref(), Some("b 1/x"));
        assert_eq!(percent_decode("%2"), None);
    }
}
