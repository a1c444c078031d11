//! `cargo xtask setup`: idempotent provisioning of everything the build, the
//! tests and the demo need (DESIGN.md §4): Debian's BPF-capable rustc,
//! LLVM for bpf-linker, bpf-linker itself, the networking tools, and the
//! rustup components `cargo xtask test` uses.

use std::{ffi::OsString, path::PathBuf, time::Instant};

use crate::sh::{self, cargo, cargo_home, Cmd, Context, Result};

/// bpf-linker release the eBPF build is checked with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's rustc with a prebuilt `core` for the BPF target.
const BPF_RUSTC: &str = "/usr/bin/rustc";
/// Packages that give [`BPF_RUSTC`] (first round: the LLVM major depends on it).
const RUST_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"];
/// Tools the build, tests and demo use; `llvm-N-dev` is added to these.
///
/// bpf-linker links libLLVM dynamically (`llvm-config --shared-mode` is
/// `shared` on Debian), so it needs neither libpolly nor zlib/zstd headers,
/// but llvm-sys compiles a small C wrapper: gcc.
const TOOL_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "bpftool",
    "iproute2",
    "containernetworking-plugins",
    "util-linux",
    "iptables",
    "iputils-ping",
    "procps",
    // tests/deploy.rs lints bench/kind/run.sh; `cargo xtask image` checks the
    // static binary with `file`.
    "shellcheck",
    "file",
    // tests/containerd.rs: a real containerd 1.6 (CRI) with runc, its image
    // busybox-static (both listed below); protoc builds the CRI client
    // (k8s-cri generates its bindings at build time).
    "containerd",
    "protobuf-compiler",
    // tests/podman.rs: rootful podman 4.3 with its CNI backend (the
    // reference plugins above), runc as its OCI runtime (podman's default,
    // crun, refuses this cgroup v1 hybrid setup), busybox in its image.
    "podman",
    "conmon",
    "runc",
    "busybox-static",
    // tests/agent.rs: `promtool check metrics` and a real Prometheus server
    // scraping the agent (started by the test, inside its node namespace;
    // the package's own service is never started: see `Apt::ensure`).
    "prometheus",
];
/// Variables of an outer cargo that must not reach `cargo install`.
pub const LEAKY_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_INSTALL_ROOT",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC",
    "CARGO_BUILD_RUSTC",
    "RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_BOOTSTRAP",
];

const USAGE: &str = "usage: cargo xtask setup [--dry-run]

Checks, and installs what is missing (as root): Debian's rustc-web/cargo-web with
the BPF core, llvm-N-dev (N = LLVM major of /usr/bin/rustc), bpf-linker
0.13.0, bpftool, iproute2, the reference CNI plugins, nsenter, iptables, ping,
procps, containerd, podman, runc, busybox-static, protoc, and the rustup
components rustfmt and clippy. No service starts during the install.
--dry-run only checks and says what it would install.";

/// Entry point of `cargo xtask setup`.
pub fn main(args: &[OsString]) -> Result {
    let mut dry_run = false;
    for a in args {
        match a.to_str().unwrap_or("") {
            "--dry-run" => dry_run = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("setup: unknown argument {a:?}\n{USAGE}").into()),
        }
    }
    run(dry_run)
}

