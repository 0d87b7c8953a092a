//! The C interface of the Spotflow device SDK: `spotflow.h` (in `include/`, generated from this
//! file with cbindgen) with the names, prototypes, result codes and ownership rules of the
//! official C library 2.1.x, on this workspace's device client (its durable queue, many messages
//! in flight, its error texts).
//!
//! Beyond the official library: every pointer argument is checked (NULL, or an object destroyed
//! already: `SPOTFLOW_ERROR` and a last-error message, never a crash), no panic crosses into C,
//! logs can go to the application's callback, and the additions marked as such in the header
//! (durability, statistics, direct methods, remote access, LZ4/Zstandard, a timeout wait, the
//! MQTT port).
#![allow(non_camel_case_types)]
// Every exported function checks its pointers before it follows one; the header documents what
// the caller must give.
#![allow(clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

mod context;
mod ffi;
mod log;
mod update;

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use spotflow_device::blocking::{DeviceClient, StreamSender};
use spotflow_device::{Compression, Durability, Message};

use context::Context;
use ffi::{guard, optional_str, out_buffer, out_ptr, required_str, Failure, Outcome, Registry};

/// Largest device ID in bytes, NUL included.
pub const SPOTFLOW_DEVICE_ID_MAX_LENGTH: usize = 128;
/// Largest workspace ID in bytes, NUL included.
pub const SPOTFLOW_WORKSPACE_ID_MAX_LENGTH: usize = 37;
/// Largest error message in bytes, NUL included (see `spotflow_read_last_error_message`).
pub const SPOTFLOW_ERROR_MAX_LENGTH: usize = 1024;
/// Any version of the desired properties (`spotflow_client_get_desired_properties_if_newer`).
pub const SPOTFLOW_PROPERTIES_VERSION_ANY: u64 = 0;

/// The result of a function.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum spotflow_result_t {
    /// Success.
    SPOTFLOW_OK = 0,
    /// Failure; `spotflow_read_last_error_message` tells why.
    SPOTFLOW_ERROR = 1,
    /// The buffer given is too small for the result.
    SPOTFLOW_INSUFFICIENT_BUFFER = 2,
    /// Not available yet (kept from the official library; no public function returns it).
    SPOTFLOW_NOT_READY = 3,
    /// **Addition**: the wait ended at its timeout (`spotflow_client_wait_enqueued_messages_sent_timeout`).
    SPOTFLOW_TIMEOUT = 4,
}

/// The compression of the messages of a message context.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum spotflow_compression_t {
    /// Sent as they are (the default).
    SPOTFLOW_COMPRESSION_NONE = 0,
    /// Brotli at its fastest setting, which the platform decodes.
    SPOTFLOW_COMPRESSION_FASTEST = 1,
    /// Brotli at its smallest-size setting (slow), which the platform decodes.
    SPOTFLOW_COMPRESSION_SMALLEST_SIZE = 2,
    /// **Addition**: an LZ4 frame; only for a receiver known to decode it (e.g. the emulator).
    SPOTFLOW_COMPRESSION_LZ4 = 3,
    /// **Addition**: a Zstandard frame at level 3; only for a receiver known to decode it (e.g.
    /// the emulator).
    SPOTFLOW_COMPRESSION_ZSTD = 4,
}

/// The level of the library's logs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum spotflow_log_level_t {
    SPOTFLOW_LOG_OFF = 0,
    SPOTFLOW_LOG_ERROR = 1,
    SPOTFLOW_LOG_WARN = 2,
    SPOTFLOW_LOG_INFO = 3,
    SPOTFLOW_LOG_DEBUG = 4,
    SPOTFLOW_LOG_TRACE = 5,
}

/// **Addition**: what `enqueue_message` waits for before it returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum spotflow_durability_t {
    /// On the disk (fsync'd): survives a power cut (the default).
    SPOTFLOW_DURABILITY_POWER_LOSS_SAFE = 0,
    /// Survives the process being killed, not a power cut; much faster for one sender.
    SPOTFLOW_DURABILITY_CRASH_SAFE = 1,
}

/// **Addition**: what happened to the connection (`spotflow_connection_event_t::kind`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum spotflow_connection_event_kind_t {
    /// An attempt to connect starts (`attempt`).
    SPOTFLOW_CONNECTION_CONNECTING = 0,
    /// Connected: messages and properties flow.
    SPOTFLOW_CONNECTION_CONNECTED = 1,
    /// Lost, or an attempt failed on the way (`reason`, `retry_in_ms`).
    SPOTFLOW_CONNECTION_DISCONNECTED = 2,
    /// The platform refused the connection (`reason`, `permanent`, `retry_in_ms`).
    SPOTFLOW_CONNECTION_REFUSED = 3,
    /// The client was closed: nothing follows.
    SPOTFLOW_CONNECTION_CLOSED = 4,
}

/// **Addition**: why a connection ended or could not be made.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum spotflow_disconnect_reason_t {
    /// No reason (the event is not a disconnection or refusal).
    SPOTFLOW_DISCONNECT_NONE = 0,
    /// The network (no route, refused or reset connection, the server closing it, a timeout).
    SPOTFLOW_DISCONNECT_NETWORK = 1,
    /// The TLS handshake (certificate not trusted, wrong name, protocol).
    SPOTFLOW_DISCONNECT_TLS = 2,
    /// The link stalled (no answer within the stall timeout or the keep-alive).
    SPOTFLOW_DISCONNECT_STALLED = 3,
    /// The broker refused the credentials (e.g. an expired or revoked SAS).
    SPOTFLOW_DISCONNECT_AUTHENTICATION = 4,
    /// The platform refused for another reason, or spoke something else than the protocol.
    SPOTFLOW_DISCONNECT_PLATFORM = 5,
    /// Closed to reconnect with renewed credentials.
    SPOTFLOW_DISCONNECT_CREDENTIAL_RENEWAL = 6,
}

/// **Addition**: a connection event (valid only during the callback).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct spotflow_connection_event_t {
    /// What happened.
    pub kind: spotflow_connection_event_kind_t,
    /// The attempt's number since start (`SPOTFLOW_CONNECTION_CONNECTING`; else 0).
    pub attempt: u64,
    /// Why (`SPOTFLOW_CONNECTION_DISCONNECTED`, `SPOTFLOW_CONNECTION_REFUSED`; else NONE).
    pub reason: spotflow_disconnect_reason_t,
    /// The reason in words (NUL-terminated), or NULL.
    pub message: *const c_char,
    /// Whether trying again may succeed without anything else changing.
    pub retry_helps: bool,
    /// Milliseconds until the client tries again.
    pub retry_in_ms: u64,
    /// Whether retrying with the same credentials cannot succeed (`SPOTFLOW_CONNECTION_REFUSED`).
    pub permanent: bool,
}

/// **Addition**: receives every connection event, in order, on a thread of its own (events it
/// falls more than 256 behind on are lost, oldest first).
pub type spotflow_connection_event_callback_t =
    Option<unsafe extern "C" fn(event: *const spotflow_connection_event_t, context: *mut c_void)>;

