//! The context pointer a C caller gives with each callback.

/// A C callback's context pointer, handed to the SDK's threads. The caller synchronizes what it
/// points to (the reference's rule); the pointer itself is only passed back.
#[derive(Clone, Copy)]
pub(crate) struct Context(pub *mut std::ffi::c_void);

impl Context {
    /// The pointer (a method: a closure then captures the whole `Context`, which is `Send`).
    pub fn ptr(self) -> *mut std::ffi::c_void {
        self.0
    }
}

// SAFETY: never dereferenced here, only given back to the caller's callback, which the header
// documents as called from the SDK's threads.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}
