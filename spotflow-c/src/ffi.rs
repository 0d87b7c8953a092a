//! What every exported function shares: the thread's last error, the guard that keeps panics on
//! this side of the boundary, the checks of the caller's pointers and strings, and the registry
//! of the objects handed out (so that a destroyed or foreign pointer is refused, not followed).

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::spotflow_result_t;

/// The size the reference gives error messages (`SPOTFLOW_ERROR_MAX_LENGTH`, NUL included).
pub(crate) const ERROR_MAX_LENGTH: usize = crate::SPOTFLOW_ERROR_MAX_LENGTH;

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// An error to report: the result code and the message kept as the thread's last error.
#[derive(Debug)]
pub(crate) struct Failure {
    pub result: spotflow_result_t,
    pub message: String,
}

impl Failure {
    pub fn error(message: impl Into<String>) -> Self {
        Failure { result: spotflow_result_t::SPOTFLOW_ERROR, message: message.into() }
    }

    pub fn with(result: spotflow_result_t, message: impl Into<String>) -> Self {
        Failure { result, message: message.into() }
    }
}

impl From<spotflow_device::Error> for Failure {
    fn from(e: spotflow_device::Error) -> Self {
        Failure::error(e.to_string())
    }
}

pub(crate) type Outcome<T = ()> = Result<T, Failure>;

pub(crate) fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(message));
}

/// Copies the thread's last error into `buffer` as the reference documents it: the bytes written
/// (NUL included), 0 without an error, -1 for a NULL buffer or one under 1,024 bytes that is too
/// small (the error is kept then); from 1,024 bytes on, a longer message is truncated.
///
/// # Safety
/// `buffer` is NULL or valid for `buffer_length` bytes of writing.
pub(crate) unsafe fn read_last_error(buffer: *mut c_char, buffer_length: usize) -> i32 {
    if buffer.is_null() {
        return -1;
    }
    LAST_ERROR.with(|e| {
        let mut slot = e.borrow_mut();
        let Some(message) = slot.as_ref() else {
            if buffer_length > 0 {
                // SAFETY: non-null and at least one byte long, as checked.
                unsafe { *buffer = 0 };
            }
            return 0;
        };
        let bytes = message.as_bytes();
        let fits = bytes.len() < buffer_length;
        if !fits && buffer_length < ERROR_MAX_LENGTH {
            return -1;
        }
        let mut len = bytes.len().min(buffer_length - 1);
        // Truncated at a character boundary: the text stays valid UTF-8.
        while !message.is_char_boundary(len) {
            len -= 1;
        }
        // SAFETY: the caller gives `buffer_length` writable bytes and len + 1 <= buffer_length.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), len);
            *buffer.add(len) = 0;
        }
        *slot = None;
        i32::try_from(len + 1).unwrap_or(i32::MAX)
    })
}

/// Runs the body of an exported function: installs the logger, turns a failure into its result
/// code and the thread's last error, and a panic into `SPOTFLOW_ERROR` (it never unwinds into C).
pub(crate) fn guard(function: &str, body: impl FnOnce() -> Outcome) -> spotflow_result_t {
    crate::log::install();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => spotflow_result_t::SPOTFLOW_OK,
        Ok(Err(failure)) => {
            set_last_error(failure.message);
            failure.result
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("{function}: internal error (a panic, caught): {what}"));
            spotflow_result_t::SPOTFLOW_ERROR
        }
    }
}

/// A required string argument: non-NULL and valid UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn required_str<'a>(ptr: *const c_char, name: &str) -> Outcome<&'a str> {
    if ptr.is_null() {
        return Err(Failure::error(format!("{name} must not be NULL")));
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|e| Failure::error(format!("{name} is not valid UTF-8 (at byte {})", e.valid_up_to())))
}

/// An optional string argument: NULL is `None`; otherwise valid UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn optional_str<'a>(ptr: *const c_char, name: &str) -> Outcome<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: as the caller's contract.
        unsafe { required_str(ptr, name) }.map(Some)
    }
}

/// A required pointer to write a `T` through: non-NULL and aligned for `T`.
pub(crate) fn out_ptr<'a, T>(ptr: *mut T, name: &str) -> Outcome<&'a mut std::mem::MaybeUninit<T>> {
    if ptr.is_null() {
        return Err(Failure::error(format!("{name} must not be NULL")));
    }
    if !ptr.cast::<std::mem::MaybeUninit<T>>().is_aligned() {
        return Err(Failure::error(format!("{name} is not aligned for its type")));
    }
    // SAFETY: non-null and aligned; the caller gives a writable T (its contract).
    Ok(unsafe { &mut *ptr.cast::<std::mem::MaybeUninit<T>>() })
}

/// A byte buffer to write into: non-NULL (unless its length is 0).
pub(crate) fn out_buffer<'a>(ptr: *mut c_char, length: usize, name: &str) -> Outcome<&'a mut [u8]> {
    if length == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::error(format!("{name} must not be NULL")));
    }
    // SAFETY: the caller gives `length` writable bytes (its contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), length) })
}