// An enum parameter arrives as a C int that may hold any value: it is read as such and checked,
// never taken for a Rust enum (an unknown value would be undefined behaviour). The header shows
// these parameters with their enum types (cbindgen.toml renames them and leaves them out).
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct CompressionArg(pub c_int);
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct LogLevelArg(pub c_int);
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct DurabilityArg(pub c_int);

/// A provisioning operation waiting for approval (valid only during the callback).
#[repr(C)]
pub struct spotflow_provisioning_operation_t {
    /// The operation's ID.
    pub id: *const c_char,
    /// The code a technician compares when approving the device.
    pub verification_code: *const c_char,
    /// When the operation expires (RFC 3339).
    pub expiration_time: *const c_char,
}

/// Shows a provisioning operation (called on the thread that called `spotflow_client_start`).
pub type spotflow_display_provisioning_operation_callback_t =
    Option<unsafe extern "C" fn(operation: *const spotflow_provisioning_operation_t, context: *mut c_void)>;

/// Receives the desired properties (JSON, NUL-terminated, valid only during the call) and their
/// version: after start and on every update, on a background thread.
pub type spotflow_desired_properties_updated_callback_t =
    Option<unsafe extern "C" fn(desired_properties: *const c_char, version: u64, context: *mut c_void)>;

/// **Addition**: receives the library's log records (strings valid only during the call), on
/// whichever thread logs.
pub type spotflow_log_callback_t = Option<
    unsafe extern "C" fn(
        level: spotflow_log_level_t,
        target: *const c_char,
        message: *const c_char,
        context: *mut c_void,
    ),
>;

/// **Addition**: handles a direct method call on a background thread and returns its status
/// (100–599); the body of the answer is set with `spotflow_method_response_set_body` (JSON; null
/// when not set). `method` and `payload` are valid only during the call.
pub type spotflow_direct_method_handler_t = Option<
    unsafe extern "C" fn(
        method: *const c_char,
        payload: *const u8,
        payload_length: usize,
        response: *mut spotflow_method_response_t,
        context: *mut c_void,
    ) -> i32,
>;

/// **Addition**: the client's figures (`spotflow_client_get_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct spotflow_stats_t {
    /// Messages in the durable queue, not acknowledged yet.
    pub queued_messages: u64,
    /// Their bytes.
    pub queued_bytes: u64,
    /// Age of the oldest queued message in milliseconds (0: none queued).
    pub oldest_queued_age_ms: u64,
    /// Messages sent and waiting for their acknowledgement.
    pub in_flight: u64,
    /// Messages enqueued since start.
    pub enqueued_total: u64,
    /// Messages acknowledged by the platform since start.
    pub delivered_total: u64,
    /// Messages sent again after a reconnection since start.
    pub redelivered_total: u64,
    /// Messages dropped by the queue's full policy since start.
    pub dropped_total: u64,
    /// Messages the platform refused for good since start.
    pub refused_total: u64,
    /// Enqueue calls that failed since start.
    pub failed_enqueues_total: u64,
    /// Whether the client is connected now.
    pub connected: bool,
    /// Reconnections since start.
    pub reconnects: u64,
    /// Connection attempts since start.
    pub connection_attempts: u64,
    /// Version of the desired properties held (0: none yet).
    pub desired_version: u64,
    /// Version of the reported properties the platform confirmed (0: none yet).
    pub reported_version: u64,
    /// Median time from enqueue to acknowledgement, in microseconds (0: no sample yet).
    pub latency_p50_us: u64,
    /// 99th percentile of that time, in microseconds (0: no sample yet).
    pub latency_p99_us: u64,
}

/// Remote access allowed by the options.
#[derive(Debug, Clone)]
enum RemoteAccess {
    Off,
    All,
    Ports(Vec<u16>),
}

#[derive(Clone)]
struct MethodHandler {
    method: String,
    handler: unsafe extern "C" fn(*const c_char, *const u8, usize, *mut spotflow_method_response_t, *mut c_void) -> i32,
    context: Context,
}

/// The options of a client (`spotflow_client_options_create`); copied by `spotflow_client_start`.
pub struct spotflow_client_options_t {
    device_id: Option<String>,
    provisioning_token: String,
    database_file: PathBuf,
    instance: Option<String>,
    display: Option<(DisplayFn, Context)>,
    desired: Option<(unsafe extern "C" fn(*const c_char, u64, *mut c_void), Context)>,
    connection_events: Option<(unsafe extern "C" fn(*const spotflow_connection_event_t, *mut c_void), Context)>,
    durability: Durability,
    mqtt_port: u16,
    methods: Vec<MethodHandler>,
    remote_access: RemoteAccess,
}

