//! How ADD knows the agent is keeping `node_addrs` and the uplinks current:
//! the agent holds an exclusive `flock` on `<stateDir>/agent.lock` for as
//! long as it runs (the kernel drops it when the process ends, however it
//! ends), writes into it the settings it follows, and touches the file after
//! every pass of its loop. ADD skips its node-wide dumps only when the lock
//! is held, the agent follows the same data path (pin path) in the same
//! network namespace (the lease file is on a filesystem every namespace of
//! the node may share) with the settings of ADD's own network, and the file
//! was touched within [`STALE_AFTER`]: a hung agent stops counting after
//! that, and ADD does the dumps again.

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
    /// The pinned data path (`<pinPath>/v<ABI>`) whose `node_addrs` and
    /// `uplinks` it keeps.
    pub pin_path: PathBuf,
    /// Cookie of the network namespace whose addresses and links it follows.
    pub netns_cookie: u64,
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

    /// After a pass of the loop: trusted again when the node's addresses and
    /// uplinks are in sync (`in_sync`), else untrusted at once (ADD does its
    /// own dumps, and fails as it would without the agent) until a sync
    /// succeeds.
    pub fn renew(&self, in_sync: bool) {
        if in_sync {
            self.touch();
        } else {
            let _ = self.file.set_modified(SystemTime::UNIX_EPOCH);
        }
    }
}

/// The agent keeping this node's addresses and uplinks for a network with
/// these settings (data path, uplinks, attach mode), in the calling thread's
/// network namespace, if one does: its lease.
pub fn holder(
    state_dir: &Path,
    pin_path: &Path,
    uplinks: Option<&[String]>,
    mode: AttachMode,
) -> Option<Lease> {
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
    let netns = crate::datapath::netns_cookie().ok()?;
    (lease.pin_path == pin_path
        && lease.netns_cookie == netns
        && lease.uplinks.as_deref() == uplinks
        && lease.attach_mode == mode)
        .then_some(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("cni-ebpf-lease-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    fn lease(pin: &str) -> Lease {
        Lease {
            pid: 1,
            pin_path: pin.into(),
            netns_cookie: crate::datapath::netns_cookie().unwrap(),
            uplinks: None,
            attach_mode: AttachMode::default(),
        }
    }

    // The lock is per open file description: another open of the file in
    // this process is refused the shared lock as another process would be.
    #[test]
    fn trusted_only_for_the_same_data_path_and_namespace() {
        let d = dir("same");
        let l = lease("/sys/fs/bpf/a/v1");
        let _held = Held::take(&d.0, &l, Duration::ZERO).unwrap();
        let mode = AttachMode::default();
        assert_eq!(
            holder(&d.0, Path::new("/sys/fs/bpf/a/v1"), None, mode),
            Some(l.clone())
        );
        // Another network's (or another ABI's) maps: not kept by this agent.
        assert_eq!(
            holder(&d.0, Path::new("/sys/fs/bpf/b/v1"), None, mode),
            None
        );
        assert_eq!(
            holder(&d.0, Path::new("/sys/fs/bpf/a/v2"), None, mode),
            None
        );
        assert_eq!(
            holder(
                &d.0,
                Path::new("/sys/fs/bpf/a/v1"),
                Some(&["eth1".into()]),
                mode
            ),
            None
        );
    }

    #[test]
    fn not_trusted_while_the_agent_is_out_of_sync() {
        let d = dir("sync");
        let l = lease("/p/v1");
        let held = Held::take(&d.0, &l, Duration::ZERO).unwrap();
        let get = || holder(&d.0, Path::new("/p/v1"), None, AttachMode::default());
        assert!(get().is_some());
        held.renew(false);
        assert_eq!(get(), None);
        held.renew(true);
        assert!(get().is_some());
    }

    #[test]
    fn an_agent_of_another_namespace_is_not_trusted() {
        let d = dir("netns");
        let mut l = lease("/p/v1");
        l.netns_cookie = l.netns_cookie.wrapping_add(1);
        let _held = Held::take(&d.0, &l, Duration::ZERO).unwrap();
        assert_eq!(
            holder(&d.0, Path::new("/p/v1"), None, AttachMode::default()),
            None
        );
    }

    #[test]
    fn a_lease_without_the_data_path_is_not_trusted() {
        // What an agent of a build before the data path was recorded wrote.
        let d = dir("old");
        let l = lease("/p/v1");
        let held = Held::take(&d.0, &l, Duration::ZERO).unwrap();
        std::fs::write(
            path(&d.0),
            r#"{"pid":1,"uplinks":null,"attachMode":"netlink"}"#,
        )
        .unwrap();
        held.touch();
        assert_eq!(
            holder(&d.0, Path::new("/p/v1"), None, AttachMode::default()),
            None
        );
    }
}
