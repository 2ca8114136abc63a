//! Files Atlas writes itself: private by default, replaced atomically, durable once written.
//!
//! The data directory holds the database, the node's identity, the cluster CA and its key,
//! and snapshots of the data: it is created `0700`, and everything Atlas writes in it `0600`.
//! A file is written to a temporary sibling that is *created* with its final mode (never
//! readable more widely, even for an instant), synced, renamed over the target, and then the
//! directory is synced so the rename itself survives a power loss.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of directories Atlas creates for its own data.
pub const PRIVATE_DIR: u32 = 0o700;
/// The mode of files Atlas writes in its data directory.
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` (and missing parents) `0700`; an existing `dir` is narrowed to `0700`.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != PRIVATE_DIR {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR))?;
    }
    Ok(())
}

/// Creates `dir` and missing parents `0700`, leaving existing ones as they are (for a
/// directory that may be shared, such as the parent of a configured database path).
pub fn create_dirs(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// Syncs a directory, so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::File::open(dir)?.sync_all()
}

/// Renames `from` to `to` and syncs `to`'s directory.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// `path` with `suffix` appended to its file name (a sibling in the same directory).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` afresh with exactly `mode` (whatever the umask) and opens it for writing.
/// A stale file of that name (left by a crash) is removed first: it must not lend its
/// permissions or contents to the new one.
pub fn create_with_mode(path: &Path, mode: u32) -> io::Result<fs::File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have narrowed the mode; widen it on the open file, before any content.
    if file.metadata()?.permissions().mode() & 0o7777 != mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// Replaces `path` with `content` atomically and durably, the new file having `mode`.
pub fn write_atomically(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let tmp = sibling(path, ".atlas-tmp");
    let result = (|| {
        let mut file = create_with_mode(&tmp, mode)?;
        file.write_all(content)?;
        file.sync_all()?;
        drop(file);
        rename_durably(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `write_atomically` with the data directory's file mode (`0600`).
pub fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    write_atomically(path, content, PRIVATE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_files_and_dirs_get_their_modes_whatever_the_umask() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/tls");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("data")), 0o700);
        // An existing, wider directory is narrowed.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("node.key");
        write_private(&file, b"secret").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read(&file).unwrap(), b"secret");
        // A stale temp file with wide permissions does not lend them to the next write.
        let tmp = sibling(&file, ".atlas-tmp");
        fs::write(&tmp, "stale").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        write_private(&file, b"again").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read(&file).unwrap(), b"again");
        assert!(!tmp.exists());
        // A file meant for others (smb.conf) gets its wider mode even under a strict umask.
        let conf = root.path().join("smb.conf");
        write_atomically(&conf, b"[global]\n", 0o644).unwrap();
        assert_eq!(mode(&conf), 0o644);
    }
}
