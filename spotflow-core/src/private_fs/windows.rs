//! Owner-only files on Windows: the file's DACL. A private file or directory gets a protected DACL
//! (nothing inherited from its parents) with one entry, full control for the current user; a
//! directory's entry is inherited by what is created inside it, so those files are owner-only from
//! their creation. A public file adds read access for everyone. An existing file whose DACL grants
//! more (to another account, or write access to others for a public file) is rewritten, with the
//! warning the Unix side logs for a broader mode.
//!
//! A file system without ACLs (FAT, some network shares) cannot be protected: that is logged and
//! the file used as it is, as `chmod` on such a file system does on Unix.

use std::ffi::c_void;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;
use std::ptr::null_mut;

use tracing::warn;
use windows_sys::Win32::Foundation::{
    CloseHandle, LocalFree, ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED, GENERIC_ALL, GENERIC_WRITE, HANDLE,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW,
    SetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    EqualSid, GetAce, GetSecurityDescriptorDacl, GetTokenInformation, TokenUser, ACCESS_ALLOWED_ACE, ACL,
    DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, TOKEN_QUERY,
    TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::{
    DELETE, FILE_APPEND_DATA, FILE_WRITE_ATTRIBUTES, FILE_WRITE_DATA, FILE_WRITE_EA, WRITE_DAC, WRITE_OWNER,
};
use windows_sys::Win32::System::SystemServices::ACCESS_ALLOWED_ACE_TYPE;
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// What others may do with a file: nothing, or read it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Access {
    Private,
    Public,
}

impl Access {
    /// The Unix mode's counterpart: others may read a 0644 file.
    pub(super) fn from_mode(mode: u32) -> Access {
        if mode & 0o004 != 0 {
            Access::Public
        } else {
            Access::Private
        }
    }
}

/// Rights that let an account change a file or its protection.
const WRITE_RIGHTS: u32 = FILE_WRITE_DATA
    | FILE_APPEND_DATA
    | FILE_WRITE_EA
    | FILE_WRITE_ATTRIBUTES
    | DELETE
    | WRITE_DAC
    | WRITE_OWNER
    | GENERIC_WRITE
    | GENERIC_ALL;

fn wide(path: &Path) -> Vec<u16> {
    path.as_os_str().encode_wide().chain(Some(0)).collect()
}

/// Memory Windows allocated for us (`LocalAlloc`), freed on drop.
struct Local(*mut c_void);

impl Drop for Local {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from an API documented to allocate with LocalAlloc.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// The current user's SID (the process token's user), as a buffer holding a `TOKEN_USER`.
struct CurrentUser(Vec<u64>);

impl CurrentUser {
    fn get() -> io::Result<CurrentUser> {
        let mut token: HANDLE = null_mut();
        // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a handle we close.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut len = 0u32;
        // SAFETY: the first call asks for the size (no buffer); the second fills a buffer of that
        // size, aligned for TOKEN_USER (u64 elements).
        let result = unsafe {
            GetTokenInformation(token, TokenUser, null_mut(), 0, &mut len);
            let mut buffer = vec![0u64; (len as usize).div_ceil(8).max(1)];
            if GetTokenInformation(token, TokenUser, buffer.as_mut_ptr().cast(), len, &mut len) == 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(CurrentUser(buffer))
            }
        };
        // SAFETY: `token` is a handle OpenProcessToken opened.
        unsafe { CloseHandle(token) };
        result
    }

    fn sid(&self) -> PSID {
        // SAFETY: the buffer holds a TOKEN_USER written by GetTokenInformation.
        unsafe { (*self.0.as_ptr().cast::<TOKEN_USER>()).User.Sid }
    }

    fn sid_string(&self) -> io::Result<String> {
        let mut text = null_mut();
        // SAFETY: the SID is valid; `text` receives a LocalAlloc'd NUL-terminated string.
        if unsafe { ConvertSidToStringSidW(self.sid(), &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let _free = Local(text.cast());
        // SAFETY: `text` is NUL-terminated.
        let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
        // SAFETY: `len` u16s were read above.
        Ok(String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) }))
    }
}

/// A security descriptor Windows allocated, with the DACL inside it.
struct Descriptor {
    _memory: Local,
    dacl: *mut ACL,
}