impl std::fmt::Debug for spotflow_client_options_t {
    // The provisioning token is a secret: never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("spotflow_client_options_t")
            .field("device_id", &self.device_id)
            .field("database_file", &self.database_file)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Where and how messages go (`spotflow_message_context_create`).
#[derive(Debug, Clone, PartialEq)]
pub struct spotflow_message_context_t {
    stream_group: Option<String>,
    stream: Option<String>,
    compression: Compression,
}

/// A client connected to the platform (`spotflow_client_start`).
pub struct spotflow_client_t {
    client: DeviceClient,
    /// One sender per message context's settings, made on first use.
    senders: Mutex<Vec<(spotflow_message_context_t, StreamSender)>>,
    /// Its device logger (`spotflow_client_log`), started at the first record.
    logger: Mutex<Option<spotflow_device::logs::DeviceLogger>>,
    /// Where `spotflow_client_receive_c2d_message` is in the inbox.
    inbox: Mutex<Option<spotflow_device::blocking::C2dMessages>>,
    /// Its update agent (`spotflow_client_start_update_agent`).
    update_agent: Mutex<Option<Arc<spotflow_device::update::UpdateAgent>>>,
}

/// **Addition**: a cloud-to-device message from the device's durable inbox
/// (`spotflow_client_receive_c2d_message`); free it with `spotflow_c2d_message_destroy`.
#[derive(Debug)]
pub struct spotflow_c2d_message_t {
    message: spotflow_device::blocking::C2dMessage,
}

/// **Addition**: the answer of a direct method handler being written.
#[derive(Debug, Default)]
pub struct spotflow_method_response_t {
    body: Option<Value>,
}

static OPTIONS: Registry = Registry::new("spotflow_client_options_t");
static CONTEXTS: Registry = Registry::new("spotflow_message_context_t");
static CLIENTS: Registry = Registry::new("spotflow_client_t");
static C2D_MESSAGES: Registry = Registry::new("spotflow_c2d_message_t");

fn compression(arg: CompressionArg) -> Outcome<Compression> {
    Ok(match arg.0 {
        0 => Compression::Uncompressed,
        1 => Compression::Fastest,
        2 => Compression::SmallestSize,
        3 => Compression::Lz4,
        4 => Compression::Zstd { level: 3 },
        other => {
            return Err(Failure::error(format!("compression {other} is not a spotflow_compression_t value (0-4)")))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Logging and errors

/// Sets the level of the library's logs (stderr by default, from `SPOTFLOW_LOG_WARN`).
#[no_mangle]
pub extern "C" fn spotflow_set_log_level(level: LogLevelArg) -> spotflow_result_t {
    guard("spotflow_set_log_level", || {
        let level = u8::try_from(level.0)
            .ok()
            .filter(|l| *l <= 5)
            .ok_or_else(|| Failure::error(format!("level {} is not a spotflow_log_level_t value (0-5)", level.0)))?;
        log::set_level(level);
        Ok(())
    })
}

/// **Addition**: sends the library's log records to `callback` (with `context`) instead of stderr;
/// NULL goes back to stderr. The level still applies (`spotflow_set_log_level`).
#[no_mangle]
pub extern "C" fn spotflow_set_log_callback(
    callback: spotflow_log_callback_t,
    context: *mut c_void,
) -> spotflow_result_t {
    guard("spotflow_set_log_callback", || {
        log::set_callback(callback, Context(context));
        Ok(())
    })
}

/// Copies this thread's last error message into `buffer` and clears it. Returns the bytes
/// written, NUL included; 0 without an error (an empty string is written if `buffer_length` > 0);
/// -1 if `buffer` is NULL, or if it is under `SPOTFLOW_ERROR_MAX_LENGTH` bytes and too small (the
/// error is kept). From `SPOTFLOW_ERROR_MAX_LENGTH` bytes on, a longer message is truncated.
#[no_mangle]
pub unsafe extern "C" fn spotflow_read_last_error_message(buffer: *mut c_char, buffer_length: usize) -> c_int {
    // SAFETY: the header's contract: NULL or `buffer_length` writable bytes.
    std::panic::catch_unwind(|| unsafe { ffi::read_last_error(buffer, buffer_length) }).unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------------
// Client options

/// Creates client options. `provisioning_token` and `database_file` are required; `device_id`
/// may be NULL (the platform then takes the ID from the provisioning token).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_create(
    options: *mut *mut spotflow_client_options_t,
    device_id: *const c_char,
    provisioning_token: *const c_char,
    database_file: *const c_char,
) -> spotflow_result_t {
    guard("spotflow_client_options_create", || {
        let out = out_ptr(options, "options")?;
        // SAFETY (these three): NULL or NUL-terminated strings, the header's contract.
        let device_id = unsafe { optional_str(device_id, "device_id") }?;
        let provisioning_token = unsafe { required_str(provisioning_token, "provisioning_token") }?;
        let database_file = unsafe { required_str(database_file, "database_file") }?;
        let created = OPTIONS.register(spotflow_client_options_t {
            device_id: device_id.map(String::from),
            provisioning_token: provisioning_token.into(),
            database_file: database_file.into(),
            instance: None,
            display: None,
            desired: None,
            connection_events: None,
            durability: Durability::default(),
            mqtt_port: 8883,
            methods: Vec::new(),
            remote_access: RemoteAccess::Off,
        });
        out.write(created);
        Ok(())
    })
}

/// Runs `change` on the options behind `options` (registered, checked).
fn with_options(
    function: &str,
    options: *mut spotflow_client_options_t,
    change: impl FnOnce(&mut spotflow_client_options_t) -> Outcome,
) -> spotflow_result_t {
    guard(function, || {
        // SAFETY: checked against the registry before it is followed.
        let options = unsafe { OPTIONS.get_mut(options, "options") }?;
        change(options)
    })
}

/// Sets the path of the local database file (required; created by `spotflow_client_start` if it
/// is missing).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_database_file(
    options: *mut spotflow_client_options_t,
    database_file: *const c_char,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_database_file", options, |o| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        o.database_file = unsafe { required_str(database_file, "database_file") }?.into();
        Ok(())
    })
}

/// Sets the provisioning token (required).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_provisioning_token(
    options: *mut spotflow_client_options_t,
    provisioning_token: *const c_char,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_provisioning_token", options, |o| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        o.provisioning_token = unsafe { required_str(provisioning_token, "provisioning_token") }?.into();
        Ok(())
    })
}

/// Sets the device ID (NULL: the platform takes it from the provisioning token).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_device_id(
    options: *mut spotflow_client_options_t,
    device_id: *const c_char,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_device_id", options, |o| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        o.device_id = unsafe { optional_str(device_id, "device_id") }?.map(String::from);
        Ok(())
    })
}

/// Sets the platform instance (NULL: `api.eu1.spotflow.io`).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_instance(
    options: *mut spotflow_client_options_t,
    instance: *const c_char,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_instance", options, |o| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        o.instance = unsafe { optional_str(instance, "instance") }?.map(String::from);
        Ok(())
    })
}

/// Sets the callback that shows a provisioning operation waiting for approval (NULL: printed to
/// stdout). It runs on the thread that calls `spotflow_client_start`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_display_provisioning_operation_callback(
    options: *mut spotflow_client_options_t,
    callback: spotflow_display_provisioning_operation_callback_t,
    context: *mut c_void,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_display_provisioning_operation_callback", options, |o| {
        o.display = callback.map(|c| (c, Context(context)));
        Ok(())
    })
}

/// Sets the callback that receives the desired properties, after start and on every update, on a
/// background thread (synchronize what `context` points to).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_desired_properties_updated_callback(
    options: *mut spotflow_client_options_t,
    callback: spotflow_desired_properties_updated_callback_t,
    context: *mut c_void,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_desired_properties_updated_callback", options, |o| {
        o.desired = callback.map(|c| (c, Context(context)));
        Ok(())
    })
}

/// **Addition**: sets the callback that receives every connection event (connecting, connected,
/// disconnected or refused with the reason, closed), in order, on a thread of its own
/// (synchronize what `context` points to); NULL removes it.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_connection_event_callback(
    options: *mut spotflow_client_options_t,
    callback: spotflow_connection_event_callback_t,
    context: *mut c_void,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_connection_event_callback", options, |o| {
        o.connection_events = callback.map(|c| (c, Context(context)));
        Ok(())
    })
}

/// **Addition**: sets what `spotflow_client_enqueue_message` waits for (default: power-loss safe).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_durability(
    options: *mut spotflow_client_options_t,
    durability: DurabilityArg,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_durability", options, |o| {
        o.durability = match durability.0 {
            0 => Durability::PowerLossSafe,
            1 => Durability::CrashSafe,
            other => {
                return Err(Failure::error(format!("durability {other} is not a spotflow_durability_t value (0-1)")))
            }
        };
        Ok(())
    })
}

/// **Addition**: sets the MQTT port of the platform (default 8883).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_mqtt_port(
    options: *mut spotflow_client_options_t,
    port: u16,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_mqtt_port", options, |o| {
        if port == 0 {
            return Err(Failure::error("port must not be 0"));
        }
        o.mqtt_port = port;
        Ok(())
    })
}

/// **Addition**: handles the direct method `method` with `handler` (called with `context` on a
/// background thread). A method without a handler is answered 404 (status of the platform).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_set_direct_method_handler(
    options: *mut spotflow_client_options_t,
    method: *const c_char,
    handler: spotflow_direct_method_handler_t,
    context: *mut c_void,
) -> spotflow_result_t {
    with_options("spotflow_client_options_set_direct_method_handler", options, |o| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        let method = unsafe { required_str(method, "method") }?;
        let handler = handler.ok_or_else(|| Failure::error("handler must not be NULL"))?;
        o.methods.retain(|m| m.method != method);
        o.methods.push(MethodHandler { method: method.into(), handler, context: Context(context) });
        Ok(())
    })
}

