//! cni-ebpf: a CNI plugin whose data plane is eBPF.
//!
//! Run by a container runtime with `CNI_COMMAND` set, it is the plugin; run by
//! an operator without it, it is a small CLI (`cni-ebpf inspect`).

use std::io::{Read, Write};

use cni_ebpf::{
    cli,
    cni::{code, version, CniEnv, CniError, Command},
    commands, config,
    config::NetConf,
    log,
};

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
/// Logs one summary line for it (command, container, ifname, result, time).
fn run_plugin() -> (serde_json::Value, bool) {
    let started = std::time::Instant::now();
    let mut raw = Vec::new();
    // Read one byte past the limit so an oversize config is detected, not truncated.
    let read = std::io::stdin()
        .take(config::MAX_STDIN as u64 + 1)
        .read_to_end(&mut raw);
    let doc = serde_json::from_slice::<serde_json::Value>(&raw).ok();
    // Read as the parser reads them (Go's key matching), so an error is
    // reported in the version the runtime asked for and logged under the
    // network's name however the keys are spelled.
    let top = doc
        .as_ref()
        .and_then(|v| v.as_object())
        .map(|o| config::ConfObject::fold(o.clone()));
    let top_str = |k: config::Key| {
        top.as_ref()
            .and_then(|o| o.get(k))
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    let cni_version = top_str(config::Key::CniVersion);
    // Logging first, from the config's logFile/logLevel where they can be
    // read at all, so that a config that fails to parse is logged too.
    let (log_file, level) = doc
        .as_ref()
        .and_then(|v| v.as_object())
        .and_then(|o| config::log_settings(o).ok())
        .unwrap_or_else(|| (Some(config::DEFAULT_LOG_FILE.into()), log::Level::default()));
    log::init(log_file.as_deref(), level);
    if let Some(Ok(f)) = doc
        .as_ref()
        .and_then(|v| v.as_object())
        .map(config::log_format)
    {
        log::set_format(f);
    }
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let (command, container, ifname) = (
        var("CNI_COMMAND"),
        var("CNI_CONTAINERID"),
        var("CNI_IFNAME"),
    );
    log::set_prefix(format!(
        "{command} {} {container}/{ifname}",
        top_str(config::Key::Name).as_deref().unwrap_or("-")
    ));

    let res = read
        .map_err(|e| {
            CniError::new(code::IO, "cannot read the network config from stdin")
                .with_details(e.to_string())
        })
        .and_then(|_| dispatch(&raw, cni_version.as_deref()));
    if let Err(e) = &res {
        if !e.details.is_empty() {
            log::write(log::Level::Error, format_args!("{e}"));
        }
    }
    let took = started.elapsed();
    log::summary(
        &command,
        &container,
        &ifname,
        res.as_ref().map(|_| ()),
        took,
    );
    // For the agent's metrics (cni_ebpf_cni_calls_total and latencies).
    cni_ebpf::callstats::record(
        &cni_ebpf::callstats::state_dir_of(doc.as_ref()),
        &command,
        res.is_ok(),
        took,
    );
    match res {
        Ok(v) => (v, true),
        Err(e) => {
            // Errors are reported in the config's version if it has a supported one.
            let v = cni_version
                .filter(|v| version::SUPPORTED.contains(&v.as_str()))
                .unwrap_or_else(|| version::LATEST.to_string());
            (e.to_json(&v), false)
        }
    }
}

/// Validates the environment and the config and runs the command: the
/// result document (null for commands that print nothing on success).
fn dispatch(raw: &[u8], cni_version: Option<&str>) -> Result<serde_json::Value, CniError> {
    let env = CniEnv::from_lookup(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(commands::version::exec(cni_version));
    }
    let conf = NetConf::parse(raw, env.command.as_str())?;
    let none = |_| serde_json::Value::Null;
    match env.command {
        Command::Add => commands::add::exec(&env, &conf),
        // DEL, CHECK, GC and STATUS print nothing on success.
        Command::Del => commands::del::exec(&env, &conf).map(none),
        Command::Check => commands::check::exec(&env, &conf).map(none),
        Command::Gc => commands::gc::exec(&env, &conf).map(none),
        Command::Status => commands::status::exec(&conf).map(none),
        Command::Version => unreachable!("handled above"),
    }
}
