//! cni-ebpf as a library: the modules of the plugin binary (`main.rs` is a
//! thin entry point over them). A library so that fuzz targets (`fuzz/`) and
//! property tests can call the parsers and the allocator directly; it is not
//! a stable API.

pub mod agent;
pub mod callstats;
pub mod cli;
pub mod cni;
pub mod commands;
pub mod config;
pub mod datapath;
pub mod failpoint;
pub mod flannel;
pub mod inspect;
pub mod install;
pub mod ipam;
pub mod lockfile;
pub mod log;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod private;
pub mod reaper;
pub mod repair_cli;
pub mod rollback;
pub mod state;
