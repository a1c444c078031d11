//! The operator CLI: what the data path is doing, read from the pinned maps.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use serde_json::{json, Value};

use crate::{
    config::{DEFAULT_PIN_PATH, DEFAULT_STATE_DIR},
    datapath::Datapath,
    netlink::format_mac,
    state::Record,
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
    /// Show endpoints, their counters and the node-wide counters.
    Inspect {
        /// bpffs directory the plugin pins into (`pinPath` in the config).
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// State directory (`stateDir`), to name the container of each entry.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
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
        Cmd::Inspect {
            pin_path,
            state_dir,
            json,
        } => inspect(&pin_path, &state_dir, json),
        Cmd::Install(a) => crate::install::run_install(&a),
        Cmd::Uninstall(a) => crate::install::run_uninstall(&a),
        Cmd::Monitor {
            pin_path,
            state_dir,
            level,
            json,
            count,
        } => crate::monitor::run(&pin_path, &state_dir, level, json, count),
        Cmd::Reap { names } => i32::from(crate::reaper::reap(&names).is_err()),
    }
}

/// `container`/`ifname` of an owner tag, from the state records.
fn who(owners: &std::collections::HashMap<u64, Record>, owner: u64) -> (String, String) {
    owners
        .get(&owner)
        .map(|r| (r.container_id.clone(), r.ifname.clone()))
        .unwrap_or_default()
}

fn inspect(pin_path: &std::path::Path, state_dir: &std::path::Path, json: bool) -> i32 {
    let owners = crate::state::owners(state_dir);
    let dp = Datapath::layout(pin_path);
    let entries = match dp.endpoint_entries() {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "cannot read the data path under {}: {}",
                pin_path.display(),
                crate::cni::error::chain(&e)
            );
            return 1;
        }
    };
    let counters = dp.counters().unwrap_or_default();
    let ports: Vec<Value> = dp
        .port_entries()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            serde_json::json!({
                "protocol": p.protocol,
                "hostIP": p.host_ip.map(|h| h.to_string()).unwrap_or_default(),
                "hostPort": p.host_port,
                "podIP": p.pod_ip.to_string(),
                "containerPort": p.container_port,
                "owner": format!("{:016x}", p.owner),
                "container": who(&owners, p.owner).0,
            })
        })
        .collect();
    let nat: Vec<Value> = dp
        .nat_entries()
        .unwrap_or_default()
        .iter()
        .filter(|n| n.live)
        .map(|n| {
            let (container, ifname) = who(&owners, n.owner);
            json!({
                "kind": n.kind, "scope": n.scope, "proto": crate::datapath::proto_name(n.proto),
                "from": format!("{} -> {}", n.from.0, n.from.1),
                "to": format!("{} -> {}", n.to.0, n.to.1),
                "owner": format!("{:016x}", n.owner), "container": container, "ifname": ifname,
            })
        })
        .collect();
    if json {
        let eps: Vec<Value> = entries
            .iter()
            .map(|e| {
                let st = dp.endpoint_stats(e.info.ifindex).unwrap_or_default();
                json!({
                    "ip": e.ip.to_string(), "ifindex": e.info.ifindex, "mac": format_mac(&e.info.mac),
                    "owner": format!("{:016x}", e.info.owner), "container": who(&owners, e.info.owner).0,
                    "masquerade": e.info.flags & cni_ebpf_common::EP_FLAG_MASQ != 0,
                    "fromPackets": st.from_packets, "fromBytes": st.from_bytes,
                    "toPackets": st.to_packets, "toBytes": st.to_bytes, "dropSpoofed": st.drop_spoofed,
                    "translated": st.translated, "dropNat": st.drop_nat,
                })
            })
            .collect();
        let ifaces: Vec<Value> = dp
            .iface_entries()
            .unwrap_or_default()
            .iter()
            .map(|(ifindex, i)| {
                json!({
                    "ifindex": ifindex, "mac": format_mac(&i.mac),
                    "owner": format!("{:016x}", i.owner), "container": who(&owners, i.owner).0,
                })
            })
            .collect();
        let c: serde_json::Map<String, Value> = counters
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        println!(
            "{}",
            json!({"endpoints": eps, "interfaces": ifaces, "portMappings": ports, "nat": nat, "counters": c})
        );
        return 0;
    }
    println!(
        "{:<40} {:>7} {:<17} {:<16} {:>10} {:>10} {:>8}",
        "ENDPOINT", "IFINDEX", "MAC", "OWNER", "FROM_PKTS", "TO_PKTS", "SPOOFED"
    );
    for e in &entries {
        let st = dp.endpoint_stats(e.info.ifindex).unwrap_or_default();
        println!(
            "{:<40} {:>7} {:<17} {:016x} {:>10} {:>10} {:>8}",
            e.ip.to_string(),
            e.info.ifindex,
            format_mac(&e.info.mac),
            e.info.owner,
            st.from_packets,
            st.to_packets,
            st.drop_spoofed
        );
    }
    println!();
    println!(
        "{:<5} {:<40} {:>8} -> {:<40} {:>6} {:<16}",
        "PROTO", "HOST_IP", "HOSTPORT", "POD_IP", "PORT", "OWNER"
    );
    for p in &ports {
        println!(
            "{:<5} {:<40} {:>8} -> {:<40} {:>6} {:<16}",
            p["protocol"].as_str().unwrap_or(""),
            if p["hostIP"] == "" {
                "*"
            } else {
                p["hostIP"].as_str().unwrap_or("")
            },
            p["hostPort"],
            p["podIP"].as_str().unwrap_or(""),
            p["containerPort"],
            p["owner"].as_str().unwrap_or("")
        );
    }
    println!();
    println!(
        "{:<16} {:<6} {:<5} {:<50} => {:<50} CONTAINER",
        "NAT", "SCOPE", "PROTO", "FLOW", "BECOMES"
    );
    for n in &nat {
        println!(
            "{:<16} {:<6} {:<5} {:<50} => {:<50} {}",
            n["kind"].as_str().unwrap_or(""),
            n["scope"].as_str().unwrap_or(""),
            n["proto"].as_str().unwrap_or(""),
            n["from"].as_str().unwrap_or(""),
            n["to"].as_str().unwrap_or(""),
            n["container"].as_str().unwrap_or("")
        );
    }
    println!();
    for (k, v) in counters {
        println!("{k:<24} {v}");
    }
    0
}
