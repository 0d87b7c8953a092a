//! What the durable stores read back from their files: message records and the JSON of the
//! identity and the properties. A corrupted record is an error, never a panic; a record that
//! decodes encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spotflow_core::persist;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = persist::decode_message(data) {
        let again = persist::decode_message(&persist::encode_message(&m)).expect("an encoded record decodes");
        assert_eq!(again, m);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(i) = persist::identity_from_json(&v) {
            assert_eq!(persist::identity_from_json(&persist::identity_to_json(&i)).ok(), Some(i));
        }
        let _ = persist::desired_from_json(&v);
        let _ = persist::reported_from_json(&v);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = persist::parse_object(text, "record");
    }
});
