//! The control state behind one lock: provisioning tokens and operations, the devices with their
//! twins and subscriptions. Every change is persisted through the database (the whole control
//! state, or only the device that changed).

use std::sync::MutexGuard;

use serde_json::{Map, Value};
use tracing::{debug, info};

use crate::db;
use crate::error::EmulatorError;
use crate::mqtt;
use crate::state::{self, ControlState, Operation, Policy, Twin, TwinRefusal};

pub(crate) struct Control {
    policy: Policy,
    state: db::SharedControl,
    db: db::Db,
}

impl Control {
    pub fn new(policy: Policy, state: db::SharedControl, db: db::Db) -> Control {
        Control { policy, state, db }
    }

    /// The state, for reading (a change goes through [`Control::with_state`] or
    /// [`Control::with_device`], which persist it).
    pub fn lock(&self) -> MutexGuard<'_, ControlState> {
        spotflow_core::lock(&self.state)
    }

    /// Runs `f` on the state and persists the control state (tokens, operations, SAS) and the
    /// devices `f` marked dirty.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut ControlState, &Policy) -> T) -> T {
        let mut state = self.lock();
        let out = f(&mut state, &self.policy);
        self.db.save_state(&mut state, true);
        out
    }

    /// Runs `f` on the device `hub_id` of the state (`None` when there is none) and persists that
    /// device's row only: one device's traffic never rewrites the others'.
    pub fn with_device<T>(&self, hub_id: &str, f: impl FnOnce(Option<&mut state::Device>) -> T) -> T {
        let mut state = self.lock();
        let out = f(state.devices.get_mut(hub_id));
        if state.devices.contains_key(hub_id) {
            state.dirty.insert(hub_id.to_owned());
        }
        self.db.save_state(&mut state, false);
        out
    }

    /// Runs a twin change on the state and persists the changed device only.
    fn change_twin<T>(&self, f: impl FnOnce(&mut ControlState) -> T) -> T {
        let mut state = self.lock();
        let out = f(&mut state);
        self.db.save_state(&mut state, false);
        out
    }

    pub fn create_provisioning_token(&self, workspace_id: &str) -> String {
        let token = self.with_state(|s, _| s.create_provisioning_token(workspace_id));
        info!(workspace = %workspace_id, "provisioning token created");
        token
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.lock().operations.values().cloned().collect()
    }

    pub fn approve(&self, id: &str, device_id: Option<&str>) -> Result<String, EmulatorError> {
        let r = self.with_state(|s, _| s.approve(id, device_id));
        if let Ok(d) = &r {
            info!(operation = %id, device = %d, "provisioning operation approved");
        }
        r
    }

    pub fn cancel(&self, id: &str) -> bool {
        self.with_state(|s, _| s.cancel(id))
    }

    /// Revokes the device's connection credentials (its SAS); returns how many there were.
    pub fn revoke_connection_credentials(&self, hub_id: &str) -> usize {
        let revoked = self.with_state(|s, _| s.revoke_sas(hub_id));
        info!(device = %hub_id, revoked, "connection credentials revoked");
        revoked
    }

    pub fn twin(&self, hub_id: &str) -> Option<Twin> {
        self.lock().devices.get(hub_id).map(|d| d.twin.clone())
    }

    /// Applies a desired-properties patch (without `$version`) and records it in the twin's
    /// history; returns the new version.
    pub fn update_desired(&self, hub_id: &str, patch: &Map<String, Value>) -> Result<u64, TwinRefusal> {
        let version = self.change_twin(|s| s.update_desired(hub_id, patch))?;
        self.db.twin_history(hub_id, "desired", version, &Value::Object(patch.clone()));
        info!(device = %hub_id, version, "desired properties updated");
        Ok(version)
    }

    pub fn patch_reported(&self, hub_id: &str, patch: &Map<String, Value>) -> Result<u64, TwinRefusal> {
        let version = self.change_twin(|s| s.patch_reported(hub_id, patch))?;
        self.db.twin_history(hub_id, "reported", version, &Value::Object(patch.clone()));
        debug!(device = %hub_id, version, "reported properties patched");
        Ok(version)
    }

    /// Forgets the device's subscriptions on a clean session; returns whether it has any (a
    /// session present from an earlier connection).
    pub fn start_session(&self, hub_id: &str, clean: bool) -> bool {
        self.with_device(hub_id, |device| match device {
            Some(d) if clean => {
                d.subscriptions.clear();
                false
            }
            Some(d) => !d.subscriptions.is_empty(),
            None => false,
        })
    }

    pub fn subscribe(&self, hub_id: &str, filters: Vec<String>) {
        self.with_device(hub_id, |device| {
            if let Some(d) = device {
                d.subscriptions.extend(filters);
            }
        });
    }

    pub fn unsubscribe(&self, hub_id: &str, filters: &[String]) {
        self.with_device(hub_id, |device| {
            if let Some(d) = device {
                for f in filters {
                    d.subscriptions.remove(f);
                }
            }
        });
    }

    pub fn is_subscribed(&self, hub_id: &str, topic: &str) -> bool {
        self.lock().devices.get(hub_id).is_some_and(|d| d.subscriptions.iter().any(|f| mqtt::topic_matches(f, topic)))
    }
}
