//! Deleting retired veths after DEL has returned.
//!
//! Deleting a network device waits for RCU grace periods inside the kernel
//! (`unregister_netdevice` and `netdev_run_todo`): 15-50 ms on these
//! machines, most of a DEL. DEL therefore only retires the veth (down and
//! renamed, which frees its names at once, see
//! [`Netlink::retire_veth`](crate::netlink::Netlink::retire_veth)) and leaves
//! the deletion to a detached child process with no stdio, so the runtime
//! that waits for DEL's stdout to close does not wait for it. The child is a
//! plain `fork()` when the process is single-threaded at that point (it is:
//! every namespace thread has been joined), which costs the parent a fraction
//! of a millisecond; otherwise this binary again, run as `cni-ebpf reap
//! NAME...` (`posix_spawn` makes the parent wait until the child has exec'd:
//! 1-5 ms). If neither starts the caller deletes in place; if the child dies
//! early, GC sweeps what it left.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

use crate::netlink::{Netlink, NlError, TOMBSTONE_PREFIX};

/// Starts a detached reaper for `names` (tombstones in the calling thread's
/// network namespace). `false` if it could not be started.
pub fn spawn(names: &[String]) -> bool {
    if single_threaded() {
        // SAFETY: with one thread no lock can be held by another one, so the
        // child may allocate; it leaves only through _exit.
        match unsafe { libc::fork() } {
            0 => {
                detach();
                let ok = reap(names).is_ok();
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            pid if pid > 0 => return true,
            _ => {}
        }
    }
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

/// True if this process has exactly one thread.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// In the forked child: a session of its own, stdio on /dev/null (the
/// runtime reads DEL's stdout until every holder has closed it), and no
/// other inherited descriptor (the state directory's flock would otherwise
/// be held until the child exits).
fn detach() {
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
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
