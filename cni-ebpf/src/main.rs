//! cni-ebpf: a CNI plugin whose data plane is eBPF.
//!
//! Run by a container runtime with `CNI_COMMAND` set, it is the plugin; run by
//! an operator without it, it is a small CLI (`cni-ebpf inspect`).

mod cli;
mod cni;
mod commands;
mod config;
mod datapath;
mod failpoint;
mod flannel;
mod inspect;
mod install;
mod ipam;
mod lockfile;
mod log;
mod netlink;
mod netns;
mod private;
mod reaper;
mod state;

use std::io::{Read, Write};

use cni::{code, version, CniEnv, CniError, Command};
use config::NetConf;

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        std::process::exit(cli::run());
    }
    let (out, ok) = run_plugin();
    if !out.is_null() {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, &out);
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
    }
    std::process::exit(if ok { 0 } else { 1 });
}

/// One plugin invocation: the document for stdout and whether it succeeded.
fn run_plugin() -> (serde_json::Value, bool) {
    let mut raw = Vec::new();
    // Read one byte past the limit so an oversize config is detected, not truncated.
    let read = std::io::stdin()
        .take(config::MAX_STDIN as u64 + 1)
        .read_to_end(&mut raw);
    let env = CniEnv::from_lookup(|k| std::env::var(k).ok());
    // The version errors are reported in: the config's if it has a supported one.
    let err_version = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|x| x.as_str())
                .map(str::to_string)
        })
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_string());
    let fail = |e: CniError| {
        log::write("ERROR", format_args!("{e}"));
        (e.to_json(&err_version), false)
    };
    if let Err(e) = read {
        return fail(
            CniError::new(code::IO, "cannot read the network config from stdin")
                .with_details(e.to_string()),
        );
    }
    let env = match env {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
            });
        return (commands::version::exec(requested.as_deref()), true);
    }
    let conf = match NetConf::parse(&raw, env.command.as_str()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    log::init(
        conf.log_file.as_deref(),
        format!(
            "{} {} {}/{}",
            env.command.as_str(),
            conf.name,
            env.container_id,
            env.ifname
        ),
    );
    let started = std::time::Instant::now();
    let res = match env.command {
        Command::Add => commands::add::exec(&env, &conf).map(Some),
        Command::Del => commands::del::exec(&env, &conf).map(|_| None),
        Command::Check => commands::check::exec(&env, &conf).map(|_| None),
        Command::Gc => commands::gc::exec(&env, &conf).map(|_| None),
        Command::Status => commands::status::exec(&conf).map(|_| None),
        Command::Version => unreachable!("handled above"),
    };
    log::write(
        "INFO",
        format_args!(
            "{} finished in {:?}",
            env.command.as_str(),
            started.elapsed()
        ),
    );
    match res {
        Ok(Some(v)) => (v, true),
        // DEL, CHECK, GC and STATUS print nothing on success.
        Ok(None) => (serde_json::Value::Null, true),
        Err(e) => fail(e),
    }
}
