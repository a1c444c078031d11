//! Deleting retired veths after DEL has returned.
//!
//! Deleting a network device waits for RCU grace periods inside the kernel
//! (`unregister_netdevice` and `netdev_run_todo`): 15-50 ms on these
//! machines, most of a DEL. DEL therefore only retires the veth (down and
//! renamed, which frees its names at once, see
//! [`Netlink::retire_veth`](crate::netlink::Netlink::retire_veth)) and leaves
//! the deletion to a detached child process: this binary again, run as
//! `cni-ebpf reap NAME...` with no stdio, so the runtime that waits for DEL's
//! stdout to close does not wait for it. If the child cannot be started the
//! caller deletes in place; if it dies early, GC sweeps what it left.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

use crate::netlink::{Netlink, NlError, TOMBSTONE_PREFIX};

/// Starts a detached reaper for `names` (tombstones in the calling thread's
/// network namespace). `false` if it could not be started.
pub fn spawn(names: &[String]) -> bool {
    // /proc/self/exe runs this very binary even if its file was replaced
    // since (an upgrade under a running DEL).
    Command::new("/proc/self/exe")
        .arg("reap")
        .args(names)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .is_ok()
}

/// Deletes the named retired veths (their peers go with them). Only names
/// with the tombstone prefix are touched, so a stray argument cannot delete
/// a live interface.
pub fn reap(names: &[String]) -> Result<(), NlError> {
    let names: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with(TOMBSTONE_PREFIX))
        .cloned()
        .collect();
    Netlink::with(|nl| async move {
        for n in &names {
            nl.del_veth(n).await?;
        }
        Ok(())
    })
}
