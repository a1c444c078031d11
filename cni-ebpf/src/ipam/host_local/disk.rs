//! The on-disk store (the reference's `backend/disk`): the format, the lock
//! and every file operation, in one place.
//!
//! - `<dataDir>/<network>/lock` is `flock(LOCK_EX)`-ed around every operation
//!   (the reference's `disk.Store` lock, taken through `go-filemutex`);
//! - each reserved address is a file named by the address's canonical string
//!   form (`10.22.0.5`, `fd00::5`), created with `O_CREAT|O_EXCL`, holding
//!   `<containerID>\r\n<ifname>` with no trailing newline;
//! - `last_reserved_ip.<N>` holds the last address reserved in range set `N`,
//!   which drives the round-robin allocation order.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What can go wrong with the store; [`crate::cni::CniError`] gives each
/// its code (`From<StoreError> for CniError` in `cni/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed (code 5).
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation (`cannot create`, `cannot lock`, ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The network directory is something else (code 5).
    #[error("{} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A network name that is not one path component (code 7).
    #[error("invalid network name {0:?}: must be a single path component")]
    NetworkName(String),
}

/// Prefix of the per-range-set round-robin cursor files.
const LAST_IP_PREFIX: &str = "last_reserved_ip.";
/// Separator between container ID and interface name in a reservation file.
const LINE_BREAK: &str = "\r\n";
/// Name of the lock file inside the network directory.
const LOCK_FILE: &str = "lock";

/// The on-disk store of one network: `<dataDir>/<network>/`.
///
/// Holds an exclusive `flock` on `<dir>/lock` for as long as it is alive, so
/// every operation done through one `Store` is atomic with respect to other
/// `Store`s (in this or any other thread or process) and to the reference
/// binary. The lock file is opened anew by every `Store`, so each has its own
/// open file description and the lock also excludes other threads.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    // Never read: holding the descriptor open is what holds the lock, and
    // closing it on drop releases it.
    _lock: File,
}

/// One reservation file as found on disk.
pub(super) struct Entry {
    pub(super) ip: IpAddr,
    path: PathBuf,
    /// File content with surrounding whitespace trimmed (the reference
    /// compares trimmed content).
    pub(super) owner: String,
}

impl Entry {
    /// (container ID, interface name) of the owner; legacy files holding
    /// just the container ID give an empty interface name.
    pub(super) fn owner_parts(&self) -> (String, String) {
        match self.owner.split_once(LINE_BREAK) {
            Some((id, ifname)) => (id.to_string(), ifname.to_string()),
            None => (self.owner.clone(), String::new()),
        }
    }
}