/// **Addition**: allows remote access (tunnels from the platform) to the given TCP ports of this
/// device; `ports` NULL with `count` 0 allows every port.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_allow_remote_access(
    options: *mut spotflow_client_options_t,
    ports: *const u16,
    count: usize,
) -> spotflow_result_t {
    with_options("spotflow_client_options_allow_remote_access", options, |o| {
        o.remote_access = if ports.is_null() {
            if count != 0 {
                return Err(Failure::error("ports must not be NULL when count is not 0"));
            }
            RemoteAccess::All
        } else {
            if !ports.is_aligned() {
                return Err(Failure::error("ports is not aligned for uint16_t"));
            }
            // SAFETY: non-null, aligned, `count` readable values (the contract).
            RemoteAccess::Ports(unsafe { std::slice::from_raw_parts(ports, count) }.to_vec())
        };
        Ok(())
    })
}

/// Frees client options (NULL and pointers this library did not give are ignored).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_options_destroy(options: *mut spotflow_client_options_t) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: only a registered pointer is taken back.
        drop(unsafe { OPTIONS.unregister(options) });
    }));
}

// ---------------------------------------------------------------------------------------------
// Client

/// An operation for the starting thread to show.
enum Starting {
    Operation { id: CString, verification_code: CString, expiration_time: CString },
    Done(spotflow_device::Result<DeviceClient>),
}

type DisplayFn = unsafe extern "C" fn(*const spotflow_provisioning_operation_t, *mut c_void);

fn display(callback: Option<(DisplayFn, Context)>, id: &CString, code: &CString, expiration: &CString) {
    match callback {
        Some((callback, context)) => {
            let operation = spotflow_provisioning_operation_t {
                id: id.as_ptr(),
                verification_code: code.as_ptr(),
                expiration_time: expiration.as_ptr(),
            };
            // SAFETY: the application's callback, given an operation valid during the call.
            unsafe { callback(&operation, context.ptr()) };
        }
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "Provisioning operation initialized, waiting for approval.");
            let _ = writeln!(out, "Operation ID: {}", id.to_string_lossy());
            let _ = writeln!(out, "Verification Code: {}", code.to_string_lossy());
            let _ = writeln!(out, "Expiration Time: {}", expiration.to_string_lossy());
            let _ = out.flush();
        }
    }
}

fn method_response(handler: &MethodHandler, call: &spotflow_device::MethodCall) -> spotflow_device::MethodResponse {
    let method = CString::new(call.method()).unwrap_or_default();
    let mut response = spotflow_method_response_t::default();
    let payload = call.payload();
    // SAFETY: the application's handler, given strings and a response valid during the call.
    let status = unsafe {
        (handler.handler)(method.as_ptr(), payload.as_ptr(), payload.len(), &mut response, handler.context.ptr())
    };
    match u16::try_from(status).ok().filter(|s| (100..=599).contains(s)) {
        Some(status) => spotflow_device::MethodResponse { status, body: response.body.unwrap_or(Value::Null) },
        None => spotflow_device::MethodResponse::error(
            500,
            format!("the handler of {:?} returned {status}, not a status (100-599)", handler.method),
        ),
    }
}

/// A connection event as C sees it, with the message it points to.
struct CConnectionEvent {
    event: spotflow_connection_event_t,
    _message: Option<CString>,
}

fn connection_event(event: &spotflow_device::ConnectionEvent) -> CConnectionEvent {
    use spotflow_connection_event_kind_t as K;
    use spotflow_device::{ConnectionEvent as E, DisconnectReason as R};
    use spotflow_disconnect_reason_t as D;
    let mut c = spotflow_connection_event_t {
        kind: K::SPOTFLOW_CONNECTION_CLOSED,
        attempt: 0,
        reason: D::SPOTFLOW_DISCONNECT_NONE,
        message: std::ptr::null(),
        retry_helps: false,
        retry_in_ms: 0,
        permanent: false,
    };
    let mut message = None;
    let mut with_reason = |c: &mut spotflow_connection_event_t, reason: &R, retry_in: &std::time::Duration| {
        c.reason = match reason {
            R::Network(_) => D::SPOTFLOW_DISCONNECT_NETWORK,
            R::Tls(_) => D::SPOTFLOW_DISCONNECT_TLS,
            R::Stalled(_) => D::SPOTFLOW_DISCONNECT_STALLED,
            R::Authentication(_) => D::SPOTFLOW_DISCONNECT_AUTHENTICATION,
            R::CredentialRenewal => D::SPOTFLOW_DISCONNECT_CREDENTIAL_RENEWAL,
            _ => D::SPOTFLOW_DISCONNECT_PLATFORM,
        };
        c.retry_helps = reason.retry_helps();
        c.retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
        let text = CString::new(reason.to_string().replace('\0', " ")).unwrap_or_default();
        c.message = text.as_ptr();
        message = Some(text);
    };
    match event {
        E::Connecting { attempt } => {
            c.kind = K::SPOTFLOW_CONNECTION_CONNECTING;
            c.attempt = *attempt;
        }
        E::Connected { .. } => c.kind = K::SPOTFLOW_CONNECTION_CONNECTED,
        E::Disconnected { reason, retry_in } => {
            c.kind = K::SPOTFLOW_CONNECTION_DISCONNECTED;
            with_reason(&mut c, reason, retry_in);
        }
        E::Refused { reason, permanent, retry_in } => {
            c.kind = K::SPOTFLOW_CONNECTION_REFUSED;
            with_reason(&mut c, reason, retry_in);
            c.permanent = *permanent;
        }
        _ => {}
    }
    CConnectionEvent { event: c, _message: message }
}

