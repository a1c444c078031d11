//! `cni-ebpf install` and `cni-ebpf uninstall`: putting the plugin on a node
//! (from a DaemonSet init container, or by hand) and taking it off again.
//!
//! Install writes the binary and the conflist the way flannel's install-cni
//! does: a temporary file in the target directory, fsync, rename. The runtime
//! therefore sees either the old file or the new one, never a half-written
//! one, and a running plugin keeps its old binary (no ETXTBSY).

use std::{
    fs::File,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use crate::{
    cni::error::chain,
    config::{NetConf, DEFAULT_PIN_PATH, DEFAULT_STATE_DIR},
};

/// Name of the binary in the CNI bin directory (the conflist's `type`).
pub const PLUGIN_TYPE: &str = "cni-ebpf";
/// Default file name of the conflist: sorts before flannel's
/// `10-flannel.conflist`, and the runtime uses the first file by name.
pub const DEFAULT_CONFLIST_NAME: &str = "10-cni-ebpf.conflist";

/// Arguments of `cni-ebpf install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// CNI binary directory to copy this binary into.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// CNI configuration directory to write the conflist into.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// Conflist to install (checked first); default: flannel mode, one
    /// `cni-ebpf` entry reading `/run/flannel/subnet.env`.
    #[arg(long)]
    pub conflist: Option<PathBuf>,
    /// File name of the conflist in the configuration directory.
    #[arg(long, default_value = DEFAULT_CONFLIST_NAME)]
    pub conflist_name: String,
    /// Also load and pin the eBPF programs and maps under this bpffs
    /// directory (`pinPath`), so the first ADD does not pay for the verifier
    /// and an upgrade loads the new programs at rollout.
    #[arg(long)]
    pub load_pin_path: Option<PathBuf>,
    /// State directory (`stateDir`) for the load lock, with --load-pin-path.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// Arguments of `cni-ebpf uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// CNI binary directory the plugin was installed into.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// CNI configuration directory holding the conflist.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// File name of the conflist in the configuration directory.
    #[arg(long, default_value = DEFAULT_CONFLIST_NAME)]
    pub conflist_name: String,
    /// bpffs directory the plugin pins into (`pinPath` in the config).
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// State directory (`stateDir` in the config).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// Errors of install and uninstall.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The conflist is not one the runtime and the plugin would accept.
    #[error("conflist {path}: {msg}")]
    Conflist {
        /// Where it came from.
        path: String,
        /// What is wrong, naming the key.
        msg: String,
    },
    /// A path argument that must not be used.
    #[error("{what} {path:?}: {why}")]
    BadPath {
        /// Which argument.
        what: &'static str,
        /// Value.
        path: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// Taking the data path off the node failed.
    #[error("data path")]
    Datapath(#[source] Box<crate::datapath::BpfError>),
    /// Loading the data path (and repairing the recorded attachments onto
    /// it) failed.
    #[error("loading the data path")]
    Load(#[source] Box<crate::cni::CniError>),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The conflist installed when none is given: flannel mode (the pod subnet,
/// MTU and masquerade setting from flanneld's `subnet.env`), hostPorts from
/// the runtime.
pub fn default_conflist() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "cni-ebpf",
        "plugins": [{
            "type": PLUGIN_TYPE,
            "subnetFile": "/run/flannel/subnet.env",
            // As kube-flannel's conflist: flannel's file gives routes to
            // the flannel network only.
            "isDefaultGateway": true,
            "hairpinMode": true,
            "capabilities": {"portMappings": true},
        }],
    })
}

/// Checks a conflist as libcni reads it, and each `cni-ebpf` entry with the
/// plugin's own parser (with `name` and `cniVersion` filled in from the list,
/// as libcni does before calling a plugin).
pub fn check_conflist(raw: &[u8], origin: &str) -> Result<Value, InstallError> {
    let bad = |msg: String| InstallError::Conflist {
        path: origin.to_string(),
        msg,
    };
    let list: Value =
        serde_json::from_slice(raw).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let obj = list
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    for key in ["cniVersion", "name"] {
        if !obj.get(key).is_some_and(Value::is_string) {
            return Err(bad(format!("{key:?} is missing or not a string")));
        }
    }
    let plugins = obj
        .get("plugins")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("\"plugins\" is missing or not a non-empty array".into()))?;
    let mut ours = 0;
    for (i, p) in plugins.iter().enumerate() {
        let ty = p.get("type").and_then(Value::as_str);
        let Some(ty) = ty.filter(|t| !t.is_empty()) else {
            return Err(bad(format!("plugins[{i}].type is missing or not a string")));
        };
        if ty != PLUGIN_TYPE {
            continue;
        }
        ours += 1;
        let mut conf = p.clone();
        conf["name"] = obj["name"].clone();
        conf["cniVersion"] = obj["cniVersion"].clone();
        // Offline: flanneld's subnet.env may not exist before the node is up.
        NetConf::parse_offline(conf.to_string().as_bytes())
            .map_err(|e| bad(format!("plugins[{i}]: {e}")))?;
    }
    if ours == 0 {
        return Err(bad(format!("no plugin of type {PLUGIN_TYPE:?}")));
    }
    Ok(list)
}

