//! **Addition**: software updates from C (`spotflow_device::update`): the application's install,
//! health-check and rollback callbacks, called on the SDK's threads.

use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spotflow_device::update::{
    Blocking, BlockingUpdateHandler, Installed, UpdateAgent, UpdateInfo, UpdateOptions, UpdateRecord,
};

use crate::context::Context;
use crate::ffi::{optional_str, out_buffer, out_ptr, Failure, Outcome};
use crate::{spotflow_client_t, spotflow_result_t, with_client};

/// **Addition**: the update a callback is called about (valid only during the call).
#[repr(C)]
#[derive(Debug)]
pub struct spotflow_update_info_t {
    /// The manifest's id.
    pub id: *const c_char,
    /// The version the artifact installs.
    pub version: *const c_char,
    /// The artifact's size in bytes.
    pub size: u64,
    /// Its SHA-256 (lowercase hexadecimal), checked.
    pub sha256: *const c_char,
}

/// **Addition**: installs the verified artifact at `artifact_path` (on an SDK thread); returns 0
/// and sets `*needs_reboot`, or any other value to fail the update, with a reason written (with a
/// NUL) into `error` (`error_length` bytes). Called again after a crash during a call: make it
/// idempotent.
pub type spotflow_update_install_callback_t = Option<
    unsafe extern "C" fn(
        update: *const spotflow_update_info_t,
        artifact_path: *const c_char,
        needs_reboot: *mut bool,
        error: *mut c_char,
        error_length: usize,
        context: *mut c_void,
    ) -> i32,
>;

/// **Addition**: the health check of the new version, or the rollback to the previous one (on an
/// SDK thread); returns 0, or any other value with a reason written into `error`.
pub type spotflow_update_callback_t = Option<
    unsafe extern "C" fn(
        update: *const spotflow_update_info_t,
        error: *mut c_char,
        error_length: usize,
        context: *mut c_void,
    ) -> i32,
>;

const ERROR_LENGTH: usize = 512;

struct CHandler {
    install: unsafe extern "C" fn(
        *const spotflow_update_info_t,
        *const c_char,
        *mut bool,
        *mut c_char,
        usize,
        *mut c_void,
    ) -> i32,
    confirm: spotflow_update_callback_t,
    rollback: unsafe extern "C" fn(*const spotflow_update_info_t, *mut c_char, usize, *mut c_void) -> i32,
    context: Context,
}

/// The C strings of an update, alive while a callback runs.
struct CInfo {
    id: CString,
    version: CString,
    sha256: CString,
    size: u64,
}

impl CInfo {
    fn new(u: &UpdateInfo) -> Result<CInfo, String> {
        let c = |s: &str| CString::new(s).map_err(|_| "a NUL byte in the update's fields".to_string());
        Ok(CInfo { id: c(&u.id)?, version: c(&u.version)?, sha256: c(&u.sha256)?, size: u.size })
    }
    fn raw(&self) -> spotflow_update_info_t {
        spotflow_update_info_t {
            id: self.id.as_ptr(),
            version: self.version.as_ptr(),
            size: self.size,
            sha256: self.sha256.as_ptr(),
        }
    }
}

/// The reason a callback wrote, or a default.
fn reason(buffer: &[u8], what: &str, code: i32) -> String {
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
    if text.is_empty() {
        format!("the {what} callback returned {code}")
    } else {
        text
    }
}

impl BlockingUpdateHandler for CHandler {
    fn install(&self, update: &UpdateInfo, artifact: &Path) -> Result<Installed, String> {
        let info = CInfo::new(update)?;
        let path = CString::new(artifact.to_string_lossy().into_owned()).map_err(|_| "a NUL byte in the path")?;
        let mut error = [0u8; ERROR_LENGTH];
        let mut needs_reboot = false;
        let raw = info.raw();
        // SAFETY: the caller's callback, given valid pointers alive for the call.
        let code = unsafe {
            (self.install)(
                &raw,
                path.as_ptr(),
                &mut needs_reboot,
                error.as_mut_ptr().cast(),
                ERROR_LENGTH,
                self.context.ptr(),
            )
        };
        if code == 0 {
            Ok(Installed { needs_reboot })
        } else {
            Err(reason(&error, "install", code))
        }
    }
    fn confirm(&self, update: &UpdateInfo) -> Result<(), String> {
        let Some(confirm) = self.confirm else { return Ok(()) };
        let info = CInfo::new(update)?;
        let mut error = [0u8; ERROR_LENGTH];
        let raw = info.raw();
        // SAFETY: as in `install`.
        let code = unsafe { confirm(&raw, error.as_mut_ptr().cast(), ERROR_LENGTH, self.context.ptr()) };
        if code == 0 {
            Ok(())
        } else {
            Err(reason(&error, "health check", code))
        }
    }
    fn rollback(&self, update: &UpdateInfo) -> Result<(), String> {
        let info = CInfo::new(update)?;
        let mut error = [0u8; ERROR_LENGTH];
        let raw = info.raw();
        // SAFETY: as in `install`.
        let code = unsafe { (self.rollback)(&raw, error.as_mut_ptr().cast(), ERROR_LENGTH, self.context.ptr()) };
        if code == 0 {
            Ok(())
        } else {
            Err(reason(&error, "rollback", code))
        }
    }
}

