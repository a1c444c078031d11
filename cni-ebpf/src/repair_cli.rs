//! `cni-ebpf status` and `cni-ebpf repair`: operator front ends for CNI
//! STATUS and for the repair of recorded attachments (commands/repair.rs).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::datapath::Datapath;

/// Where `status` and `repair` find the node's settings.
#[derive(clap::Args)]
pub struct ConfArgs {
    /// bpffs directory the plugin pins into [default: the config's
    /// `pinPath`, else /sys/fs/bpf/cni-ebpf].
    #[arg(long)]
    pin_path: Option<PathBuf>,
    /// State directory [default: the config's `stateDir`, else
    /// /var/lib/cni/cni-ebpf].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Network config or conflist whose `cni-ebpf` entry gives the uplinks,
    /// cgroup, attach mode and IPAM (for example
    /// /etc/cni/net.d/10-cni-ebpf.conflist); without it, the defaults.
    #[arg(long)]
    conf: Option<PathBuf>,
}

impl ConfArgs {
    /// The network config these arguments describe.
    pub(crate) fn net_conf(&self) -> Result<(crate::config::NetConf, Value), String> {
        let mut c = match &self.conf {
            Some(p) => {
                let raw = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let v: Value = serde_json::from_slice(&raw)
                    .map_err(|e| format!("{}: not JSON: {e}", p.display()))?;
                crate::config::plugin_conf(&v)
                    .ok_or_else(|| format!("{}: no plugin of type \"cni-ebpf\"", p.display()))?
            }
            None => json!({"cniVersion": "1.1.0", "name": "cni-ebpf", "type": "cni-ebpf"}),
        };
        if let Some(p) = &self.pin_path {
            c["pinPath"] = p.display().to_string().into();
        }
        if let Some(p) = &self.state_dir {
            c["stateDir"] = p.display().to_string().into();
        }
        let conf = crate::config::NetConf::parse(c.to_string().as_bytes(), "ADD")
            .map_err(|e| e.to_string())?;
        Ok((conf, c))
    }
}

/// `cni-ebpf status`: prints `ready`, or the code and message STATUS would
/// return.
pub fn status(a: &ConfArgs) -> i32 {
    let conf = match a.net_conf() {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("cni-ebpf status: {e}");
            return 2;
        }
    };
    match crate::commands::status::exec(&conf) {
        Ok(()) => {
            println!("ready");
            0
        }
        Err(e) => {
            println!("not ready (code {}): {}", e.code, e.msg);
            if !e.details.is_empty() {
                println!("  {}", e.details);
            }
            1
        }
    }
}

/// `cni-ebpf repair`: loads the data path if needed and repairs every
/// recorded attachment onto it, then prints what it did.
pub fn repair(a: &ConfArgs) -> i32 {
    let (conf, raw) = match a.net_conf() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cni-ebpf repair: {e}");
            return 2;
        }
    };
    if let Some(Ok((file, level))) = raw.as_object().map(crate::config::log_settings) {
        crate::log::init(file.as_deref(), level);
        crate::log::set_prefix("repair".to_string());
    }
    let mut load = None;
    let opened = Datapath::open_or_load(
        &conf.pin_path,
        &conf.state_dir,
        conf.nat_map_entries,
        &mut |dp, l| {
            for m in &l.migrated {
                println!("{m}");
            }
            load = Some(crate::commands::repair::run(dp, &conf));
        },
    );
    let dp = match opened {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!(
                "cni-ebpf repair: loading the data path under {}: {}",
                conf.pin_path.display(),
                crate::cni::error::chain(&e)
            );
            return 1;
        }
    };
    // Already loaded: repair anyway (entries may have been removed, an old
    // program may still be attached somewhere).
    let r = load.unwrap_or_else(|| crate::commands::repair::run(&dp, &conf));
    for w in &r.restored {
        println!("restored {w}");
    }
    for w in &r.skipped {
        println!("skipped {w}");
    }
    for e in &r.errors {
        println!("error {e}");
    }
    println!(
        "{} restored, {} skipped, {} error(s)",
        r.restored.len(),
        r.skipped.len(),
        r.errors.len()
    );
    i32::from(!r.errors.is_empty())
}