/// Writes `data` to `dir/name` atomically with `mode`: a temporary file in the
/// same directory (so the rename stays on one filesystem), fsync, rename,
/// fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), InstallError> {
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let target = dir.join(name);
    let res = (|| {
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(data).map_err(io("write", &tmp))?;
        // The umask may have narrowed the mode given to open().
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &target).map_err(io("rename into place", &target))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// `cni-ebpf install`: copies this binary and writes the conflist.
pub fn install(a: &InstallArgs) -> Result<(), InstallError> {
    if a.conflist_name.contains('/') || a.conflist_name.starts_with('.') {
        return Err(InstallError::BadPath {
            what: "--conflist-name",
            path: a.conflist_name.clone(),
            why: "must be a plain file name",
        });
    }
    // Validate before changing anything.
    let list = match &a.conflist {
        Some(p) => {
            let raw = std::fs::read(p).map_err(io("read conflist", p))?;
            check_conflist(&raw, &p.display().to_string())?
        }
        None => check_conflist(default_conflist().to_string().as_bytes(), "(default)")?,
    };
    let exe = Path::new("/proc/self/exe");
    let bin = std::fs::read(exe).map_err(io("read own binary", exe))?;
    write_atomic(&a.bin_dir, PLUGIN_TYPE, &bin, 0o755)?;
    println!(
        "installed {} ({} bytes)",
        a.bin_dir.join(PLUGIN_TYPE).display(),
        bin.len()
    );
    let mut text = serde_json::to_vec_pretty(&list).map_err(|e| InstallError::Conflist {
        path: a.conf_dir.join(&a.conflist_name).display().to_string(),
        msg: e.to_string(),
    })?;
    text.push(b'\n');
    write_atomic(&a.conf_dir, &a.conflist_name, &text, 0o644)?;
    println!("installed {}", a.conf_dir.join(&a.conflist_name).display());
    if let Some(pin) = &a.load_pin_path {
        // The conflist's own entry (uplinks, cgroup, attach mode), on the
        // given pin path and state dir: an upgrade's new programs replace
        // the old ones on every recorded veth, the uplinks and the hooks.
        let mut c = crate::config::plugin_conf(&list).expect("checked: has a cni-ebpf entry");
        c["pinPath"] = pin.display().to_string().into();
        c["stateDir"] = a.state_dir.display().to_string().into();
        // In flannel mode the entry needs flanneld's subnet file, which an
        // init container may run before; the node-wide keys are enough here.
        let conf = NetConf::parse(c.to_string().as_bytes(), "ADD").or_else(|_| {
            let mut node = serde_json::Map::new();
            for k in [
                "cniVersion",
                "name",
                "type",
                "pinPath",
                "stateDir",
                "cgroupPath",
                "attachMode",
                "uplinks",
            ] {
                if let Some(v) = c.get(k) {
                    node.insert(k.into(), v.clone());
                }
            }
            NetConf::parse(Value::Object(node).to_string().as_bytes(), "ADD")
                .map_err(|e| InstallError::Load(Box::new(e)))
        })?;
        crate::commands::repair::open(&conf).map_err(|e| InstallError::Load(Box::new(e)))?;
        println!("loaded the data path under {}", pin.display());
    }
    Ok(())
}

/// Removes a file; a missing one is fine.
fn remove_file(p: &Path) -> Result<bool, InstallError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", p)(e)),
    }
}

