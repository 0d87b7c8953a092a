//! Answers of the platform's HTTP API (provisioning init and completion, registration, token
//! refresh) with any status and body, and the time formats they carry. Nothing may panic: every
//! answer is a value or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spotflow_core::time_format::{expiry_after, parse_rfc3339, parse_timespan};
use spotflow_transport_mqtt::answers;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) % 600, rest),
        _ => return,
    };
    let _ = answers::provisioning_init_answer(status, body);
    let _ = answers::provisioning_completion_answer(status, body, "op");
    if let Ok(r) = answers::registration_answer(status, body) {
        if let Some(lifetime) = r.token_remaining_lifetime {
            let _ = expiry_after(std::time::SystemTime::now(), lifetime);
        }
    }
    let _ = answers::token_refresh_answer(status, body);
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = parse_rfc3339(text);
        if let Ok(d) = parse_timespan(text) {
            let _ = expiry_after(std::time::SystemTime::now(), d);
        }
    }
});
