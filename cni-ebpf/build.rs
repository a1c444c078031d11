//! Builds the eBPF object (`cni-ebpf-bpf`) for `bpfel-unknown-none` and leaves
//! it in OUT_DIR for `include_bytes!` (the command is in bpf_build.rs).

use std::{env, path::PathBuf};

include!("bpf_build.rs");

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    for p in [
        "cni-ebpf-bpf/src",
        "cni-ebpf-bpf/Cargo.toml",
        "cni-ebpf-bpf/Cargo.lock",
        "cni-ebpf-common/src",
        "cni-ebpf/bpf_build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=CNI_EBPF_BPF_FEATURES");

    let target_dir = root.join("target").join("bpf");
    let features = env::var("CNI_EBPF_BPF_FEATURES").unwrap_or_default();
    let status = bpf_build_command(&root, &target_dir, &features)
        .status()
        .expect("run the eBPF build");
    if !status.success() {
        panic!("building cni-ebpf-bpf failed ({status}); see the output above");
    }
    let obj = bpf_object_path(&target_dir);
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("cni-ebpf-bpf.o");
    std::fs::copy(&obj, &out).expect("copy the eBPF object to OUT_DIR");
    // FNV-1a of 560 KB byte by byte is about 0.8 ms: done here once rather
    // than in every CNI call (datapath/pins.rs, object_hash).
    let bytes = std::fs::read(&out).expect("read the eBPF object");
    let mut h = cni_ebpf_common::Fnv1a::new();
    h.write(&bytes);
    println!("cargo:rustc-env=CNI_EBPF_OBJECT_HASH={:016x}", h.finish());
}
