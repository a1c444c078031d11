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

/// Open options that create files with mode 0600.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}