/// The objects of one type handed out to C: a pointer is followed only while it is registered,
/// so that a destroyed, foreign or misaligned one is reported instead of crashing.
pub(crate) struct Registry {
    kind: &'static str,
    live: Mutex<Option<HashSet<usize>>>,
}

impl Registry {
    pub const fn new(kind: &'static str) -> Self {
        Registry { kind, live: Mutex::new(None) }
    }

    /// Hands `value` out as a pointer, registered.
    pub fn register<T>(&self, value: T) -> *mut T {
        let ptr = Box::into_raw(Box::new(value));
        self.lock(|live| live.insert(ptr as usize));
        ptr
    }

    /// The object behind a registered pointer.
    ///
    /// # Safety
    /// A registered pointer is one `register` returned for a `T` and `unregister` has not taken.
    pub unsafe fn get<'a, T>(&self, ptr: *const T, name: &str) -> Outcome<&'a T> {
        if ptr.is_null() {
            return Err(Failure::error(format!("{name} must not be NULL")));
        }
        if !self.lock(|live| live.contains(&(ptr as usize))) {
            return Err(Failure::error(format!(
                "{name} is not a live {} (destroyed already, or never created by this library)",
                self.kind
            )));
        }
        // SAFETY: registered, so a live Box<T> from `register` (see the contract).
        Ok(unsafe { &*ptr })
    }

    /// The object behind a registered pointer, mutable.
    ///
    /// # Safety
    /// As [`Registry::get`]; the caller does not use it from another thread meanwhile (the
    /// reference's rule for options and message contexts).
    pub unsafe fn get_mut<'a, T>(&self, ptr: *mut T, name: &str) -> Outcome<&'a mut T> {
        // SAFETY: as the contract.
        unsafe { self.get(ptr.cast_const(), name) }?;
        // SAFETY: registered (checked above), so a live Box<T>; exclusive by the contract.
        Ok(unsafe { &mut *ptr })
    }

    /// Takes a registered pointer back (for `*_destroy`); NULL or an unknown pointer gives `None`.
    ///
    /// # Safety
    /// As [`Registry::get`].
    pub unsafe fn unregister<T>(&self, ptr: *mut T) -> Option<Box<T>> {
        if ptr.is_null() || !self.lock(|live| live.remove(&(ptr as usize))) {
            return None;
        }
        // SAFETY: it was registered, so it came from Box::into_raw in `register`; it is no
        // longer registered, so nothing else takes it again.
        Some(unsafe { Box::from_raw(ptr) })
    }

    fn lock<R>(&self, f: impl FnOnce(&mut HashSet<usize>) -> R) -> R {
        let mut live = spotflow_core::lock(&self.live);
        f(live.get_or_insert_with(HashSet::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buffer: &mut [u8]) -> i32 {
        // SAFETY: a live buffer of its length.
        unsafe { read_last_error(buffer.as_mut_ptr().cast(), buffer.len()) }
    }

    #[test]
    fn the_last_error_is_read_as_the_reference_documents() {
        let mut big = vec![0xAAu8; ERROR_MAX_LENGTH];
        // No error: 0 and an empty string.
        assert_eq!(read(&mut big), 0);
        assert_eq!(big[0], 0);
        // NULL: -1.
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { read_last_error(std::ptr::null_mut(), 10) }, -1);

        // A message that fits: its bytes and the NUL; then cleared.
        set_last_error("bad input".into());
        assert_eq!(read(&mut big), 10);
        assert_eq!(&big[..10], b"bad input\0");
        assert_eq!(read(&mut big), 0);

        // Under 1,024 bytes and too small: -1, and the error is kept.
        set_last_error("x".repeat(2000));
        let mut small = [0u8; 100];
        assert_eq!(read(&mut small), -1);
        // From 1,024 bytes on: truncated to the buffer, NUL included.
        assert_eq!(read(&mut big), 1024);
        assert_eq!(big[1023], 0);
        assert!(big[..1023].iter().all(|b| *b == b'x'));
        assert_eq!(read(&mut big), 0);

        // Truncated at a character boundary: still UTF-8.
        set_last_error(format!("{}é", "a".repeat(1022)));
        assert_eq!(read(&mut big), 1023);
        assert_eq!(std::str::from_utf8(&big[..1022]).map(str::len), Ok(1022));
        // A message of exactly 1,023 bytes fits a 1,024-byte buffer whole.
        set_last_error("b".repeat(1023));
        assert_eq!(read(&mut big), 1024);
    }

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let result = guard("spotflow_test", || panic!("boom"));
        assert_eq!(result, spotflow_result_t::SPOTFLOW_ERROR);
        let mut buffer = vec![0u8; ERROR_MAX_LENGTH];
        let n = read(&mut buffer);
        let text = std::str::from_utf8(&buffer[..n as usize - 1]).expect("UTF-8");
        assert!(text.contains("spotflow_test") && text.contains("boom"), "{text}");
    }
}