/// Provisions the machine; with `dry_run`, only checks.
pub fn run(dry_run: bool) -> Result {
    sh::step(if dry_run {
        "setup (dry run: checking only)"
    } else {
        "setup"
    });
    if !sh::is_root() {
        if dry_run {
            println!("warning: not root; a real run needs root to install packages");
        } else {
            return Err(
                "cargo xtask setup must run as root (it installs Debian packages and tools); \
                 run it as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask setup`"
                    .into(),
            );
        }
    }
    let started = Instant::now();
    let mut apt = Apt {
        dry_run,
        updated: false,
    };

    apt.ensure(RUST_PACKAGES)?;
    let llvm = match bpf_rustc(dry_run)? {
        Some(n) => n,
        None => {
            println!("would: derive N from `{BPF_RUSTC} -vV`, then install llvm-N-dev and bpf-linker {BPF_LINKER_VERSION} (llvm-N)");
            apt.ensure(TOOL_PACKAGES)?;
            rustup_components(dry_run);
            return Ok(());
        }
    };
    let llvm_dev = format!("llvm-{llvm}-dev");
    let mut pkgs = vec![llvm_dev.as_str()];
    pkgs.extend_from_slice(TOOL_PACKAGES);
    apt.ensure(&pkgs)?;
    bpf_linker(llvm, dry_run)?;
    rustup_components(dry_run);
    println!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Installs the Debian packages `pkgs` that are missing (bench tools).
pub fn ensure_packages(pkgs: &[&str]) -> Result {
    Apt {
        dry_run: false,
        updated: false,
    }
    .ensure(pkgs)
}

/// Debian packages: checks with dpkg-query, installs what is missing.
struct Apt {
    dry_run: bool,
    updated: bool,
}

impl Apt {
    /// The installed version of `pkg`, if it is fully installed.
    fn installed(pkg: &str) -> Option<String> {
        let out = Cmd::new("dpkg-query")
            .args(["-W", "-f=${Status}\t${Version}", pkg])
            .quiet()
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, version) = text.split_once('\t')?;
        (status == "install ok installed").then(|| version.to_string())
    }

    fn ensure(&mut self, pkgs: &[&str]) -> Result {
        let mut missing = Vec::new();
        for &p in pkgs {
            match Self::installed(p) {
                Some(v) => println!("ok: {p} {v}"),
                None => missing.push(p),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if self.dry_run {
            println!("would install: {}", missing.join(" "));
            return Ok(());
        }
        println!("installing: {}", missing.join(" "));
        if !self.updated {
            Cmd::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .run()?;
            self.updated = true;
        }
        // Installing a daemon (containerd, prometheus) must never start it on the
        // machine: invoke-rc.d asks policy-rc.d, 101 = "not allowed".
        let no_daemons = NoDaemons::install();
        let installed = Cmd::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run();
        drop(no_daemons);
        installed?;
        for p in missing {
            match Self::installed(p) {
                Some(v) => println!("installed: {p} {v}"),
                None => {
                    return Err(
                        format!("apt-get reported success but {p} is still not installed").into(),
                    )
                }
            }
        }
        Ok(())
    }
}

/// A `/usr/sbin/policy-rc.d` that forbids starting services, for as long as
/// it lives; only written (and then removed) when the machine has none.
struct NoDaemons(Option<PathBuf>);

impl NoDaemons {
    fn install() -> Self {
        let p = PathBuf::from("/usr/sbin/policy-rc.d");
        if p.exists() {
            return NoDaemons(None);
        }
        let written = std::fs::write(
            &p,
            "#!/bin/sh\n# cargo xtask setup: no service starts during apt-get install\nexit 101\n",
        )
        .and_then(|()| {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        });
        match written {
            Ok(()) => NoDaemons(Some(p)),
            Err(e) => {
                println!("warning: cannot write {}: {e}", p.display());
                NoDaemons(None)
            }
        }
    }
}

impl Drop for NoDaemons {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Parses `LLVM version: 22.1.8` out of `rustc -vV`.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

/// Checks Debian's rustc and its BPF `core`; returns its LLVM major (None
/// only in a dry run where it is not installed yet).
fn bpf_rustc(dry_run: bool) -> Result<Option<u32>> {
    if dry_run && !std::path::Path::new(BPF_RUSTC).exists() {
        return Ok(None);
    }
    let vv = Cmd::new(BPF_RUSTC).arg("-vV").quiet().read()?;
    let n = llvm_major(&vv)
        .ok_or_else(|| format!("no `LLVM version:` line in `{BPF_RUSTC} -vV`:\n{vv}"))?;
    let release = vv
        .lines()
        .find_map(|l| l.strip_prefix("release:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let sysroot = Cmd::new(BPF_RUSTC)
        .args(["--print", "sysroot"])
        .quiet()
        .read()?;
    let core_dir = PathBuf::from(sysroot.trim()).join("lib/rustlib/bpfel-unknown-none/lib");
    let has_core = std::fs::read_dir(&core_dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false);
    if !has_core {
        let msg = format!(
            "{BPF_RUSTC} {release} has no core for bpfel-unknown-none in {} \
             (libstd-rust-web-dev-bpf comes from bookworm-security; is that suite in the apt sources?)",
            core_dir.display()
        );
        if dry_run {
            println!("warning: {msg}");
        } else {
            return Err(msg.into());
        }
    }
    println!("ok: {BPF_RUSTC} {release} (LLVM {n}), core for bpfel-unknown-none");
    Ok(Some(n))
}

/// What the installed bpf-linker is: its version and the LLVM major it links.
struct LinkerState {
    version: Option<String>,
    llvm: Option<u32>,
}

fn linker_state(path: &std::path::Path) -> LinkerState {
    let version = Cmd::new(path)
        .arg("--version")
        .quiet()
        .read()
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string));
    // libLLVM is linked dynamically: the soname names the major.
    let llvm = Cmd::new("ldd").arg(path).quiet().read().ok().and_then(|s| {
        s.lines().find_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("libLLVM.so.")
                .or_else(|| l.strip_prefix("libLLVM-"))?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
    });
    LinkerState { version, llvm }
}

fn bpf_linker(llvm: u32, dry_run: bool) -> Result {
    let root = cargo_home();
    let path = root.join("bin").join("bpf-linker");
    let prefix = format!("/usr/lib/llvm-{llvm}");
    let before = linker_state(&path);
    let why = match (&before.version, before.llvm) {
        (Some(v), Some(m)) if v == BPF_LINKER_VERSION && m == llvm => {
            println!("ok: bpf-linker {v} (llvm-{m})");
            return Ok(());
        }
        (Some(v), None) if v == BPF_LINKER_VERSION => {
            println!("ok: bpf-linker {v} (LLVM linked statically; cannot check its major)");
            return Ok(());
        }
        (Some(v), Some(m)) if v == BPF_LINKER_VERSION => {
            format!("it links LLVM {m}, /usr/bin/rustc uses LLVM {llvm}")
        }
        (Some(v), _) => format!("found version {v}"),
        (None, _) if path.exists() => "it does not run".to_string(),
        (None, _) => "not installed".to_string(),
    };
    let feature = format!("llvm-{llvm}");
    let mut cmd = Cmd::new(cargo())
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args(["--no-default-features", "--features", &feature])
        .arg("--root")
        .arg(&root);
    if path.exists() {
        cmd = cmd.arg("--force");
    }
    // Run outside the workspace so its .cargo/config.toml does not apply.
    cmd = cmd.env("LLVM_PREFIX", &prefix).dir("/");
    for k in LEAKY_ENV {
        cmd = cmd.env_remove(k);
    }
    if dry_run {
        println!(
            "would install: bpf-linker {BPF_LINKER_VERSION} ({feature}) ({why}): {}",
            cmd.display()
        );
        return Ok(());
    }
    if !std::path::Path::new(&prefix)
        .join("bin/llvm-config")
        .exists()
    {
        return Err(format!(
            "{prefix}/bin/llvm-config is missing although llvm-{llvm}-dev is installed"
        )
        .into());
    }
    println!("installing: bpf-linker {BPF_LINKER_VERSION} ({feature}) ({why}); this takes about a minute");
    let started = Instant::now();
    cmd.run().context(|| "installing bpf-linker")?;
    let after = linker_state(&path);
    if after.version.as_deref() != Some(BPF_LINKER_VERSION) {
        return Err(format!(
            "{} still reports version {:?} after cargo install (is another bpf-linker earlier on PATH?)",
            path.display(),
            after.version
        )
        .into());
    }
    println!(
        "installed: bpf-linker {BPF_LINKER_VERSION} ({feature}) in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// rustfmt and clippy for `cargo xtask test`; only warns when rustup cannot
/// add them (no network).
fn rustup_components(dry_run: bool) {
    let rustup = {
        let p = cargo_home().join("bin").join("rustup");
        if p.exists() {
            p.into_os_string()
        } else {
            "rustup".into()
        }
    };
    let installed = match Cmd::new(&rustup)
        .args(["component", "list", "--installed"])
        .quiet()
        .read()
    {
        Ok(s) => s,
        Err(e) => {
            println!("warning: cannot list rustup components: {e}");
            return;
        }
    };
    let mut missing = Vec::new();
    for comp in ["rustfmt", "clippy"] {
        if installed
            .lines()
            .any(|l| l.trim() == comp || l.trim().starts_with(&format!("{comp}-")))
        {
            println!("ok: rustup component {comp}");
        } else {
            missing.push(comp);
        }
    }
    if missing.is_empty() {
        return;
    }
    if dry_run {
        println!("would install: rustup components {}", missing.join(" "));
        return;
    }
    println!("installing: rustup components {}", missing.join(" "));
    if let Err(e) = Cmd::new(&rustup)
        .args(["component", "add"])
        .args(&missing)
        .run()
    {
        println!("warning: {e}; `cargo fmt`/`cargo clippy` will fail until they are installed");
    }
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn parses_llvm_major() {
        let vv = "rustc 1.96.0 (ac68faa20 2026-05-25)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.96.0\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
