//! Directories and files only root may read or write: the state records, the
//! IPAM reservations, the lock files, the log and the bpffs pin tree hold
//! container identities and control the data path. Modes are set here
//! explicitly (0700 / 0600) rather than left to the runtime's umask, which
//! may well be 0.

use std::{
    fs::{DirBuilder, OpenOptions},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

/// Mode of every directory this plugin creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file this plugin creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents with mode 0700 (existing ones are
/// left as they are: a shared `dataDir` or `/var/lib/cni` is not ours).
pub fn create_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Open options that create files with mode 0600 and never follow a
/// symbolic link in the last component (`O_NOFOLLOW`: the open fails with
/// `ELOOP`), so a link planted in a directory of ours never makes the plugin
/// write, truncate or lock the file it points to.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    o
}

/// Like [`create_dir`], for a directory the plugin keeps its own files in
/// (state records, locks, IPAM reservations): it must be a real directory
/// (not a symbolic link to one elsewhere) owned by this user, else the
/// plugin would write where someone else decides.
pub fn own_dir(path: &Path) -> std::io::Result<()> {
    create_dir(path)?;
    let m = std::fs::symlink_metadata(path)?;
    check_owned(path, &m, true)
}

/// Opens (creating with mode 0600, never through a symbolic link) a file
/// of ours to write it from the start, after checking it is ours: a regular
/// file owned by this user with a single name (a hard link to another file
/// would be truncated otherwise). Truncates only after that check.
pub fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    let f = options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    check_file(path, &f)?;
    f.set_len(0)?;
    Ok(f)
}

/// Errors unless the open file `f` (at `path`) is a regular file owned by
/// this user with a single name.
pub fn check_file(path: &Path, f: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    check_owned(path, &m, false)?;
    if m.nlink() > 1 {
        return Err(std::io::Error::other(format!(
            "{} has {} hard links: not a file of this plugin",
            path.display(),
            m.nlink()
        )));
    }
    Ok(())
}

fn check_owned(path: &Path, m: &std::fs::Metadata, dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let kind_ok = if dir {
        m.file_type().is_dir()
    } else {
        m.file_type().is_file()
    };
    if !kind_ok {
        return Err(std::io::Error::other(format!(
            "{} is not a {} (a symbolic link or another kind of file): refusing to use it",
            path.display(),
            if dir { "directory" } else { "regular file" }
        )));
    }
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {}, not to this plugin (uid {me}): refusing to use it",
            path.display(),
            m.uid()
        )));
    }
    Ok(())
}
