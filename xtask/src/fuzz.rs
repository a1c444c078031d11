//! `cargo xtask fuzz`: bounded coverage-guided runs of the cargo-fuzz targets
//! in `fuzz/` (config and `prevResult`, the CNI environment and `CNI_ARGS`,
//! the host-local IPAM section). Provisions what it needs itself: rustup's
//! nightly toolchain (minimal profile) and cargo-fuzz.

use std::{ffi::OsString, path::PathBuf, time::Instant};

use crate::{
    setup::LEAKY_ENV,
    sh::{self, cargo, cargo_home, workspace_root, Cmd, Context, Result},
};

/// The targets, as named in fuzz/Cargo.toml.
const TARGETS: [&str; 3] = ["netconf", "cni_env", "host_local"];

const USAGE: &str = "usage: cargo xtask fuzz [--secs N] [--target NAME] [--dry-run]

Runs each fuzz target (netconf, cni_env, host_local) for N seconds (default 60)
with `cargo +nightly fuzz run -O`, starting from fuzz/seeds/<target> and the
corpus kept in fuzz/corpus/<target>; fails on the first crash, panic, leak or
timeout (the input is saved under fuzz/artifacts/<target>/). Installs rustup's
nightly toolchain and cargo-fuzz first if they are missing.";

fn rustup() -> OsString {
    let p = cargo_home().join("bin").join("rustup");
    if p.exists() {
        p.into_os_string()
    } else {
        "rustup".into()
    }
}

/// A command with none of the outer cargo's variables (they would pin the
/// toolchain or the target directory of `cargo xtask`).
fn clean(mut cmd: Cmd) -> Cmd {
    for k in LEAKY_ENV
        .iter()
        .chain(&["RUSTUP_TOOLCHAIN", "CARGO", "RUSTDOC", "CARGO_MANIFEST_DIR"])
    {
        cmd = cmd.env_remove(k);
    }
    cmd
}

/// Nightly (for `-Zsanitizer`) and cargo-fuzz, installed when missing.
fn ensure_tools(dry_run: bool) -> Result {
    let nightly = clean(Cmd::new(rustup()).args(["run", "nightly", "rustc", "-V"]))
        .quiet()
        .read();
    match nightly {
        Ok(v) => println!("ok: nightly toolchain ({})", v.trim()),
        Err(_) if dry_run => println!("would install: rustup toolchain nightly (minimal)"),
        Err(_) => {
            println!("installing: rustup toolchain nightly (minimal profile), for cargo-fuzz");
            clean(Cmd::new(rustup()).args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))
            .run()
            .context(|| "installing the nightly toolchain")?;
        }
    }
    let fuzz = cargo_home().join("bin").join("cargo-fuzz");
    match Cmd::new(&fuzz).arg("--version").quiet().read() {
        Ok(v) => println!("ok: {}", v.trim()),
        Err(_) if dry_run => println!("would install: cargo-fuzz (cargo install --locked)"),
        Err(_) => {
            println!("installing: cargo-fuzz (cargo install --locked); this takes a few minutes");
            // Outside the workspace, so its config does not apply.
            clean(Cmd::new(cargo()).args(["install", "cargo-fuzz", "--locked"]))
                .dir("/")
                .run()
                .context(|| "installing cargo-fuzz")?;
        }
    }
    Ok(())
}

/// `Done 123 runs in 61 second(s)` from libFuzzer's output.
fn executions(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done ")?.split(' ').next()?.parse().ok())
}

/// Entry point of `cargo xtask fuzz`.
pub fn main(args: &[OsString]) -> Result {
    let mut secs = 60u64;
    let mut targets: Vec<&str> = TARGETS.to_vec();
    let mut dry_run = false;
    let mut it = args.iter().map(|a| a.to_str().unwrap_or(""));
    while let Some(a) = it.next() {
        match a {
            "--secs" => {
                secs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| *s > 0)
                    .ok_or("fuzz: --secs needs a positive number of seconds")?;
            }
            "--target" => {
                let t = it.next().unwrap_or("");
                let t = TARGETS
                    .iter()
                    .find(|x| **x == t)
                    .ok_or_else(|| format!("fuzz: unknown target {t:?}; targets: {TARGETS:?}"))?;
                targets = vec![t];
            }
            "--dry-run" => dry_run = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("fuzz: unknown argument {a:?}\n{USAGE}").into()),
        }
    }
    sh::step("fuzz: tools");
    ensure_tools(dry_run)?;
    let dir = workspace_root().join("fuzz");
    // Inside the main target directory (ignored by git), not fuzz/target.
    let target_dir = workspace_root().join("target").join("fuzz");
    let mut summary = Vec::new();
    for t in targets {
        sh::step(&format!("fuzz: {t} for {secs}s"));
        let corpus: PathBuf = dir.join("corpus").join(t);
        let seeds = dir.join("seeds").join(t);
        let mut cmd = clean(Cmd::new(rustup()))
            .args(["run", "nightly", "cargo", "fuzz", "run", "-O", t])
            .arg(&corpus)
            .env("CARGO_TARGET_DIR", &target_dir)
            .dir(&dir);
        if seeds.is_dir() {
            cmd = cmd.arg(&seeds);
        }
        cmd = cmd.args([
            "--".to_string(),
            format!("-max_total_time={secs}"),
            // A slow input (quadratic parsing, an unbounded read) is a finding.
            "-timeout=10".to_string(),
            "-rss_limit_mb=2048".to_string(),
            "-print_final_stats=1".to_string(),
        ]);
        if dry_run {
            println!("$ {}", cmd.display());
            continue;
        }
        std::fs::create_dir_all(&corpus).context(|| format!("create {}", corpus.display()))?;
        let started = Instant::now();
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "fuzz target {t} failed ({}); the input is under fuzz/artifacts/{t}/:\n{}",
                out.status,
                tail.join("\n")
            )
            .into());
        }
        let runs = executions(&stderr)
            .ok_or_else(|| format!("fuzz target {t}: no `Done N runs` in its output"))?;
        let line = format!(
            "{t}: {runs} executions in {:.0}s, no crash",
            started.elapsed().as_secs_f64()
        );
        println!("{line}");
        summary.push(line);
    }
    if !dry_run {
        println!("\nxtask fuzz: {}", summary.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::executions;

    #[test]
    fn reads_libfuzzer_done_line() {
        let err = "#2\tINITED cov: 10\nDone 310032 runs in 21 second(s)\nstat::number_of_executed_units: 310032\n";
        assert_eq!(executions(err), Some(310032));
        assert_eq!(executions("INFO: nothing"), None);
    }
}
