//! Test-only fail points: `CNI_EBPF_FAILPOINT=<step>` makes ADD abort the
//! process (`std::process::abort`, as a kubelet timeout's SIGKILL or a node
//! crash would, with no rollback) right after that step, so the tests can
//! prove that DEL and GC clean up whatever a killed ADD left behind.
//!
//! Compiled in only with `debug_assertions`: `cargo test` builds the binary
//! under test in the dev profile anyway, so the suite needs no second build
//! and no feature flag, and a release build (`cargo build --release`, what
//! is installed on nodes) contains no trace of it (see docs/architecture.md).

/// The ADD steps a fail point can follow, in order (main mode).
#[cfg(debug_assertions)]
pub const STEPS: [&str; 9] = [
    "after-state",
    "after-ipam",
    "after-ports",
    "after-veth",
    "after-node-side",
    "after-netns",
    "after-attach",
    "after-maps",
    "after-state-write",
];

/// Aborts the process if `CNI_EBPF_FAILPOINT` names `step`.
#[cfg(debug_assertions)]
pub fn hit(step: &'static str) {
    debug_assert!(STEPS.contains(&step), "unknown fail point {step}");
    if std::env::var("CNI_EBPF_FAILPOINT").is_ok_and(|v| v == step) {
        crate::warn!("fail point {step}: aborting");
        std::process::abort();
    }
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_step: &'static str) {}
