//! Advisory file locks (`flock`), the one way this plugin serialises
//! processes: host-local's `lock`, the network's state lock, the load lock.

use std::{fs::File, path::Path};

use rustix::fs::{flock, FlockOperation};

/// Opens (creating, mode 0600) `path` and locks it, blocking until the lock
/// is granted. The lock lasts as long as the returned file is open; each call
/// opens its own file description, so threads of one process exclude each
/// other too.
pub fn lock(path: &Path, exclusive: bool) -> std::io::Result<File> {
    let file = crate::private::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    crate::private::check_file(path, &file)?;
    let op = if exclusive {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::LockShared
    };
    loop {
        match flock(&file, op) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