fn start(options: &spotflow_client_options_t) -> Outcome<DeviceClient> {
    let mut builder = DeviceClient::builder(
        options.device_id.clone(),
        options.provisioning_token.clone(),
        options.database_file.clone(),
    );
    let (durability, mqtt_port) = (options.durability, options.mqtt_port);
    builder = builder.with_options(|o| o.durability = durability).with_network(|n| n.mqtt_port = mqtt_port);
    if let Some(instance) = &options.instance {
        builder = builder.instance(instance.clone());
    }
    // Operations are shown by the thread that called start while it waits; later ones (a
    // registration renewed while running) from the SDK's thread.
    let (sender, events) = mpsc::channel::<Starting>();
    let starting = Arc::new(Mutex::new(Some(sender.clone())));
    {
        let starting = starting.clone();
        let later = options.display;
        builder = builder.display_provisioning_operation_callback(move |op| {
            let id = CString::new(op.id.as_str()).unwrap_or_default();
            let code = CString::new(op.verification_code.as_str()).unwrap_or_default();
            let expiration = CString::new(op.expiration_time_rfc3339()).unwrap_or_default();
            let waiting = spotflow_core::lock(&starting).clone();
            let event = Starting::Operation { id, verification_code: code, expiration_time: expiration };
            if let Some(Err(mpsc::SendError(Starting::Operation { id, verification_code, expiration_time }))) =
                waiting.map(|w| w.send(event))
            {
                display(later, &id, &verification_code, &expiration_time);
            }
        });
    }
    if let Some((callback, context)) = options.desired {
        builder = builder.desired_properties_updated_callback(move |desired| {
            let json = Value::Object(desired.values).to_string();
            let json = CString::new(json).unwrap_or_default();
            // SAFETY: the application's callback, given a string valid during the call.
            unsafe { callback(json.as_ptr(), desired.version, context.ptr()) };
        });
    }
    if let Some((callback, context)) = options.connection_events {
        builder = builder.connection_event_callback(move |event| {
            let c = connection_event(event);
            // SAFETY: the application's callback, given an event (and its message) valid during
            // the call.
            unsafe { callback(&c.event, context.ptr()) };
        });
    }
    for handler in &options.methods {
        let h = handler.clone();
        builder = builder.direct_method_handler(handler.method.clone(), move |call| method_response(&h, &call));
    }
    builder = match &options.remote_access {
        RemoteAccess::Off => builder,
        RemoteAccess::All => builder.allow_remote_access_all_ports(),
        RemoteAccess::Ports(ports) => builder.allow_remote_access_ports(ports.clone()),
    };
    std::thread::Builder::new()
        .name("spotflow-start".into())
        .spawn(move || {
            let _ = sender.send(Starting::Done(builder.start()));
        })
        .map_err(|e| Failure::error(format!("cannot start a thread: {e}")))?;
    let result = loop {
        match events.recv() {
            Ok(Starting::Operation { id, verification_code, expiration_time }) => {
                display(options.display, &id, &verification_code, &expiration_time)
            }
            Ok(Starting::Done(result)) => break result,
            Err(_) => break Err(spotflow_device::Error::Closed),
        }
    };
    *spotflow_core::lock(&starting) = None;
    Ok(result?)
}

/// Starts a client: blocks while the device provisions itself and waits for approval if it is not
/// registered (or its registration expired); with a valid registration it works offline. The
/// options are copied: they may be destroyed afterwards.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_start(
    client: *mut *mut spotflow_client_t,
    options: *const spotflow_client_options_t,
) -> spotflow_result_t {
    guard("spotflow_client_start", || {
        let out = out_ptr(client, "client")?;
        // SAFETY: checked against the registry before it is followed.
        let options = unsafe { OPTIONS.get(options, "options") }?;
        let started = start(options)?;
        out.write(CLIENTS.register(spotflow_client_t {
            client: started,
            senders: Mutex::new(Vec::new()),
            logger: Mutex::new(None),
            inbox: Mutex::new(None),
            update_agent: Mutex::new(None),
        }));
        Ok(())
    })
}

/// Disconnects and frees a client (acknowledgements are flushed, at most 2 s). NULL and pointers
/// this library did not give are ignored. Not thread-safe: no other call on this client may run.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_destroy(client: *mut spotflow_client_t) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: only a registered pointer is taken back.
        if let Some(client) = unsafe { CLIENTS.unregister(client) } {
            // The update agent first: no update callback runs once this returns.
            let agent = spotflow_core::lock(&client.update_agent).take();
            if let Some(agent) = agent {
                let _ = client.client.stop_update_agent(&agent);
            }
            let _ = client.client.close();
        }
    }));
}

/// Runs `body` with the client behind `client` (registered, checked).
pub(crate) fn with_client(
    function: &str,
    client: *const spotflow_client_t,
    body: impl FnOnce(&spotflow_client_t) -> Outcome,
) -> spotflow_result_t {
    guard(function, || {
        // SAFETY: checked against the registry before it is followed.
        let client = unsafe { CLIENTS.get(client, "client") }?;
        body(client)
    })
}

impl spotflow_client_t {
    fn sender(&self, context: &spotflow_message_context_t) -> Outcome<StreamSender> {
        let mut senders = spotflow_core::lock(&self.senders);
        if let Some((_, sender)) = senders.iter().find(|(c, _)| c == context) {
            return Ok(sender.clone());
        }
        let sender = self.client.create_stream_sender(
            context.stream_group.as_deref(),
            context.stream.as_deref(),
            context.compression,
        )?;
        senders.push((context.clone(), sender.clone()));
        Ok(sender)
    }
}

// ---------------------------------------------------------------------------------------------
// Message contexts

/// Creates a message context: the stream group and stream (NULL: the defaults), compression NONE.
#[no_mangle]
pub unsafe extern "C" fn spotflow_message_context_create(
    message_context: *mut *mut spotflow_message_context_t,
    stream_group: *const c_char,
    stream: *const c_char,
) -> spotflow_result_t {
    guard("spotflow_message_context_create", || {
        let out = out_ptr(message_context, "message_context")?;
        // SAFETY (both): NULL or NUL-terminated strings (the contract).
        let stream_group = unsafe { optional_str(stream_group, "stream_group") }?;
        let stream = unsafe { optional_str(stream, "stream") }?;
        out.write(CONTEXTS.register(spotflow_message_context_t {
            stream_group: stream_group.map(String::from),
            stream: stream.map(String::from),
            compression: Compression::Uncompressed,
        }));
        Ok(())
    })
}

fn with_context(
    function: &str,
    context: *mut spotflow_message_context_t,
    change: impl FnOnce(&mut spotflow_message_context_t) -> Outcome,
) -> spotflow_result_t {
    guard(function, || {
        // SAFETY: checked against the registry before it is followed.
        let context = unsafe { CONTEXTS.get_mut(context, "message_context") }?;
        change(context)
    })
}

/// Sets the stream group (NULL: the workspace's default).
#[no_mangle]
pub unsafe extern "C" fn spotflow_message_context_set_stream_group(
    message_context: *mut spotflow_message_context_t,
    stream_group: *const c_char,
) -> spotflow_result_t {
    with_context("spotflow_message_context_set_stream_group", message_context, |c| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        c.stream_group = unsafe { optional_str(stream_group, "stream_group") }?.map(String::from);
        Ok(())
    })
}

/// Sets the stream (NULL: the stream group's default).
#[no_mangle]
pub unsafe extern "C" fn spotflow_message_context_set_stream(
    message_context: *mut spotflow_message_context_t,
    stream: *const c_char,
) -> spotflow_result_t {
    with_context("spotflow_message_context_set_stream", message_context, |c| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        c.stream = unsafe { optional_str(stream, "stream") }?.map(String::from);
        Ok(())
    })
}

/// Sets the compression of the messages.
#[no_mangle]
pub unsafe extern "C" fn spotflow_message_context_set_compression(
    message_context: *mut spotflow_message_context_t,
    compression: CompressionArg,
) -> spotflow_result_t {
    with_context("spotflow_message_context_set_compression", message_context, |c| {
        c.compression = self::compression(compression)?;
        Ok(())
    })
}

/// Frees a message context (NULL and pointers this library did not give are ignored).
#[no_mangle]
pub unsafe extern "C" fn spotflow_message_context_destroy(message_context: *mut spotflow_message_context_t) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: only a registered pointer is taken back.
        drop(unsafe { CONTEXTS.unregister(message_context) });
    }));
}

// ---------------------------------------------------------------------------------------------
// Messages