/// Writes `record`'s reported state (JSON) with a NUL into `buffer`; `*state_length` is the
/// length needed (with the NUL).
fn write_state(record: &UpdateRecord, buffer: *mut c_char, buffer_length: usize, state_length: *mut usize) -> Outcome {
    let length_out = out_ptr(state_length, "state_length")?;
    let json = record.reported().to_string();
    let needed = json.len() + 1;
    length_out.write(needed);
    if buffer_length < needed {
        return Err(Failure::with(
            spotflow_result_t::SPOTFLOW_INSUFFICIENT_BUFFER,
            format!("the state needs {needed} bytes, the buffer has {buffer_length}"),
        ));
    }
    let out = out_buffer(buffer, buffer_length, "buffer")?;
    out[..json.len()].copy_from_slice(json.as_bytes());
    out[json.len()] = 0;
    Ok(())
}

fn agent(client: &spotflow_client_t) -> Outcome<Arc<UpdateAgent>> {
    spotflow_core::lock(&client.update_agent)
        .clone()
        .ok_or_else(|| Failure::error("no update agent: call spotflow_client_start_update_agent first"))
}

/// **Addition**: starts applying the software updates the platform asks for (the desired
/// property `spotflowUpdate`): the verified artifact goes to `install`, the new version's health
/// check to `confirm` (NULL: healthy) within `confirm_timeout_ms` after the install or the reboot
/// it asked for, a failed check to `rollback`; all with `context`, on SDK threads. With
/// `public_key` (64 hexadecimal digits, Ed25519; NULL: none), only manifests signed with it are
/// applied. One agent per client; it stops with `spotflow_client_destroy`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_start_update_agent(
    client: *mut spotflow_client_t,
    public_key: *const c_char,
    confirm_timeout_ms: u64,
    install: spotflow_update_install_callback_t,
    confirm: spotflow_update_callback_t,
    rollback: spotflow_update_callback_t,
    context: *mut c_void,
) -> spotflow_result_t {
    with_client("spotflow_client_start_update_agent", client, |client| {
        let install = install.ok_or_else(|| Failure::error("install must not be NULL"))?;
        let rollback = rollback.ok_or_else(|| Failure::error("rollback must not be NULL"))?;
        if confirm_timeout_ms == 0 {
            return Err(Failure::error("confirm_timeout_ms must be above 0"));
        }
        // SAFETY: NULL or a NUL-terminated string (the caller's contract).
        let key = unsafe { optional_str(public_key, "public_key") }?;
        let mut slot = spotflow_core::lock(&client.update_agent);
        if slot.is_some() {
            return Err(Failure::error("an update agent runs already for this client"));
        }
        let mut options = UpdateOptions::default();
        if let Some(key) = key {
            options = options.with_public_key_hex(key)?;
        }
        options.confirm_timeout = Duration::from_millis(confirm_timeout_ms);
        let handler = CHandler { install, confirm, rollback, context: Context(context) };
        let agent = client.client.start_update_agent(options, Arc::new(Blocking(Arc::new(handler))))?;
        *slot = Some(Arc::new(agent));
        Ok(())
    })
}

/// **Addition**: the update's state as reported to the platform (JSON: `id`, `version`, `state`,
/// `bytes`, `size`, `error`, `queued`) with a NUL into `buffer`; `*state_length` is the length
/// needed (`SPOTFLOW_INSUFFICIENT_BUFFER` when the buffer is shorter).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_update_state(
    client: *mut spotflow_client_t,
    buffer: *mut c_char,
    buffer_length: usize,
    state_length: *mut usize,
) -> spotflow_result_t {
    with_client("spotflow_client_get_update_state", client, |client| {
        write_state(&agent(client)?.record(), buffer, buffer_length, state_length)
    })
}

/// **Addition**: waits at most `timeout_ms` until an update ends (the one with `update_id`; NULL:
/// any) and writes its state as `spotflow_client_get_update_state` does; `SPOTFLOW_TIMEOUT` when
/// none ended in time.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_wait_update_finished(
    client: *mut spotflow_client_t,
    update_id: *const c_char,
    timeout_ms: u64,
    buffer: *mut c_char,
    buffer_length: usize,
    state_length: *mut usize,
) -> spotflow_result_t {
    with_client("spotflow_client_wait_update_finished", client, |client| {
        // SAFETY: NULL or a NUL-terminated string (the caller's contract).
        let id = unsafe { optional_str(update_id, "update_id") }?;
        let agent = agent(client)?;
        let done = |r: &UpdateRecord| {
            let ours = id.is_none_or(|id| r.manifest.as_ref().is_some_and(|m| m.id == id));
            ours && r.manifest.is_some() && r.phase.is_final()
        };
        let record = match client.client.wait_for_update(&agent, Duration::from_millis(timeout_ms), done) {
            Ok(r) => r,
            Err(spotflow_device::Error::Timeout(m)) => {
                return Err(Failure::with(spotflow_result_t::SPOTFLOW_TIMEOUT, m));
            }
            Err(e) => return Err(e.into()),
        };
        write_state(&record, buffer, buffer_length, state_length)
    })
}
