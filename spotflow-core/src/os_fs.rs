//! What the file system does differently on Unix and Windows: free space, and making a
//! directory's entries (a file created or renamed in it) durable.

use std::path::Path;

/// Makes the entries of `dir` durable: a file created or renamed in it survives a power cut.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Windows' file systems (NTFS, ReFS) journal directory entries themselves, and a directory has no
/// handle to flush: nothing to do.
#[cfg(not(unix))]
pub fn sync_dir(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Bytes available to this user on the file system that holds `dir` (`None` when it cannot be
/// told).
#[cfg(unix)]
pub fn free_disk_space(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Bytes available to this user on the volume that holds `dir` (`None` when it cannot be told).
#[cfg(windows)]
#[allow(unsafe_code)]
pub fn free_disk_space(dir: &Path) -> Option<u64> {
    use std::os::windows::ffi::OsStrExt;
    let name: Vec<u16> = dir.as_os_str().encode_wide().chain(Some(0)).collect();
    let mut available = 0u64;
    // SAFETY: `name` is NUL-terminated; the totals we do not need are null.
    let ok = unsafe {
        windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW(
            name.as_ptr(),
            &mut available,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(available)
}

/// Unknown elsewhere.
#[cfg(not(any(unix, windows)))]
pub fn free_disk_space(_: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_directory_is_synced() {
        super::sync_dir(&std::env::temp_dir()).unwrap();
    }

    #[test]
    fn the_temporary_directory_has_some_free_space() {
        let free = super::free_disk_space(&std::env::temp_dir()).expect("free space of the temporary directory");
        assert!(free > 0);
        assert_eq!(super::free_disk_space(std::path::Path::new("/no/such/directory/here")), None);
    }
}