#[allow(clippy::too_many_arguments)]
unsafe fn message(
    function: &str,
    client: *mut spotflow_client_t,
    message_context: *const spotflow_message_context_t,
    batch_id: *const c_char,
    batch_slice_id: *const c_char,
    message_id: *const c_char,
    chunk_id: *const c_char,
    buffer: *const u8,
    length: usize,
    wait: bool,
) -> spotflow_result_t {
    with_client(function, client, |client| {
        // SAFETY: checked against the registry before it is followed.
        let context = unsafe { CONTEXTS.get(message_context, "message_context") }?;
        if buffer.is_null() {
            return Err(Failure::error("buffer must not be NULL"));
        }
        // SAFETY: non-null; `length` readable bytes (the contract).
        let payload = unsafe { std::slice::from_raw_parts(buffer, length) }.to_vec();
        let mut message = Message::new(payload);
        // SAFETY (these four): NULL or NUL-terminated strings (the contract).
        if let Some(id) = unsafe { optional_str(batch_id, "batch_id") }? {
            message = message.batch_id(id);
        }
        if let Some(id) = unsafe { optional_str(batch_slice_id, "batch_slice_id") }? {
            message = message.batch_slice_id(id);
        }
        if let Some(id) = unsafe { optional_str(message_id, "message_id") }? {
            message = message.message_id(id);
        }
        if let Some(id) = unsafe { optional_str(chunk_id, "chunk_id") }? {
            message = message.chunk_id(id);
        }
        let sender = client.sender(context)?;
        if wait {
            sender.send_message(message)?;
        } else {
            sender.enqueue_message(message)?;
        }
        Ok(())
    })
}

/// Stores a message in the local queue (durably: see the durability option) and returns; a
/// background thread sends it. The IDs may be NULL unless the stream has no pattern to fill them.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_enqueue_message(
    client: *mut spotflow_client_t,
    message_context: *const spotflow_message_context_t,
    batch_id: *const c_char,
    message_id: *const c_char,
    buffer: *const u8,
    length: usize,
) -> spotflow_result_t {
    // SAFETY: every pointer is checked by `message` (the contract for the rest).
    unsafe {
        message(
            "spotflow_client_enqueue_message",
            client,
            message_context,
            batch_id,
            std::ptr::null(),
            message_id,
            std::ptr::null(),
            buffer,
            length,
            false,
        )
    }
}

/// `spotflow_client_enqueue_message` with a batch slice ID and a chunk ID (each may be NULL).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_enqueue_message_advanced(
    client: *mut spotflow_client_t,
    message_context: *const spotflow_message_context_t,
    batch_id: *const c_char,
    batch_slice_id: *const c_char,
    message_id: *const c_char,
    chunk_id: *const c_char,
    buffer: *const u8,
    length: usize,
) -> spotflow_result_t {
    // SAFETY: every pointer is checked by `message` (the contract for the rest).
    unsafe {
        message(
            "spotflow_client_enqueue_message_advanced",
            client,
            message_context,
            batch_id,
            batch_slice_id,
            message_id,
            chunk_id,
            buffer,
            length,
            false,
        )
    }
}

/// Sends a message: blocks until it and every message enqueued before it are acknowledged.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_send_message(
    client: *mut spotflow_client_t,
    message_context: *const spotflow_message_context_t,
    batch_id: *const c_char,
    message_id: *const c_char,
    buffer: *const u8,
    length: usize,
) -> spotflow_result_t {
    // SAFETY: every pointer is checked by `message` (the contract for the rest).
    unsafe {
        message(
            "spotflow_client_send_message",
            client,
            message_context,
            batch_id,
            std::ptr::null(),
            message_id,
            std::ptr::null(),
            buffer,
            length,
            true,
        )
    }
}

/// `spotflow_client_send_message` with a batch slice ID and a chunk ID (each may be NULL).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_send_message_advanced(
    client: *mut spotflow_client_t,
    message_context: *const spotflow_message_context_t,
    batch_id: *const c_char,
    batch_slice_id: *const c_char,
    message_id: *const c_char,
    chunk_id: *const c_char,
    buffer: *const u8,
    length: usize,
) -> spotflow_result_t {
    // SAFETY: every pointer is checked by `message` (the contract for the rest).
    unsafe {
        message(
            "spotflow_client_send_message_advanced",
            client,
            message_context,
            batch_id,
            batch_slice_id,
            message_id,
            chunk_id,
            buffer,
            length,
            true,
        )
    }
}

/// Enqueues the completion of the batch `batch_id` (required).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_enqueue_batch_completion(
    client: *mut spotflow_client_t,
    message_context: *const spotflow_message_context_t,
    batch_id: *const c_char,
) -> spotflow_result_t {
    with_client("spotflow_client_enqueue_batch_completion", client, |client| {
        // SAFETY: checked against the registry before it is followed.
        let context = unsafe { CONTEXTS.get(message_context, "message_context") }?;
        // SAFETY: NULL or a NUL-terminated string (the contract).
        let batch_id = unsafe { required_str(batch_id, "batch_id") }?;
        client.sender(context)?.enqueue_batch_completion(batch_id)?;
        Ok(())
    })
}

/// Enqueues the completion of the message `message_id` of the batch `batch_id` (both required),
/// for a message sent in chunks.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_enqueue_message_completion(
    client: *mut spotflow_client_t,
    message_context: *const spotflow_message_context_t,
    batch_id: *const c_char,
    message_id: *const c_char,
) -> spotflow_result_t {
    with_client("spotflow_client_enqueue_message_completion", client, |client| {
        // SAFETY: checked against the registry before it is followed.
        let context = unsafe { CONTEXTS.get(message_context, "message_context") }?;
        // SAFETY (both): NULL or NUL-terminated strings (the contract).
        let batch_id = unsafe { required_str(batch_id, "batch_id") }?;
        let message_id = unsafe { required_str(message_id, "message_id") }?;
        client.sender(context)?.enqueue_message_completion(batch_id, message_id)?;
        Ok(())
    })
}

/// Blocks until every message enqueued before the call is acknowledged by the platform.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_wait_enqueued_messages_sent(
    client: *mut spotflow_client_t,
) -> spotflow_result_t {
    with_client("spotflow_client_wait_enqueued_messages_sent", client, |client| {
        client.client.wait_enqueued_messages_sent()?;
        Ok(())
    })
}

/// **Addition**: `spotflow_client_wait_enqueued_messages_sent` for at most `timeout_ms`
/// milliseconds: `SPOTFLOW_TIMEOUT` if messages are still pending then.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_wait_enqueued_messages_sent_timeout(
    client: *mut spotflow_client_t,
    timeout_ms: u64,
) -> spotflow_result_t {
    with_client("spotflow_client_wait_enqueued_messages_sent_timeout", client, |client| {
        match client.client.wait_enqueued_messages_sent_timeout(Duration::from_millis(timeout_ms)) {
            Err(spotflow_device::Error::Timeout(what)) => {
                Err(Failure::with(spotflow_result_t::SPOTFLOW_TIMEOUT, format!("timed out: {what}")))
            }
            other => Ok(other?),
        }
    })
}