impl Descriptor {
    /// The descriptor of an SDDL string (`D:P(A;;FA;;;S-1-…)`).
    fn from_sddl(sddl: &str) -> io::Result<Descriptor> {
        let sddl: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: `sddl` is NUL-terminated; the descriptor is LocalAlloc'd.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        let memory = Local(descriptor);
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = null_mut();
        // SAFETY: the descriptor is valid; `dacl` points into it.
        if unsafe { GetSecurityDescriptorDacl(descriptor, &mut present, &mut dacl, &mut defaulted) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // No DACL at all grants everyone everything, as a null one does.
        Ok(Descriptor { _memory: memory, dacl: if present == 0 { null_mut() } else { dacl } })
    }

    /// The DACL of the file or directory `path`.
    fn of_file(path: &Path) -> io::Result<Descriptor> {
        let name = wide(path);
        let mut dacl: *mut ACL = null_mut();
        let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: `name` is NUL-terminated; the descriptor is LocalAlloc'd and `dacl` points into it.
        let status = unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                &mut dacl,
                null_mut(),
                &mut descriptor,
            )
        };
        if status != 0 {
            return Err(io::Error::from_raw_os_error(status as i32));
        }
        Ok(Descriptor { _memory: Local(descriptor), dacl })
    }

    /// Whether the DACL grants nothing more than `access` allows: allow entries for `user`, and
    /// read-only ones for others when public. Deny entries only take away.
    fn grants_at_most(&self, user: &CurrentUser, access: Access) -> io::Result<bool> {
        if self.dacl.is_null() {
            // A null DACL grants everyone everything.
            return Ok(false);
        }
        // SAFETY: `dacl` is a valid ACL inside the descriptor.
        let count = unsafe { (*self.dacl).AceCount };
        for index in 0..u32::from(count) {
            let mut ace: *mut c_void = null_mut();
            // SAFETY: `index` < AceCount; GetAce points `ace` into the ACL.
            if unsafe { GetAce(self.dacl, index, &mut ace) } == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: every ACE starts with an ACE_HEADER; an allow entry is an ACCESS_ALLOWED_ACE.
            let allowed = unsafe { &*ace.cast::<ACCESS_ALLOWED_ACE>() };
            if u32::from(allowed.Header.AceType) != ACCESS_ALLOWED_ACE_TYPE {
                continue;
            }
            let sid: PSID = (&allowed.SidStart as *const u32).cast_mut().cast();
            // SAFETY: both SIDs are valid.
            if unsafe { EqualSid(sid, user.sid()) } != 0 {
                continue;
            }
            if access == Access::Private || allowed.Mask & WRITE_RIGHTS != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The protected DACL of `access` for `user`: full control for the user (a directory's entry
/// inherited by files (OI) and directories (CI) created inside it), and for a public file read
/// and execute for everyone (WD).
fn sddl(user: &CurrentUser, access: Access, directory: bool) -> io::Result<String> {
    let sid = user.sid_string()?;
    let inherit = if directory { "OICI" } else { "" };
    let mut sddl = format!("D:P(A;{inherit};FA;;;{sid})");
    if access == Access::Public {
        sddl.push_str(&format!("(A;{inherit};FR;;;WD)"));
    }
    Ok(sddl)
}

/// Gives `path` the protected DACL of `access`.
fn protect(path: &Path, user: &CurrentUser, access: Access) -> io::Result<()> {
    let descriptor = Descriptor::from_sddl(&sddl(user, access, path.is_dir())?)?;
    let name = wide(path);
    // SAFETY: `name` is NUL-terminated and the DACL valid while the descriptor lives.
    let status = unsafe {
        SetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            null_mut(),
            null_mut(),
            descriptor.dacl,
            null_mut(),
        )
    };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    Ok(())
}

/// Whether an error says the file system keeps no ACLs.
fn unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(code) if code == ERROR_NOT_SUPPORTED as i32 || code == ERROR_INVALID_FUNCTION as i32)
}

/// Gives a file just created the DACL of `access`, before any byte is written to it.
pub(super) fn restrict_new(path: &Path, access: Access) -> io::Result<()> {
    match CurrentUser::get().and_then(|user| protect(path, &user, access)) {
        Err(e) if unsupported(&e) => {
            warn!(path = %path.display(), error = %e, "this file system keeps no access control lists: the file is not owner-only");
            Ok(())
        }
        other => other,
    }
}

