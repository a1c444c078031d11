//! Builds the eBPF object (`cni-ebpf-bpf`) for `bpfel-unknown-none` and leaves
//! it in OUT_DIR for `include_bytes!`.
//!
//! The host toolchain (rustup stable) has no `core` for the BPF target and no
//! `rust-src`, so the inner build uses Debian's rustc (`rustc-web`, with the
//! prebuilt BPF `core` from `libstd-rust-web-dev-bpf`) and `bpf-linker`;
//! `cargo xtask setup` installs both. The outer cargo's variables are cleared so
//! they do not leak into the inner build.

use std::{env, path::PathBuf, process::Command};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_CARGO: &str = "/usr/bin/cargo";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let bpf_dir = root.join("cni-ebpf-bpf");
    for p in [
        "cni-ebpf-bpf/src",
        "cni-ebpf-bpf/Cargo.toml",
        "cni-ebpf-bpf/Cargo.lock",
        "cni-ebpf-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=CNI_EBPF_BPF_FEATURES");

    for tool in [BPF_RUSTC, BPF_CARGO] {
        if !std::path::Path::new(tool).exists() {
            panic!("{tool} is missing: run `cargo xtask setup` to install the eBPF toolchain (Debian rustc-web, bpf-linker)");
        }
    }

    let target_dir = root.join("target").join("bpf");
    let mut path = env::var_os("PATH").unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into()))
    {
        let bin = PathBuf::from(home).join("bin");
        path = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))).expect("PATH");
    }
    let mut cmd = Command::new(BPF_CARGO);
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTUP")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.current_dir(&bpf_dir)
        .env("PATH", path)
        .env("RUSTC", BPF_RUSTC)
        // Debian's rustc is stable; the BPF target needs unstable flags.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir);
    if let Ok(features) = env::var("CNI_EBPF_BPF_FEATURES") {
        if !features.is_empty() {
            cmd.args(["--features", &features]);
        }
    }
    let status = cmd.status().expect("run the eBPF build");
    if !status.success() {
        panic!("building cni-ebpf-bpf failed ({status}); see the output above");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/cni-ebpf-bpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("cni-ebpf-bpf.o");
    std::fs::copy(&obj, &out).expect("copy the eBPF object to OUT_DIR");
}
