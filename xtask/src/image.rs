//! `cargo xtask image`: the statically linked binary and the `FROM scratch`
//! image the DaemonSet runs (deploy/Containerfile).

use std::{ffi::OsString, path::PathBuf};

use crate::sh::{self, cargo, workspace_root, Cmd, Context, Result};

const USAGE: &str = "usage: cargo xtask image [--no-build-image]

Builds cni-ebpf in release mode as a static executable (glibc,
-C target-feature=+crt-static), checks that it is static and that it runs
(CNI VERSION), stages it as target/image/cni-ebpf, and, if podman is
installed, runs `podman build -f deploy/Containerfile -t IMAGE target/image`.
--no-build-image stops after staging the binary.";

/// The image the DaemonSet names (deploy/cni-ebpf.yaml).
pub fn image_ref() -> String {
    format!("localhost/cni-ebpf:{}", env!("CARGO_PKG_VERSION"))
}

/// The host target triple (`rustc -vV`), which the static build names
/// explicitly so that build scripts and proc macros stay dynamic.
fn host_triple() -> Result<String> {
    let rustc = sh::cargo_home().join("bin/rustc");
    let out = Cmd::new(if rustc.exists() {
        rustc.into_os_string()
    } else {
        "rustc".into()
    })
    .arg("-vV")
    .quiet()
    .read()?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .ok_or_else(|| "rustc -vV printed no host triple".into())
}

/// Builds the static binary; returns its path.
pub fn build_static() -> Result<PathBuf> {
    let root = workspace_root();
    let triple = host_triple()?;
    sh::step(&format!("static release build for {triple}"));
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_uppercase().replace('-', "_")
    );
    Cmd::new(cargo())
        .args(["build", "--release", "-p", "cni-ebpf", "--target", &triple])
        .env(flags_var, "-C target-feature=+crt-static")
        .dir(&root)
        .run()?;
    let bin = root.join("target").join(&triple).join("release/cni-ebpf");

    sh::step("check: statically linked, runs");
    let file = Cmd::new("file").arg(&bin).read()?;
    if !(file.contains("statically linked") || file.contains("static-pie linked")) {
        return Err(format!("{} is not static: {file}", bin.display()).into());
    }
    let version = Cmd::new(&bin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(r#"{"cniVersion":"1.0.0"}"#)
        .read()?;
    if !version.contains("supportedVersions") {
        return Err(format!("VERSION printed {version:?}").into());
    }
    println!("{} {}", bin.display(), version.trim());
    Ok(bin)
}

/// Entry point of `cargo xtask image`.
pub fn main(args: &[OsString]) -> Result {
    let mut build_image = true;
    for a in args {
        match a.to_str() {
            Some("--no-build-image") => build_image = false,
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("image: unknown argument {a:?}\n{USAGE}").into()),
        }
    }
    let bin = build_static()?;
    let root = workspace_root();
    let ctx = root.join("target/image");
    std::fs::create_dir_all(&ctx).context(|| format!("create {}", ctx.display()))?;
    std::fs::copy(&bin, ctx.join("cni-ebpf")).context(|| format!("stage {}", bin.display()))?;
    println!("staged {}", ctx.join("cni-ebpf").display());
    if !build_image {
        return Ok(());
    }
    let has_podman = Cmd::new("sh")
        .args(["-c", "command -v podman"])
        .quiet()
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_podman {
        println!(
            "\npodman is not installed: no image built. The binary and the build context are ready:\n  \
             podman build -f deploy/Containerfile -t {} target/image\n\
             (or `docker build` with the same arguments; `apt-get install podman` provides podman).",
            image_ref()
        );
        return Ok(());
    }
    sh::step("podman build");
    Cmd::new("podman")
        .args(["build", "-f"])
        .arg(root.join("deploy/Containerfile"))
        .args(["-t", &image_ref()])
        .arg(&ctx)
        .run()
}
