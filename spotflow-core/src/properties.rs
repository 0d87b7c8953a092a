//! Desired and reported properties state machines (sans-IO).

use serde_json::{Map, Value};

use crate::{merge_patch, DesiredState, ReportedState, RequestId, TwinDocument};

/// What became of a desired-properties patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Applied: persist the new state.
    Applied,
    /// Older than or equal to the known version: ignored.
    Ignored,
    /// A version was skipped (or no twin is known yet): ask for the full twin.
    NeedFullTwin,
}

/// Desired properties: versions, patches and which version the application was told about.
///
/// The callback contract: the application is told once about the version it has at start (the
/// stored one, or the first one received), and afterwards only about strictly newer versions —
/// never twice about the same version, even across reconnects.
#[derive(Debug, Default)]
pub struct DesiredTracker {
    current: Option<DesiredState>,
    notified: Option<u64>,
}

impl DesiredTracker {
    /// Starts from the stored state, if any.
    pub fn new(stored: Option<DesiredState>) -> Self {
        DesiredTracker { current: stored, notified: None }
    }

    /// The current desired properties, if any are known.
    pub fn current(&self) -> Option<&DesiredState> {
        self.current.as_ref()
    }

    /// The current properties when their version is greater than `version` (always with `None`).
    pub fn get_if_newer(&self, version: Option<u64>) -> Option<&DesiredState> {
        self.current.as_ref().filter(|c| version.is_none_or(|v| c.version > v))
    }

    /// A full twin arrived. Returns `true` when the state changed (persist it).
    pub fn handle_twin(&mut self, desired: DesiredState) -> bool {
        match &self.current {
            Some(c) if c.version > desired.version => false,
            Some(c) if *c == desired => false,
            _ => {
                self.current = Some(desired);
                true
            }
        }
    }

    /// A patch to version `version` arrived.
    pub fn handle_patch(&mut self, version: u64, patch: &Map<String, Value>) -> PatchOutcome {
        let Some(current) = &mut self.current else { return PatchOutcome::NeedFullTwin };
        if version <= current.version {
            return PatchOutcome::Ignored;
        }
        if version != current.version + 1 {
            return PatchOutcome::NeedFullTwin;
        }
        merge_patch::apply(&mut current.values, patch);
        current.version = version;
        PatchOutcome::Applied
    }

    /// The state the application should be told about now, if any.
    pub fn poll_notify(&mut self) -> Option<DesiredState> {
        let current = self.current.as_ref()?;
        if self.notified.is_some_and(|n| n >= current.version) {
            return None;
        }
        self.notified = Some(current.version);
        Some(current.clone())
    }
}

/// Reported properties: the net change still to send, one request in flight at a time.
#[derive(Debug)]
pub struct ReportedTracker {
    state: ReportedState,
    in_flight: Option<(RequestId, Map<String, Value>)>,
    rejected: Option<u16>,
    next_request: RequestId,
}

/// What became of a reported-properties response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedOutcome {
    /// Accepted: persist the state.
    Accepted,
    /// Rejected with this status: the update is kept (and retried on the next connection or the
    /// next update); tell the application.
    Rejected(u16),
    /// Not the request in flight: ignored.
    Unknown,
}

impl ReportedTracker {
    /// Starts from the stored state.
    pub fn new(stored: ReportedState) -> Self {
        ReportedTracker { state: stored, in_flight: None, rejected: None, next_request: 1 }
    }

    /// The state to persist.
    pub fn state(&self) -> &ReportedState {
        &self.state
    }

    /// The application wants `document` reported (a full replacement; `null` members mean absent).
    pub fn update(&mut self, mut document: Map<String, Value>) {
        merge_patch::strip_nulls(&mut document);
        self.state.target = Some(document);
        self.rejected = None;
    }

    /// The application wants `patch` merged into what it reported last.
    pub fn patch(&mut self, patch: &Map<String, Value>) {
        let mut target = self.state.target.clone().unwrap_or_else(|| self.state.confirmed.clone());
        merge_patch::apply(&mut target, patch);
        self.update(target);
    }

    /// The platform's reported document (from a full twin) replaces what was confirmed.
    pub fn handle_twin(&mut self, twin: &TwinDocument) -> bool {
        if self.in_flight.is_some() || self.state.confirmed == twin.reported {
            return false;
        }
        self.state.confirmed = twin.reported.clone();
        true
    }