/// Rewrites the DACL of an existing `path` if it grants more than `access` allows.
pub(super) fn tighten(path: &Path, access: Access) -> io::Result<()> {
    let user = CurrentUser::get()?;
    match Descriptor::of_file(path).and_then(|d| d.grants_at_most(&user, access)) {
        Ok(true) => Ok(()),
        Ok(false) => {
            warn!(path = %path.display(), "file open to other accounts: its access control list is now {access:?}");
            protect(path, &user, access)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
        Err(e) if unsupported(&e) => {
            warn!(path = %path.display(), error = %e, "this file system keeps no access control lists: the file is not owner-only");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::{sddl, Access, CurrentUser, Descriptor};

    /// Wine (the tests' Windows on Linux) accepts DACLs but does not keep them on files: there the
    /// files' own DACLs are not read back.
    fn under_wine() -> bool {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
        // SAFETY: ntdll is always loaded; the names are NUL-terminated.
        unsafe { GetProcAddress(GetModuleHandleA(c"ntdll.dll".as_ptr().cast()), c"wine_get_version".as_ptr().cast()) }
            .is_some()
    }

    fn grants_at_most(sddl: &str, access: Access) -> bool {
        Descriptor::from_sddl(sddl).unwrap().grants_at_most(&CurrentUser::get().unwrap(), access).unwrap()
    }

    #[test]
    fn what_a_dacl_grants_others_is_told() {
        let user = CurrentUser::get().unwrap();
        let me = user.sid_string().unwrap();
        for directory in [false, true] {
            let private = sddl(&user, Access::Private, directory).unwrap();
            assert!(grants_at_most(&private, Access::Private) && grants_at_most(&private, Access::Public));
            let public = sddl(&user, Access::Public, directory).unwrap();
            assert!(!grants_at_most(&public, Access::Private) && grants_at_most(&public, Access::Public));
        }
        // What Windows gives a new file in a user's directory: SYSTEM and Administrators too.
        let inherited = format!("D:(A;ID;FA;;;SY)(A;ID;FA;;;BA)(A;ID;FA;;;{me})");
        assert!(!grants_at_most(&inherited, Access::Private) && !grants_at_most(&inherited, Access::Public));
        // Others may read a public file, not write it; a deny entry takes nothing away from that.
        let writable = format!("D:(A;;FA;;;{me})(A;;FW;;;WD)");
        assert!(!grants_at_most(&writable, Access::Public));
        let denied = format!("D:(D;;FA;;;WD)(A;;FA;;;{me})");
        assert!(grants_at_most(&denied, Access::Private));
        // A DACL with no entry grants nothing; no DACL at all (a null DACL) grants everything.
        assert!(grants_at_most("D:P", Access::Private));
        let null = Descriptor { _memory: super::Local(std::ptr::null_mut()), dacl: std::ptr::null_mut() };
        assert!(!null.grants_at_most(&user, Access::Private).unwrap());
    }

    #[test]
    fn created_private_and_existing_ones_tightened() {
        let tight = |path: &Path, access| {
            under_wine()
                || Descriptor::of_file(path).unwrap().grants_at_most(&CurrentUser::get().unwrap(), access).unwrap()
        };
        let dir = std::env::temp_dir().join(format!("spotflow-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_private_dir(&dir).unwrap();
        assert!(tight(&dir, Access::Private));
        let new = dir.join("new.db");
        prepare_private_file(&new).unwrap();
        assert!(tight(&new, Access::Private));
        // A file others may read, as one an older version left: tightened, its bytes kept.
        let old = dir.join("old.db");
        std::fs::write(&old, b"keep me").unwrap();
        super::protect(&old, &CurrentUser::get().unwrap(), Access::Public).unwrap();
        prepare_private_file(&old).unwrap();
        assert!(tight(&old, Access::Private));
        assert_eq!(std::fs::read(&old).unwrap(), b"keep me");
        write_private_file(&dir.join("token"), b"secret").unwrap();
        assert!(tight(&dir.join("token"), Access::Private));
        assert_eq!(std::fs::read(dir.join("token")).unwrap(), b"secret");
        tighten_if_exists(&dir.join("missing")).unwrap();
        prepare_sqlite_database(&old).unwrap();
        let cert = dir.join("cert.pem");
        write_public_file(&cert, b"cert").unwrap();
        assert!(tight(&cert, Access::Public));
        write_public_file(&cert, b"again").unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), b"again");
        tighten_public_file(&cert).unwrap();
        tighten_public_file(&dir.join("missing.pem")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
