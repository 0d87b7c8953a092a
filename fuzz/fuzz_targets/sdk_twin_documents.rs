//! Twin JSON as the platform sends it: full twin documents and desired-properties patches, and
//! JSON merge patches between two documents. Nothing may panic, and `diff` must be the inverse
//! of `apply`: applying `diff(a, b)` to `a` gives `b` (for documents without nulls, which a merge
//! patch cannot express as values).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use spotflow_core::merge_patch;
use spotflow_core::{DesiredTracker, ReportedTracker};
use spotflow_transport_mqtt::topics;

fuzz_target!(|data: &[u8]| {
    // The payload as a twin document, as a desired patch on a few topics.
    if let Some(doc) = topics::parse_twin(data) {
        let mut desired = DesiredTracker::new(None);
        let _ = desired.handle_twin(doc.desired.clone());
        let mut reported = ReportedTracker::new(Default::default());
        let _ = reported.handle_twin(&doc);
        let _ = reported.poll_patch();
    }
    for topic in ["$iothub/twin/PATCH/properties/desired/?$version=2", "$iothub/twin/res/200/?$rid=1&$version=3"] {
        let _ = topics::parse_incoming(topic, data);
    }
    // Two JSON objects separated by a NUL byte: merge patch round trip.
    let mut halves = data.splitn(2, |b| *b == 0);
    let (Some(a), Some(b)) = (halves.next(), halves.next()) else { return };
    let (Ok(Value::Object(mut a)), Ok(Value::Object(mut b))) =
        (serde_json::from_slice::<Value>(a), serde_json::from_slice::<Value>(b))
    else {
        return;
    };
    merge_patch::strip_nulls(&mut a);
    merge_patch::strip_nulls(&mut b);
    let patch: Map<String, Value> = merge_patch::diff(&a, &b);
    let mut applied = a.clone();
    merge_patch::apply(&mut applied, &patch);
    assert_eq!(applied, b, "apply(a, diff(a, b)) == b");
    let mut reported = ReportedTracker::new(Default::default());
    reported.update(a);
    reported.patch(&patch);
});