/// **Addition**: sends a log record of the application to the platform through the durable
/// queue (stream `device-logs`): the record is journaled before the call returns (it survives
/// the process being killed) and never waits on the network. `target` names where it comes from
/// (e.g. the module); `message` is the text (UTF-8). `SPOTFLOW_OK` when taken or below the minimum
/// level (`SPOTFLOW_LOG_INFO` unless the platform sets the desired property `spotflowLogLevel`);
/// `SPOTFLOW_ERROR` when a limit dropped it (counted and reported to the platform) or the
/// arguments are invalid. The first call starts the client's logger.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_log(
    client: *mut spotflow_client_t,
    level: spotflow_log_level_t,
    target: *const c_char,
    message: *const c_char,
) -> spotflow_result_t {
    with_client("spotflow_client_log", client, |client| {
        let target = required_str(target, "target")?;
        let message = required_str(message, "message")?;
        use spotflow_device::logs::LogLevel;
        let level = match level {
            spotflow_log_level_t::SPOTFLOW_LOG_OFF => {
                return Err(Failure::with(
                    spotflow_result_t::SPOTFLOW_ERROR,
                    "level: SPOTFLOW_LOG_OFF is not the level of a record",
                ))
            }
            spotflow_log_level_t::SPOTFLOW_LOG_ERROR => LogLevel::Error,
            spotflow_log_level_t::SPOTFLOW_LOG_WARN => LogLevel::Warn,
            spotflow_log_level_t::SPOTFLOW_LOG_INFO => LogLevel::Info,
            spotflow_log_level_t::SPOTFLOW_LOG_DEBUG => LogLevel::Debug,
            spotflow_log_level_t::SPOTFLOW_LOG_TRACE => LogLevel::Trace,
        };
        let logger = {
            let mut slot = spotflow_core::lock(&client.logger);
            match &*slot {
                Some(logger) => logger.clone(),
                None => slot.insert(client.client.start_logger(Default::default())?).clone(),
            }
        };
        if logger.enabled(level) && !logger.log(level, target, message) {
            return Err(Failure::with(
                spotflow_result_t::SPOTFLOW_ERROR,
                "record dropped by the logger's rate limit or byte budget (counted and reported to the platform)",
            ));
        }
        Ok(())
    })
}

/// **Addition**: moves every record given to `spotflow_client_log` into the durable queue now
/// (otherwise done every second), e.g. before `spotflow_client_destroy`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_flush_logs(client: *mut spotflow_client_t) -> spotflow_result_t {
    with_client("spotflow_client_flush_logs", client, |client| {
        let logger = spotflow_core::lock(&client.logger).clone();
        if let Some(logger) = logger {
            client.client.flush_logger(&logger)?;
        }
        Ok(())
    })
}

/// **Addition**: takes the next cloud-to-device message from the device's durable inbox, waiting
/// at most `timeout_ms` milliseconds: `SPOTFLOW_OK` with `*message` set (free it with
/// `spotflow_c2d_message_destroy`), or `SPOTFLOW_TIMEOUT` when none came in time. A message stays
/// in the inbox, and is returned again after a restart, until `spotflow_c2d_message_complete`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_receive_c2d_message(
    client: *mut spotflow_client_t,
    timeout_ms: u64,
    message: *mut *mut spotflow_c2d_message_t,
) -> spotflow_result_t {
    with_client("spotflow_client_receive_c2d_message", client, |client| {
        let out = out_ptr(message, "message")?;
        let mut inbox = spotflow_core::lock(&client.inbox);
        let view = inbox.get_or_insert_with(|| client.client.c2d_messages());
        match view.next_timeout(Duration::from_millis(timeout_ms))? {
            Some(m) => {
                out.write(C2D_MESSAGES.register(spotflow_c2d_message_t { message: m }));
                Ok(())
            }
            None => Err(Failure::with(spotflow_result_t::SPOTFLOW_TIMEOUT, "no cloud-to-device message in time")),
        }
    })
}

/// **Addition**: the message's payload: `*payload` points to `*length` bytes owned by the message
/// (valid until `spotflow_c2d_message_destroy`).
#[no_mangle]
pub unsafe extern "C" fn spotflow_c2d_message_get_payload(
    message: *const spotflow_c2d_message_t,
    payload: *mut *const u8,
    length: *mut usize,
) -> spotflow_result_t {
    guard("spotflow_c2d_message_get_payload", || {
        // SAFETY: checked against the registry before it is followed.
        let m = unsafe { C2D_MESSAGES.get(message, "message") }?;
        let (payload_out, length_out) = (out_ptr(payload, "payload")?, out_ptr(length, "length")?);
        payload_out.write(m.message.payload().as_ptr());
        length_out.write(m.message.payload().len());
        Ok(())
    })
}

/// **Addition**: writes the value of property `key` (e.g. `$.mid`, the platform's message id)
/// with a NUL into `buffer`; `SPOTFLOW_ERROR` when the message has no such property,
/// `SPOTFLOW_INSUFFICIENT_BUFFER` when the buffer is too small.
#[no_mangle]
pub unsafe extern "C" fn spotflow_c2d_message_get_property(
    message: *const spotflow_c2d_message_t,
    key: *const c_char,
    buffer: *mut c_char,
    buffer_length: usize,
) -> spotflow_result_t {
    guard("spotflow_c2d_message_get_property", || {
        // SAFETY: checked against the registry before it is followed.
        let m = unsafe { C2D_MESSAGES.get(message, "message") }?;
        let key = required_str(key, "key")?;
        let value = m.message.property(key).ok_or_else(|| Failure::error(format!("no property {key:?}")))?;
        write_id(value, buffer, buffer_length)
    })
}

/// **Addition**: removes the message from the inbox (it is never returned again). The message
/// stays valid until `spotflow_c2d_message_destroy`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_c2d_message_complete(message: *mut spotflow_c2d_message_t) -> spotflow_result_t {
    guard("spotflow_c2d_message_complete", || {
        // SAFETY: checked against the registry before it is followed.
        let m = unsafe { C2D_MESSAGES.get(message, "message") }?;
        Ok(m.message.complete()?)
    })
}

/// **Addition**: frees a message (without completing it). NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn spotflow_c2d_message_destroy(message: *mut spotflow_c2d_message_t) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: only a registered pointer is taken back.
        drop(unsafe { C2D_MESSAGES.unregister(message) });
    }));
}

/// Writes the number of messages enqueued and not acknowledged yet to `count`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_pending_messages_count(
    client: *const spotflow_client_t,
    count: *mut usize,
) -> spotflow_result_t {
    with_client("spotflow_client_get_pending_messages_count", client, |client| {
        let pending = client.client.pending_messages_count();
        out_ptr(count, "count")?.write(usize::try_from(pending).unwrap_or(usize::MAX));
        Ok(())
    })
}

