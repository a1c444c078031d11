//! The operator CLI: what the data path is doing, read from the pinned maps.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{config::DEFAULT_PIN_PATH, datapath::Datapath, netlink::format_mac};

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
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the CLI; returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inspect { pin_path, json } => inspect(&pin_path, json),
    }
}

fn inspect(pin_path: &std::path::Path, json: bool) -> i32 {
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
    let ports: Vec<serde_json::Value> = dp
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
            })
        })
        .collect();
    if json {
        let eps: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let st = dp.endpoint_stats(e.info.ifindex).unwrap_or_default();
                serde_json::json!({
                    "ip": e.ip.to_string(), "ifindex": e.info.ifindex, "mac": format_mac(&e.info.mac),
                    "owner": format!("{:016x}", e.info.owner),
                    "fromPackets": st.from_packets, "fromBytes": st.from_bytes,
                    "toPackets": st.to_packets, "toBytes": st.to_bytes, "dropSpoofed": st.drop_spoofed,
                })
            })
            .collect();
        let c: serde_json::Map<String, serde_json::Value> = counters
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({"endpoints": eps, "portMappings": ports, "counters": c})
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
    for (k, v) in counters {
        println!("{k:<24} {v}");
    }
    0
}