/// `cni-ebpf uninstall`: takes from the node (the calling network namespace
/// and the given directories) everything the plugin left there. Keeps going
/// past errors and returns them all; a second run finds nothing to do.
pub fn uninstall(a: &UninstallArgs) -> Vec<InstallError> {
    let mut errors = Vec::new();
    for (what, p) in [("--pin-path", &a.pin_path), ("--state-dir", &a.state_dir)] {
        if !p.is_absolute() || p.parent().is_none_or(|d| d.parent().is_none()) {
            return vec![InstallError::BadPath {
                what,
                path: p.display().to_string(),
                why: "must be an absolute path below a top-level directory",
            }];
        }
    }

    let r = crate::datapath::remove_node(&a.pin_path);
    for d in &r.filtered_devices {
        println!("detached filters from {d}");
    }
    for d in &r.pin_dirs {
        println!("removed pins {}", d.display());
    }
    if r.unmounted > 0 {
        println!("unmounted bpffs {}", a.pin_path.display());
    }
    if let Some((lo, hi)) = r.unreserved {
        println!("unreserved ports {lo}-{hi}");
    }
    errors.extend(
        r.errors
            .into_iter()
            .map(|e| InstallError::Datapath(Box::new(e))),
    );

    match std::fs::remove_dir_all(&a.state_dir) {
        Ok(()) => println!("removed {}", a.state_dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(io("remove state dir", &a.state_dir)(e)),
    }

    // The conflist only if it is ours: a wrong --conflist-name must not take
    // another network's config away.
    let conf = a.conf_dir.join(&a.conflist_name);
    let ours = match std::fs::read(&conf) {
        Ok(raw) => serde_json::from_slice::<Value>(&raw).map_or(true, |v| {
            v["plugins"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["type"] == PLUGIN_TYPE))
        }),
        Err(_) => true,
    };
    if ours {
        match remove_file(&conf) {
            Ok(true) => println!("removed {}", conf.display()),
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    } else {
        errors.push(InstallError::Conflist {
            path: conf.display().to_string(),
            msg: format!("has no plugin of type {PLUGIN_TYPE:?}; left in place"),
        });
    }

    let bin = a.bin_dir.join(PLUGIN_TYPE);
    match remove_file(&bin) {
        Ok(true) => println!("removed {}", bin.display()),
        Ok(false) => {}
        Err(e) => errors.push(e),
    }
    errors
}

/// Runs install; returns the exit code.
pub fn run_install(a: &InstallArgs) -> i32 {
    match install(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cni-ebpf install: {}", chain(&e));
            1
        }
    }
}

/// Runs uninstall; returns the exit code.
pub fn run_uninstall(a: &UninstallArgs) -> i32 {
    let errors = uninstall(a);
    for e in &errors {
        eprintln!("cni-ebpf uninstall: {}", chain(e));
    }
    i32::from(!errors.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_conflist_passes_the_check() {
        check_conflist(default_conflist().to_string().as_bytes(), "default").unwrap();
    }

    #[test]
    fn bad_conflists_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            ("[]", "not a JSON object"),
            (r#"{"name":"n","plugins":[]}"#, "cniVersion"),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "plugins"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "plugins[0].type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#,
                "no plugin of type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"cni-ebpf","mtu":1}]}"#,
                "plugins[0]: invalid mtu",
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"cni-ebpf"}]}"#,
                "incompatible",
            ),
        ];
        for (raw, needle) in cases {
            let e = check_conflist(raw.as_bytes(), "x").unwrap_err().to_string();
            assert!(e.contains(needle), "{raw}: {e}");
        }
    }

    #[test]
    fn write_atomic_replaces_with_mode() {
        let d = std::env::temp_dir().join(format!("cni-ebpf-wa-{}", std::process::id()));
        write_atomic(&d, "f", b"one", 0o755).unwrap();
        write_atomic(&d, "f", b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"two");
        let mode = std::fs::metadata(d.join("f")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