/// **Addition**: writes the client's figures to `stats`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_stats(
    client: *const spotflow_client_t,
    stats: *mut spotflow_stats_t,
) -> spotflow_result_t {
    with_client("spotflow_client_get_stats", client, |client| {
        let out = out_ptr(stats, "stats")?;
        let s = client.client.stats();
        let micros = |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        out.write(spotflow_stats_t {
            queued_messages: s.queued_messages,
            queued_bytes: s.queued_bytes,
            oldest_queued_age_ms: s.oldest_queued_age.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            in_flight: s.in_flight,
            enqueued_total: s.enqueued_total,
            delivered_total: s.delivered_total,
            redelivered_total: s.redelivered_total,
            dropped_total: s.dropped_total,
            refused_total: s.refused_total,
            failed_enqueues_total: s.failed_enqueues_total,
            connected: s.connection == spotflow_device::ConnectionState::Connected,
            reconnects: s.reconnects,
            connection_attempts: s.connection_attempts,
            desired_version: s.desired_version.unwrap_or(0),
            reported_version: s.reported_version.unwrap_or(0),
            latency_p50_us: micros(s.latency.p50),
            latency_p99_us: micros(s.latency.p99),
        });
        Ok(())
    })
}

/// Writes `id` with a NUL into `buffer`, or reports the buffer too small.
fn write_id(id: &str, buffer: *mut c_char, buffer_length: usize) -> Outcome {
    let out = out_buffer(buffer, buffer_length, "buffer")?;
    if buffer_length <= id.len() {
        return Err(Failure::with(
            spotflow_result_t::SPOTFLOW_INSUFFICIENT_BUFFER,
            format!("the buffer has {buffer_length} bytes; the ID needs {}", id.len() + 1),
        ));
    }
    out[..id.len()].copy_from_slice(id.as_bytes());
    out[id.len()] = 0;
    Ok(())
}

/// Writes the workspace ID with a NUL into `buffer` (`SPOTFLOW_WORKSPACE_ID_MAX_LENGTH` bytes
/// always suffice), or returns `SPOTFLOW_INSUFFICIENT_BUFFER`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_workspace_id(
    client: *const spotflow_client_t,
    buffer: *mut c_char,
    buffer_length: usize,
) -> spotflow_result_t {
    with_client("spotflow_client_get_workspace_id", client, |client| {
        write_id(client.client.workspace_id(), buffer, buffer_length)
    })
}

/// Writes the device ID with a NUL into `buffer` (`SPOTFLOW_DEVICE_ID_MAX_LENGTH` bytes always
/// suffice), or returns `SPOTFLOW_INSUFFICIENT_BUFFER`.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_device_id(
    client: *const spotflow_client_t,
    buffer: *mut c_char,
    buffer_length: usize,
) -> spotflow_result_t {
    with_client("spotflow_client_get_device_id", client, |client| {
        write_id(client.client.device_id(), buffer, buffer_length)
    })
}

/// Writes desired properties as the reference does (see the header).
fn write_properties(
    desired: &spotflow_device::DesiredProperties,
    buffer: *mut c_char,
    buffer_length: usize,
    properties_length: *mut usize,
    properties_version: *mut u64,
) -> Outcome {
    let length_out = out_ptr(properties_length, "properties_length")?;
    let version_out = out_ptr(properties_version, "properties_version")?;
    if buffer_length == 0 {
        return Err(Failure::with(
            spotflow_result_t::SPOTFLOW_INSUFFICIENT_BUFFER,
            "buffer_length is 0: nothing written",
        ));
    }
    let out = out_buffer(buffer, buffer_length, "buffer")?;
    let json = Value::Object(desired.values.clone()).to_string();
    let needed = json.len() + 1;
    let copied = json.len().min(buffer_length - 1);
    out[..copied].copy_from_slice(&json.as_bytes()[..copied]);
    out[copied] = 0;
    length_out.write(needed);
    version_out.write(desired.version);
    if needed > buffer_length {
        return Err(Failure::with(
            spotflow_result_t::SPOTFLOW_INSUFFICIENT_BUFFER,
            format!("the buffer has {buffer_length} bytes; the desired properties need {needed}"),
        ));
    }
    Ok(())
}

/// Writes the desired properties (JSON), their length (NUL included) and their version. If the
/// buffer is too small: a truncated copy, the length needed and `SPOTFLOW_INSUFFICIENT_BUFFER`;
/// with `buffer_length` 0 nothing is written (and `SPOTFLOW_INSUFFICIENT_BUFFER` returned).
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_desired_properties(
    client: *mut spotflow_client_t,
    buffer: *mut c_char,
    buffer_length: usize,
    properties_length: *mut usize,
    properties_version: *mut u64,
) -> spotflow_result_t {
    with_client("spotflow_client_get_desired_properties", client, |client| {
        let desired = client.client.get_desired_properties();
        write_properties(&desired, buffer, buffer_length, properties_length, properties_version)
    })
}

/// As `spotflow_client_get_desired_properties`, only if their version is newer than `version`
/// (or `version` is `SPOTFLOW_PROPERTIES_VERSION_ANY`); otherwise `SPOTFLOW_OK` with the length 0.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_desired_properties_if_newer(
    client: *mut spotflow_client_t,
    version: u64,
    buffer: *mut c_char,
    buffer_length: usize,
    properties_length: *mut usize,
    properties_version: *mut u64,
) -> spotflow_result_t {
    with_client("spotflow_client_get_desired_properties_if_newer", client, |client| {
        let wanted = (version != SPOTFLOW_PROPERTIES_VERSION_ANY).then_some(version);
        match client.client.get_desired_properties_if_newer(wanted) {
            Some(desired) => write_properties(&desired, buffer, buffer_length, properties_length, properties_version),
            None => {
                out_ptr(properties_length, "properties_length")?.write(0);
                Ok(())
            }
        }
    })
}

/// Stores the reported properties (a JSON object) durably and sends them in the background.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_update_reported_properties(
    client: *const spotflow_client_t,
    properties: *const c_char,
) -> spotflow_result_t {
    with_client("spotflow_client_update_reported_properties", client, |client| {
        // SAFETY: NULL or a NUL-terminated string (the contract).
        let text = unsafe { required_str(properties, "properties") }?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| Failure::error(format!("properties is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Failure::error("properties must be a JSON object"));
        }
        client.client.update_reported_properties(value)?;
        Ok(())
    })
}

/// Writes to `any` whether a reported-properties update is still waiting to be sent.
#[no_mangle]
pub unsafe extern "C" fn spotflow_client_get_any_pending_reported_properties_updates(
    client: *const spotflow_client_t,
    any: *mut bool,
) -> spotflow_result_t {
    with_client("spotflow_client_get_any_pending_reported_properties_updates", client, |client| {
        let pending = client.client.any_pending_reported_properties_updates();
        out_ptr(any, "any")?.write(pending);
        Ok(())
    })
}

/// **Addition**: sets the body of a direct method's answer (JSON; NULL: null). Only during the
/// handler's call, on the `response` it was given.
#[no_mangle]
pub unsafe extern "C" fn spotflow_method_response_set_body(
    response: *mut spotflow_method_response_t,
    json: *const c_char,
) -> spotflow_result_t {
    guard("spotflow_method_response_set_body", || {
        let response = out_ptr(response, "response")?;
        // SAFETY: the handler's response, initialized by the library (the contract).
        let response = unsafe { response.assume_init_mut() };
        // SAFETY: NULL or a NUL-terminated string (the contract).
        response.body = match unsafe { optional_str(json, "json") }? {
            None => None,
            Some(text) => {
                Some(serde_json::from_str(text).map_err(|e| Failure::error(format!("json is not valid JSON: {e}")))?)
            }
        };
        Ok(())
    })
}