    /// The patch to send now, if any: the net change from what the platform confirmed to what the
    /// application wants, when nothing is in flight and the last attempt was not rejected.
    pub fn poll_patch(&mut self) -> Option<(RequestId, Map<String, Value>)> {
        if self.in_flight.is_some() || self.rejected.is_some() {
            return None;
        }
        let patch = merge_patch::diff(&self.state.confirmed, self.state.target.as_ref()?);
        if patch.is_empty() {
            return None;
        }
        let request = self.allocate_request_id();
        self.in_flight = Some((request, patch.clone()));
        Some((request, patch))
    }

    /// A request id not used before by this tracker: the caller's other twin requests (a twin
    /// GET) take theirs from here too, so that no two requests in flight share a `$rid`.
    pub fn allocate_request_id(&mut self) -> RequestId {
        let request = self.next_request;
        self.next_request += 1;
        request
    }

    /// The platform answered `request` with `status`.
    pub fn handle_response(&mut self, request: RequestId, status: u16) -> ReportedOutcome {
        match self.in_flight.take() {
            Some((r, patch)) if r == request => {
                if (200..300).contains(&status) {
                    merge_patch::apply(&mut self.state.confirmed, &patch);
                    ReportedOutcome::Accepted
                } else {
                    self.rejected = Some(status);
                    ReportedOutcome::Rejected(status)
                }
            }
            other => {
                self.in_flight = other;
                ReportedOutcome::Unknown
            }
        }
    }

    /// The connection is lost: the request in flight will be sent again.
    pub fn on_disconnected(&mut self) {
        self.in_flight = None;
    }

    /// A new connection: a rejected update is tried once more.
    pub fn on_connected(&mut self) {
        self.rejected = None;
    }

    /// Status of the last rejection, while the rejected update is pending.
    pub fn rejected(&self) -> Option<u16> {
        self.rejected
    }

