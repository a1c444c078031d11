// The command that builds the eBPF object (`cni-ebpf-bpf`) for
// `bpfel-unknown-none`: used by build.rs and, for the live-upgrade test's
// variant object, by the test harness (both `include!` this file).
//
// The host toolchain (rustup stable) has no `core` for the BPF target and no
// `rust-src`, so the build uses Debian's rustc (`rustc-web`, with the
// prebuilt BPF `core` from `libstd-rust-web-dev-bpf`) and `bpf-linker`;
// `cargo xtask setup` installs both. The outer cargo's variables are cleared
// so they do not leak into this build.

/// Debian's rustc with a BPF `core`.
const BPF_RUSTC: &str = "/usr/bin/rustc";
/// Debian's cargo.
const BPF_CARGO: &str = "/usr/bin/cargo";

/// `cargo build` of `<root>/cni-ebpf-bpf` into `target_dir` with `features`;
/// the object lands at [`bpf_object_path`].
fn bpf_build_command(
    root: &std::path::Path,
    target_dir: &std::path::Path,
    features: &str,
) -> std::process::Command {
    use std::{env, path::PathBuf};
    for tool in [BPF_RUSTC, BPF_CARGO] {
        if !std::path::Path::new(tool).exists() {
            panic!("{tool} is missing: run `cargo xtask setup` to install the eBPF toolchain (Debian rustc-web, bpf-linker)");
        }
    }
    let mut path = env::var_os("PATH").unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into()))
    {
        let bin = PathBuf::from(home).join("bin");
        path = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))).expect("PATH");
    }
    let mut cmd = std::process::Command::new(BPF_CARGO);
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
    cmd.current_dir(root.join("cni-ebpf-bpf"))
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
        .arg(target_dir);
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    cmd
}

/// Where [`bpf_build_command`] leaves the object.
fn bpf_object_path(target_dir: &std::path::Path) -> std::path::PathBuf {
    target_dir.join("bpfel-unknown-none/release/cni-ebpf-bpf")
}
