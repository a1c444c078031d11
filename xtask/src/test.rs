//! `cargo xtask test`: setup, then fmt, clippy and the (privileged) test suite,
//! all in the debug profile so clippy and the tests share what they can.

use std::{ffi::OsString, time::Instant};

use crate::{
    setup,
    sh::{self, cargo, workspace_root, Cmd, Result},
};

const USAGE: &str = "usage: cargo xtask test [--dry-run] [-- CARGO_TEST_ARGS...]

Runs `cargo xtask setup`, then `cargo fmt --all -- --check` (and the same for the
eBPF crate, which is outside the workspace),
`cargo clippy --workspace --all-targets -- -D warnings` and
`cargo test --workspace CARGO_TEST_ARGS...` with CNI_EBPF_TEST=1, as root,
then the end-to-end suites (plugin, nat, repair, agent, hostile) once more with every config's
attachMode forced to tcx (CNI_EBPF_TEST_ATTACH=tcx; the default is netlink).
Every step runs even if an earlier one failed; the exit status is non-zero if
any failed. Example: cargo xtask test -- -p cni-ebpf -- --nocapture
--dry-run prints the commands (and the setup checks) without running them.";

/// The attach mode of the second end-to-end pass: the one that is not the
/// default (`attachMode` netlink), so both are proven on every run.
const SECOND_ATTACH_MODE: &str = "tcx";

/// The checks, in order.
fn steps(extra: &[OsString]) -> Vec<(&'static str, Cmd)> {
    let root = workspace_root();
    let cargo = |args: &[&str]| {
        Cmd::new(cargo())
            .args(args)
            .env("CNI_EBPF_TEST", "1")
            .dir(&root)
    };
    vec![
        ("fmt", cargo(&["fmt", "--all", "--", "--check"])),
        // The eBPF crate is outside the workspace (it builds for another
        // target), so `--all` does not reach it.
        (
            "fmt (eBPF crate)",
            cargo(&[
                "fmt",
                "--manifest-path",
                "cni-ebpf-bpf/Cargo.toml",
                "--",
                "--check",
            ]),
        ),
        (
            "clippy",
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        ("test", cargo(&["test", "--workspace"]).args(extra)),
        (
            "test (attachMode tcx)",
            cargo(&[
                "test", "-p", "cni-ebpf", "--test", "plugin", "--test", "nat", "--test", "repair",
                "--test", "agent", "--test", "hostile",
            ])
            .env("CNI_EBPF_TEST_ATTACH", SECOND_ATTACH_MODE),
        ),
    ]
}

/// Entry point of `cargo xtask test`.
pub fn main(args: &[OsString]) -> Result {
    let mut dry_run = false;
    let mut extra = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--") => {
                extra.extend(it.by_ref().cloned());
                break;
            }
            Some("--dry-run") => dry_run = true,
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => {
                return Err(format!(
                    "test: unknown argument {a:?} (cargo test arguments go after `--`)\n{USAGE}"
                )
                .into())
            }
        }
    }
    if !sh::is_root() {
        let msg =
            "cargo xtask test must run as root: the integration tests create network namespaces, \
                   mount bpffs and load eBPF programs";
        if !dry_run {
            return Err(msg.into());
        }
        println!("warning: {msg}");
    }
    setup::run(dry_run)?;
    let steps = steps(&extra);
    if dry_run {
        sh::step("test (dry run: would run)");
        for (_, cmd) in &steps {
            println!("$ {}", cmd.display());
        }
        return Ok(());
    }
    let started = Instant::now();
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for (name, cmd) in &steps {
        sh::step(name);
        let t = Instant::now();
        let outcome = match cmd.status() {
            Ok(st) if st.success() => "ok".to_string(),
            Ok(st) => format!("FAILED ({st})"),
            Err(e) => format!("FAILED ({e})"),
        };
        if outcome != "ok" {
            failed.push(*name);
        }
        summary.push(format!(
            "{name} {outcome} in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    println!(
        "\nxtask test: {}; total {:.1}s: {}",
        summary.join(", "),
        started.elapsed().as_secs_f64(),
        if failed.is_empty() {
            "PASSED"
        } else {
            "FAILED"
        }
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")).into())
    }
}