    /// Whether an update still has to reach the platform.
    pub fn any_pending(&self) -> bool {
        self.in_flight.is_some()
            || self.state.target.as_ref().is_some_and(|t| !merge_patch::diff(&self.state.confirmed, t).is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn ds(version: u64, v: Value) -> DesiredState {
        DesiredState { version, values: obj(v) }
    }

    #[test]
    fn desired_notifies_start_and_newer_only() {
        let mut d = DesiredTracker::new(Some(ds(3, json!({"a":1}))));
        assert_eq!(d.poll_notify().unwrap().version, 3);
        assert_eq!(d.poll_notify(), None);
        assert!(!d.handle_twin(ds(3, json!({"a":1}))), "same twin after reconnect changes nothing");
        assert_eq!(d.poll_notify(), None);
        assert!(!d.handle_twin(ds(2, json!({"a":0}))));
        assert_eq!(d.handle_patch(3, &obj(json!({"a":2}))), PatchOutcome::Ignored);
        assert_eq!(d.handle_patch(5, &obj(json!({"a":2}))), PatchOutcome::NeedFullTwin);
        assert_eq!(d.handle_patch(4, &obj(json!({"b":2,"a":null}))), PatchOutcome::Applied);
        let n = d.poll_notify().unwrap();
        assert_eq!((n.version, Value::Object(n.values)), (4, json!({"b":2})));
        assert!(d.get_if_newer(Some(4)).is_none());
        assert_eq!(d.get_if_newer(Some(3)).unwrap().version, 4);
        assert_eq!(d.get_if_newer(None).unwrap().version, 4);
    }

    #[test]
    fn desired_without_state_asks_for_twin() {
        let mut d = DesiredTracker::new(None);
        assert_eq!(d.poll_notify(), None);
        assert_eq!(d.handle_patch(1, &Map::new()), PatchOutcome::NeedFullTwin);
        assert!(d.handle_twin(ds(1, json!({}))));
        assert_eq!(d.poll_notify().unwrap().version, 1);
    }

    #[test]
    fn reported_coalesces_offline_updates_into_one_patch() {
        let mut r = ReportedTracker::new(ReportedState { confirmed: obj(json!({"fw":"1.0","x":1})), target: None });
        assert!(!r.any_pending());
        for i in 0..10 {
            r.update(obj(json!({"fw":"1.0","temp":i})));
        }
        assert!(r.any_pending());
        let (req, patch) = r.poll_patch().unwrap();
        assert_eq!(Value::Object(patch), json!({"x":null,"temp":9}));
        assert!(r.poll_patch().is_none(), "one request in flight");
        assert_eq!(r.handle_response(req + 7, 204), ReportedOutcome::Unknown);
        assert_eq!(r.handle_response(req, 204), ReportedOutcome::Accepted);
        assert!(!r.any_pending());
        assert_eq!(Value::Object(r.state().confirmed.clone()), json!({"fw":"1.0","temp":9}));
    }

    #[test]
    fn reported_rejection_is_kept_and_retried_on_reconnect() {
        let mut r = ReportedTracker::new(ReportedState::default());
        r.update(obj(json!({"a":1})));
        let (req, _) = r.poll_patch().unwrap();
        assert_eq!(r.handle_response(req, 400), ReportedOutcome::Rejected(400));
        assert!(r.any_pending());
        assert_eq!(r.rejected(), Some(400));
        assert!(r.poll_patch().is_none(), "no hot retry loop");
        r.on_connected();
        let (req2, patch) = r.poll_patch().unwrap();
        assert_eq!(Value::Object(patch), json!({"a":1}));
        r.on_disconnected();
        let (req3, _) = r.poll_patch().unwrap();
        assert_ne!(req2, req3);
        assert_eq!(r.handle_response(req2, 204), ReportedOutcome::Unknown);
        assert_eq!(r.handle_response(req3, 204), ReportedOutcome::Accepted);
        assert!(!r.any_pending());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Update(u8, u8),
        Send,
        Respond(bool),
        Drop,
        Restart,
    }

    proptest! {
        #[test]
        fn reported_converges_to_last_update(ops in prop::collection::vec(prop_oneof![
            (0u8..4, 0u8..3).prop_map(|(k, v)| Op::Update(k, v)),
            Just(Op::Send), any::<bool>().prop_map(Op::Respond), Just(Op::Drop), Just(Op::Restart)
        ], 1..60)) {
            // Model: the platform's document, and the last document the application asked for.
            let mut platform = Map::new();
            let mut last: Option<Map<String, Value>> = None;
            let mut r = ReportedTracker::new(ReportedState::default());
            let mut wire: Option<(RequestId, Map<String, Value>)> = None;
            for op in ops {
                match op {
                    Op::Update(k, v) => {
                        let mut doc = last.clone().unwrap_or_default();
                        if v == 0 { doc.remove(&k.to_string()); } else { doc.insert(k.to_string(), json!(v)); }
                        r.update(doc.clone());
                        last = Some(doc);
                    }
                    Op::Send => if wire.is_none() { wire = r.poll_patch(); },
                    Op::Respond(ok) => if let Some((req, patch)) = wire.take() {
                        if ok { merge_patch::apply(&mut platform, &patch); }
                        r.handle_response(req, if ok { 204 } else { 500 });
                        if !ok { r.on_connected(); }
                    },
                    // A lost answer: the platform may have applied the patch or not. Every new
                    // connection fetches the twin, which tells the machine the truth.
                    Op::Drop => {
                        if let Some((_, patch)) = wire.take() { merge_patch::apply(&mut platform, &patch); }
                        r.on_disconnected();
                        r.on_connected();
                        r.handle_twin(&TwinDocument { reported: platform.clone(), ..Default::default() });
                    }
                    Op::Restart => {
                        wire = None;
                        r = ReportedTracker::new(r.state().clone());
                        r.handle_twin(&TwinDocument { reported: platform.clone(), ..Default::default() });
                    }
                }
            }
            wire = None;
            r.on_disconnected();
            for _ in 0..5 {
                if let Some((req, patch)) = r.poll_patch() {
                    merge_patch::apply(&mut platform, &patch);
                    prop_assert_eq!(r.handle_response(req, 204), ReportedOutcome::Accepted);
                }
            }
            prop_assert!(wire.is_none());
            prop_assert!(!r.any_pending());
            if let Some(last) = last { prop_assert_eq!(platform, last); }
        }
    }

    #[test]
    fn request_ids_allocated_for_other_twin_requests_never_collide_with_patches() {
        let mut r = ReportedTracker::new(ReportedState::default());
        let get = r.allocate_request_id();
        r.update(serde_json::json!({"a": 1}).as_object().unwrap().clone());
        let (patch, _) = r.poll_patch().unwrap();
        let get2 = r.allocate_request_id();
        assert!(get != patch && get2 != patch && get != get2);
    }
}
