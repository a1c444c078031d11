//! The operator CLI (clap front end); each subcommand lives in its own module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    config::{DEFAULT_PIN_PATH, DEFAULT_STATE_DIR},
    inspect,
};

#[derive(Parser)]
#[command(
    name = "cni-ebpf",
    version,
    about = "eBPF CNI plugin; run with CNI_COMMAND set by a container runtime, or use these subcommands"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what the data path holds: endpoints, hostPort mappings,
    /// translations, counters (all four without a view), or program
    /// attachments (`links`). Reads pinned maps and state only.
    Inspect {
        #[command(subcommand)]
        view: Option<inspect::View>,
        #[command(flatten)]
        opts: inspect::Opts,
    },
    /// Say whether the plugin can serve ADD (what CNI STATUS reports):
    /// pins, recorded attachments, IPAM. Exit 0 when ready.
    Status(crate::repair_cli::ConfArgs),
    /// Re-create the pinned programs and maps if they are gone, re-attach
    /// this build's programs to the host veth of every recorded attachment,
    /// the uplinks and the socket hooks, and restore every endpoint and
    /// hostPort mapping from the state records.
    Repair(crate::repair_cli::ConfArgs),
    /// Copy this binary into the CNI bin directory and write the conflist
    /// (atomically; for a DaemonSet init container).
    Install(crate::install::InstallArgs),
    /// Remove from this node what the plugin left: filters, pins, state,
    /// conflist and binary.
    Uninstall(crate::install::UninstallArgs),
    /// Stream data-path events (drops with their reason, new translations)
    /// until interrupted.
    Monitor {
        /// bpffs directory the plugin pins into (`pinPath` in the config).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// State directory (`stateDir`), to name the container of each event.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// What to report.
        #[arg(long, value_enum, default_value = "drops")]
        level: crate::monitor::Level,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Run the node agent (the DaemonSet's main container): keep node
    /// addresses and uplinks current, repair lost pins, prune dead
    /// translations, serve Prometheus metrics and health probes. Until
    /// SIGTERM; the data path is left as it is.
    Agent(crate::agent::AgentArgs),
    /// Deletes retired veths (started by DEL; see reaper.rs).
    #[command(hide = true)]
    Reap {
        /// Tombstone names.
        names: Vec<String>,
    },
}

/// Runs the CLI; returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inspect { view, opts } => inspect::run(view, &opts),
        Cmd::Status(a) => crate::repair_cli::status(&a),
        Cmd::Repair(a) => crate::repair_cli::repair(&a),
        Cmd::Install(a) => crate::install::run_install(&a),
        Cmd::Uninstall(a) => crate::install::run_uninstall(&a),
        Cmd::Monitor {
            pin_path,
            state_dir,
            level,
            json,
            count,
        } => crate::monitor::run(&pin_path, &state_dir, level, json, count),
        Cmd::Agent(a) => crate::agent::run(&a),
        Cmd::Reap { names } => i32::from(crate::reaper::reap(&names).is_err()),
    }
}
