//! Project tasks: `cargo xtask setup | test | demo | bench | image | fuzz` (std only).

mod bench;
mod demo;
mod fuzz;
mod image;
mod setup;
mod sh;
mod test;

use std::ffi::OsString;

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  setup [--dry-run]                 install/check the toolchain and tools (root)
  test [--dry-run] [-- ARGS...]     setup, fmt --check, clippy -D warnings, cargo test --workspace ARGS (root)
  demo                              ADD/DEL two pods in throwaway namespaces and talk to them (root)
  bench [--quick] [--n 1,100,...]   side by side with the reference plugins at growing pod counts (root)
  image [--no-build-image]          static release binary, checked, and the FROM scratch image (podman if present)
  fuzz [--secs N] [--target NAME]   bounded cargo-fuzz runs of the config/env/IPAM parsers (installs nightly, cargo-fuzz)
  help                              this text

`cargo xtask <command> --help` describes a command.";

/// Puts `~/.cargo/bin` first on PATH so that `cargo`, `rustc`, `rustup` and
/// `bpf-linker` in every child are rustup's, never Debian's `/usr/bin` ones
/// (rustc-web installs `/usr/bin/rustc` and `/usr/bin/cargo`).
fn rustup_first_on_path() {
    let bin = sh::cargo_home().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let rest = std::env::split_paths(&path).filter(|p| *p != bin);
    if let Ok(joined) = std::env::join_paths(std::iter::once(bin.clone()).chain(rest)) {
        if bin.is_dir() {
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var("PATH", joined);
        }
    }
}

fn main() {
    rustup_first_on_path();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let res = match args.first().map(|a| a.to_str()) {
        Some(Some("setup")) => setup::main(rest),
        Some(Some("test")) => test::main(rest),
        Some(Some("demo")) => demo::main(rest),
        Some(Some("bench")) => bench::main(rest),
        Some(Some("image")) => image::main(rest),
        Some(Some("fuzz")) => fuzz::main(rest),
        Some(Some("help" | "-h" | "--help")) => {
            println!("{USAGE}");
            Ok(())
        }
        None => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
        Some(_) => Err(format!("unknown command {:?}\n{USAGE}", args[0]).into()),
    };
    if let Err(e) = res {
        eprintln!("xtask: error: {e}");
        std::process::exit(1);
    }
}
