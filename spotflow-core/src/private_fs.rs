//! Files that hold secrets (provisioning and registration tokens, SAS, the emulator's admin token
//! and keys): owner-only from the first byte (files 0600, directories 0700), and an existing one
//! with a broader mode tightened at open, with a logged warning. On Windows the same through the
//! file's access control list (`private_fs/windows.rs`).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(windows)]
#[allow(unsafe_code)]
mod windows;

#[cfg(unix)]
fn tighten(path: &Path, wanted: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tracing::warn;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & !wanted != 0 {
        warn!(path = %path.display(), mode = format!("{mode:o}"), "file open to other users: tightened to {wanted:o}");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    }
    Ok(())
}

#[cfg(windows)]
fn tighten(path: &Path, wanted: u32) -> io::Result<()> {
    windows::tighten(path, windows::Access::from_mode(wanted))
}

#[cfg(not(any(unix, windows)))]
fn tighten(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

/// Opens `path` with `options` (which create it), giving a new file `mode` from its first byte and
/// tightening an existing one to it.
fn open_with_mode(options: &mut OpenOptions, path: &Path, mode: u32) -> io::Result<File> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, mode);
    #[cfg(windows)]
    {
        // Created here: its access control list is set before anything can be written to it.
        match options.clone().create_new(true).open(path) {
            Ok(file) => {
                windows::restrict_new(path, windows::Access::from_mode(mode))?;
                return Ok(file);
            }
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) => {}
        }
    }
    let file = options.open(path)?;
    tighten(path, mode)?;
    Ok(file)
}

/// Opens `path` for reading and writing, creating it owner-only (0600) if missing and tightening
/// it if it exists with a broader mode. Never truncates.
pub fn open_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    open_with_mode(&mut options, path, 0o600)
}

/// Creates `path` owner-only if missing (so that a library that opens it next, such as SQLite,
/// keeps that mode, and gives it to the files it creates beside it), or tightens it.
pub fn prepare_private_file(path: &Path) -> io::Result<()> {
    open_private_file(path).map(drop)
}

/// Tightens `path` if it exists (e.g. SQLite's `-wal` and `-shm` of an older database).
pub fn tighten_if_exists(path: &Path) -> io::Result<()> {
    match tighten(path, 0o600) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Prepares an SQLite database that holds secrets: the file owner-only from the first byte
/// (SQLite gives its `-wal`, `-shm` and `-journal` files the database's mode), and those of an
/// older database tightened too.
pub fn prepare_sqlite_database(path: &Path) -> io::Result<()> {
    prepare_private_file(path)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        tighten_if_exists(Path::new(&side))?;
    }
    Ok(())
}

/// Writes `contents` to `path` (replacing it), owner-only from the first byte.
pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = open_private_file(path)?;
    file.set_len(0)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes `contents` to `path` (replacing it) readable by everyone but writable by its owner alone
/// (0644 at most, whatever the umask), for files others may read but must not replace (the
/// emulator's certificates); tightens a broader file (with a warning).
pub fn write_public_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    let mut file = open_with_mode(&mut options, path, 0o644)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Tightens a file others may read to 0644 at most if it exists (see [`write_public_file`]).
pub fn tighten_public_file(path: &Path) -> io::Result<()> {
    match tighten(path, 0o644) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates the directory `path` (and its parents) with the last one owner-only (0700), or
/// tightens it if it exists.
pub fn prepare_private_dir(path: &Path) -> io::Result<()> {
    if !path.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(path)?;
        #[cfg(windows)]
        return windows::restrict_new(path, windows::Access::Private);
    }
    tighten(path, 0o700)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_existing_ones_tightened() {
        let dir = std::env::temp_dir().join(format!("spotflow-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let new = dir.join("new.db");
        prepare_private_file(&new).unwrap();
        assert_eq!(mode(&new), 0o600);
        let old = dir.join("old.db");
        std::fs::write(&old, b"keep me").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare_private_file(&old).unwrap();
        assert_eq!((mode(&old), std::fs::read(&old).unwrap()), (0o600, b"keep me".to_vec()));
        write_private_file(&dir.join("token"), b"secret").unwrap();
        assert_eq!(mode(&dir.join("token")), 0o600);
        tighten_if_exists(&dir.join("missing")).unwrap();
        let wal = dir.join("old.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare_sqlite_database(&old).unwrap();
        assert_eq!(mode(&wal), 0o600);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let cert = dir.join("cert.pem");
        write_public_file(&cert, b"cert").unwrap();
        assert_eq!(mode(&cert) & 0o022, 0, "not writable by others");
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o666)).unwrap();
        tighten_public_file(&cert).unwrap();
        assert_eq!(mode(&cert), 0o644);
        write_public_file(&cert, b"again").unwrap();
        assert_eq!((mode(&cert), std::fs::read(&cert).unwrap()), (0o644, b"again".to_vec()));
        tighten_public_file(&dir.join("missing.pem")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