impl Store {
    /// Creates `<data_dir>/<network>/` (mode 0700) if needed and takes the
    /// exclusive lock, blocking until it is available.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, StoreError> {
        let dir = network_dir(data_dir, network)?;
        crate::private::own_dir(&dir).map_err(|e| io_error("cannot create directory", &dir, e))?;
        Self::lock(dir)
    }

    /// Like [`Store::open`], but `None` when the network directory does not
    /// exist (nothing was ever reserved), without creating it.
    pub(super) fn open_existing(
        data_dir: &Path,
        network: &str,
    ) -> Result<Option<Store>, StoreError> {
        let dir = network_dir(data_dir, network)?;
        // Not through a symbolic link: only a directory of our own.
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Self::lock(dir).map(Some),
            Ok(_) => Err(StoreError::NotADirectory(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot access", &dir, e)),
        }
    }

    fn lock(dir: PathBuf) -> Result<Store, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file =
            crate::lockfile::lock(&path, true).map_err(|e| io_error("cannot lock", &path, e))?;
        Ok(Store { dir, _lock: file })
    }

    /// Every directory entry name, reservation or not; used to skip taken
    /// addresses without a syscall each.
    pub(super) fn names(&self) -> Result<HashSet<String>, StoreError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| io_error("cannot list", &self.dir, e))?;
        let mut out = HashSet::new();
        for de in rd {
            let de = de.map_err(|e| io_error("cannot list", &self.dir, e))?;
            if let Some(n) = de.file_name().to_str() {
                out.insert(n.to_string());
            }
        }
        Ok(out)
    }

    /// Every regular file whose name is an IP address, with its owner.
    /// Unreadable files are skipped, as the reference does.
    pub(super) fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| io_error("cannot list", &self.dir, e))?;
        let mut out = Vec::new();
        for de in rd {
            let de = de.map_err(|e| io_error("cannot list", &self.dir, e))?;
            let Some(ip) = de
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if !de.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = de.path();
            let Ok(data) = fs::read(&path) else { continue };
            out.push(Entry {
                ip: ip.to_canonical(),
                path,
                owner: String::from_utf8_lossy(&data).trim().to_string(),
            });
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    /// Creates the reservation file for `ip` (`O_CREAT|O_EXCL`, mode 0600).
    /// `Ok(false)` when it already exists. On success also records `ip` in
    /// `last_reserved_ip.<range_set>`, as the reference's `Reserve` does.
    pub(super) fn reserve(
        &self,
        ip: IpAddr,
        id: &str,
        ifname: &str,
        range_set: usize,
    ) -> Result<bool, StoreError> {
        let path = self.dir.join(ip.to_string());
        let mut f = match crate::private::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_error("cannot create", &path, e)),
        };
        if let Err(e) = f.write_all(owner_key(id, ifname).as_bytes()) {
            drop(f);
            let _ = fs::remove_file(&path);
            return Err(io_error("cannot write", &path, e));
        }
        drop(f);
        let last = self.dir.join(format!("{LAST_IP_PREFIX}{range_set}"));
        crate::private::create_file(&last)
            .and_then(|mut f| f.write_all(ip.to_string().as_bytes()))
            .map_err(|e| io_error("cannot write", &last, e))?;
        Ok(true)
    }

    /// The content of `last_reserved_ip.<range_set>`, if present and an IP.
    pub(super) fn last_reserved_ip(&self, range_set: usize) -> Option<IpAddr> {
        let data = fs::read(self.dir.join(format!("{LAST_IP_PREFIX}{range_set}"))).ok()?;
        // The reference does not trim; trimming only makes us accept a file
        // someone edited by hand.
        let s = String::from_utf8_lossy(&data);
        s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
    }

    /// Removes the reservation file of `ip`; a missing file is success.
    pub(super) fn unreserve(&self, ip: IpAddr) -> Result<(), StoreError> {
        Self::remove(&self.dir.join(ip.to_string()))
    }

    /// Removes the file `e` was read from; a missing file is success.
    pub(super) fn remove_entry(&self, e: &Entry) -> Result<(), StoreError> {
        Self::remove(&e.path)
    }

    /// Removes the reservation file of `ip` only if it still names `owner`
    /// (an [`owner_key`]): one file read instead of listing the directory.
    pub(super) fn release_if_owned(&self, ip: IpAddr, owner: &str) -> Result<(), StoreError> {
        let path = self.dir.join(ip.to_canonical().to_string());
        match fs::read(&path) {
            Ok(data) if String::from_utf8_lossy(&data).trim() == owner => Self::remove(&path),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }

    fn remove(path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot remove", path, e)),
        }
    }
}

/// The reservation file content: the reference writes the trimmed ID.
pub(super) fn owner_key(id: &str, ifname: &str) -> String {
    format!("{}{LINE_BREAK}{ifname}", id.trim())
}

/// `<data_dir>/<network>`, refusing names that would leave `data_dir`.
fn network_dir(data_dir: &Path, network: &str) -> Result<PathBuf, StoreError> {
    // Callers validate network names already; this is defence in depth, as
    // the name becomes a path component.
    if network.is_empty()
        || network == "."
        || network == ".."
        || network.contains('/')
        || network.contains('\0')
    {
        return Err(StoreError::NetworkName(network.to_string()));
    }
    Ok(data_dir.join(network))
}

fn io_error(what: &'static str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Io {
        what,
        path: path.to_path_buf(),
        source: e,
    }
}
