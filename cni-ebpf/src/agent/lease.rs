//! How ADD knows the agent is keeping `node_addrs` and the uplinks current:
//! the agent holds an exclusive `flock` on `<stateDir>/agent.lock` for as
//! long as it runs (the kernel drops it when the process ends, however it
//! ends), writes into it the settings it follows, and touches the file after
//! every pass of its loop. ADD skips its node-wide dumps only when the lock
//! is held, the settings are the ones of its own network, and the file was
//! touched within [`STALE_AFTER`]: a hung agent stops counting after that,
//! and ADD does the dumps again.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use crate::datapath::AttachMode;

/// File name under the state directory.
pub const FILE: &str = "agent.lock";
/// A lease not touched for this long is not trusted.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// What the lease file says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The agent's PID (in its own PID namespace).
    pub pid: u32,
    /// The `uplinks` setting it follows (None: default-route devices).
    pub uplinks: Option<Vec<String>>,
    /// How it attaches uplink programs.
    pub attach_mode: AttachMode,
}

/// The lease file of `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The held lease: the open, locked file.
pub struct Held {
    file: File,
}

impl Held {
    /// Takes the lease (retrying for `wait`: an ADD checking it holds a
    /// shared lock for a moment) and writes `lease` into it. Fails when
    /// another agent holds it.
    pub fn take(state_dir: &Path, lease: &Lease, wait: Duration) -> Result<Self, String> {
        let p = path(state_dir);
        crate::private::create_dir(state_dir)
            .map_err(|e| format!("create {}: {e}", state_dir.display()))?;
        let mut file = crate::private::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| format!("open {}: {e}", p.display()))?;
        let until = std::time::Instant::now() + wait;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut s = String::new();
                    let _ = file.read_to_string(&mut s);
                    return Err(format!(
                        "{} is held by another agent ({})",
                        p.display(),
                        s.trim()
                    ));
                }
                Err(e) => return Err(format!("lock {}: {e}", p.display())),
            }
        }
        let body = serde_json::to_string(lease).expect("serializes");
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(body.as_bytes()))
            .map_err(|e| format!("write {}: {e}", p.display()))?;
        Ok(Self { file })
    }

    /// Marks the agent as alive now.
    pub fn touch(&self) {
        let _ = self.file.set_modified(SystemTime::now());
    }
}

/// The agent keeping this node's addresses and uplinks for a network with
/// these settings, if one does: its lease.
pub fn holder(state_dir: &Path, uplinks: Option<&[String]>, mode: AttachMode) -> Option<Lease> {
    let p = path(state_dir);
    let mut file = File::open(&p).ok()?;
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        // Nobody holds it: no agent (the lock is dropped with `file`).
        Ok(()) => return None,
        Err(rustix::io::Errno::WOULDBLOCK) => {}
        Err(_) => return None,
    }
    let age = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .map(|m| SystemTime::now().duration_since(m).unwrap_or_default())?;
    if age > STALE_AFTER {
        return None;
    }
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    let lease: Lease = serde_json::from_str(&s).ok()?;
    (lease.uplinks.as_deref() == uplinks && lease.attach_mode == mode).then_some(lease)
}
