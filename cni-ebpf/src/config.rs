//! The network configuration read from stdin: the reference `bridge` plugin's
//! keys with their meanings, this plugin's own keys, `runtimeConfig`
//! capabilities and `prevResult`. Unknown keys are ignored, as the spec asks,
//! and keys match as Go's `encoding/json` matches them (exact name first, then
//! case-insensitively; see [`crate::cni::gojson`]): each object level is read
//! through a [`Fields`] list that names every key it reads.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::cni::{
    code,
    env::valid_id,
    gojson::{self, Fields, Object},
    version, CniError, CniResult, Dns,
};
use crate::ipam::host_local::{IpamKey, IpamObject};

crate::go_fields! {
    /// The network config's top-level keys: everything [`NetConf::parse`],
    /// [`log_settings`] and flannel interop read.
    pub enum Key {
        CniVersion = "cniVersion",
        Name = "name",
        Mode = "mode",
        Bridge = "bridge",
        IsGateway = "isGateway",
        IsDefaultGateway = "isDefaultGateway",
        ForceAddress = "forceAddress",
        Mtu = "mtu",
        HairpinMode = "hairpinMode",
        PromiscMode = "promiscMode",
        IpMasq = "ipMasq",
        AllowRouterMessages = "allowRouterMessages",
        Ipam = "ipam",
        Dns = "dns",
        RuntimeConfig = "runtimeConfig",
        PrevResult = "prevResult",
        PinPath = "pinPath",
        StateDir = "stateDir",
        AttachMode = "attachMode",
        Uplinks = "uplinks",
        NonMasqueradeCidrs = "nonMasqueradeCIDRs",
        SnatPortRange = "snatPortRange",
        NatMapEntries = "natMapEntries",
        CgroupPath = "cgroupPath",
        LogFile = "logFile",
        LogLevel = "logLevel",
        LogFormat = "logFormat",
        ValidAttachments = "cni.dev/valid-attachments",
        Attachments = "cni.dev/attachments",
        Flannel = "flannel",
        SubnetFile = "subnetFile",
    }
}

crate::go_fields! {
    /// `runtimeConfig`'s keys: the capabilities this plugin reads.
    pub enum RuntimeKey {
        PortMappings = "portMappings",
        Ips = "ips",
        Mac = "mac",
        Dns = "dns",
    }
}

/// The top-level object, folded.
pub type ConfObject = Object<Key>;

/// Largest config accepted on stdin. Real configs are a few KiB.
pub const MAX_STDIN: usize = 1 << 20;

/// How the pod is wired (also stored in the state record, as `bridge`,
/// `routed` or `chained`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Host veths enslaved to a Linux bridge, as the reference `bridge`.
    #[default]
    Bridge,
    /// No bridge: the pod's address is routed to its host veth (/32, /128),
    /// the pod's default route points at a link-local gateway on that veth.
    Routed,
    /// After another plugin that made the interfaces (e.g. `bridge`): attach
    /// programs to the host veth found in `prevResult`, as `portmap` would.
    Chained,
}

/// One `portMappings` entry (the `portmap` capability).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u32,
    /// Port in the pod.
    pub container_port: u32,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default = "default_proto")]
    pub protocol: String,
    /// Node address the mapping is limited to; empty means every node address.
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

fn default_proto() -> String {
    "tcp".into()
}

/// A `cni.dev/valid-attachments` entry (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name in the container.
    pub ifname: String,
}

/// The `dns` capability (CNI conventions): what the runtime puts in the
/// pod's resolv.conf. containerd's go-cni sends it as `Servers`, `Searches`,
/// `Options` (no JSON tags), matched as Go matches them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct RuntimeDns {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// Capability arguments from the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `portMappings`.
    pub port_mappings: Vec<PortMapping>,
    /// `ips`: requested addresses (CIDR or plain IP).
    pub ips: Vec<IpAddr>,
    /// `mac`: requested MAC of the container interface.
    pub mac: Option<String>,
    /// `dns`: parsed and checked, not used (Linux runtimes write resolv.conf
    /// themselves; the reference Linux plugins ignore it too).
    pub dns: RuntimeDns,
}

/// A parsed network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// Wiring mode (`mode`: `bridge` | `routed` | `chained`; default `bridge`,
    /// or `chained` when a `prevResult` is present).
    pub mode: Mode,
    /// `bridge`: bridge name (default `cni0`).
    pub bridge: String,
    /// `isGateway`: give the bridge the gateway address.
    pub is_gateway: bool,
    /// `isDefaultGateway`: also route the pod's default route via it (implies isGateway).
    pub is_default_gateway: bool,
    /// `forceAddress`: replace a different address already on the bridge.
    pub force_address: bool,
    /// `mtu` of the veth pair (and bridge); None = kernel default.
    pub mtu: Option<u32>,
    /// `hairpinMode` on the bridge port.
    pub hairpin_mode: bool,
    /// `promiscMode` on the bridge.
    pub promisc_mode: bool,
    /// `ipMasq`: masquerade traffic leaving the pod subnets.
    pub ip_masq: bool,
    /// `allowRouterMessages`: the network's pods may send router
    /// advertisements, ICMP/ICMPv6 redirects and DHCP/DHCPv6 server
    /// messages (routers, DHCP servers); dropped by default.
    pub allow_router_messages: bool,
    /// `ipam` object as given (passed to delegated plugins verbatim).
    pub ipam: Option<Value>,
    /// `ipam.type`.
    pub ipam_type: Option<String>,
    /// `dns`.
    pub dns: Dns,
    /// `runtimeConfig`.
    pub runtime: RuntimeConfig,
    /// `prevResult`, upgraded to the internal shape.
    pub prev_result: Option<CniResult>,
    /// `pinPath`: bpffs directory for programs, maps and links.
    pub pin_path: PathBuf,
    /// `stateDir`: per-attachment records.
    pub state_dir: PathBuf,
    /// `attachMode`: `netlink` (clsact + cls_bpf, default), `tcx`, or `auto`
    /// (TCX on 6.6+, else netlink).
    pub attach_mode: crate::datapath::AttachMode,
    /// `uplinks`: devices that get the node-edge programs (hostPort from
    /// outside, masquerade). None = the devices holding default routes;
    /// empty = none.
    pub uplinks: Option<Vec<String>>,
    /// `nonMasqueradeCIDRs`: destinations never masqueraded (besides the
    /// pod's own subnet and multicast).
    pub non_masquerade_cidrs: Vec<ipnet::IpNet>,
    /// `snatPortRange` (`"min-max"`): masquerade source ports, reserved
    /// against the node's own sockets.
    pub snat_ports: (u16, u16),
    /// `natMapEntries`: capacity of the `nat` LRU map (two entries per
    /// translated flow). Applied when the maps are created (the first ADD on
    /// a node, or `install --load`); a node whose maps exist keeps their size.
    pub nat_map_entries: u32,
    /// `cgroupPath`: cgroup v2 directory where the node-local socket hooks
    /// attach (default: the cgroup2 mount root); None = no socket hooks.
    pub cgroup_path: Option<PathBuf>,
    /// `cni.dev/valid-attachments` (or the older `cni.dev/attachments`) for GC.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `subnetFile` (or the default with `"flannel": true`): flanneld's
    /// `subnet.env`, already folded into the keys above.
    pub subnet_file: Option<PathBuf>,
    /// The raw bytes from stdin (for delegated IPAM plugins), with flannel's
    /// keys folded in.
    pub raw: Vec<u8>,
}

/// Default bpffs directory.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/cni-ebpf";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/cni-ebpf";
/// Default masquerade port range: above Linux's default ephemeral range
/// (32768-60999), so the node's own connections rarely want these ports.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);
/// Accepted `natMapEntries`: from a size a test can fill up to 16 Mi
/// entries (96 bytes of key and value each plus the kernel's per-element
/// overhead: a few GiB of kernel memory at the top).
pub const NAT_MAP_ENTRIES: std::ops::RangeInclusive<u64> = 256..=16_777_216;

/// Default log file.
pub const DEFAULT_LOG_FILE: &str = "/var/log/cni-ebpf.log";

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn get_bool(obj: &ConfObject, key: Key) -> Result<bool, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(format!(
            "invalid {}: {v} is not a boolean",
            key.name()
        ))),
    }
}

fn get_str(obj: &ConfObject, key: Key) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(format!(
            "invalid {}: {v} is not a string",
            key.name()
        ))),
    }
}

fn get_path(obj: &ConfObject, key: Key, default: &str) -> Result<PathBuf, CniError> {
    let p = get_str(obj, key)?.unwrap_or_else(|| default.to_string());
    absolute_path(key.name(), &p)
}

/// Decodes a value of the config with Go's key matching.
fn decode<T: serde::de::DeserializeOwned>(what: &str, v: &Value) -> Result<T, CniError> {
    gojson::from_value(v).map_err(|e| invalid(format!("invalid {what}: {e}")))
}

/// A directory the config names (`pinPath`, `stateDir`, `ipam.dataDir`...):
/// absolute, so it does not depend on the runtime's working directory, and
/// without `..`, so it cannot climb out of where it points.
pub fn absolute_path(key: &str, p: &str) -> Result<PathBuf, CniError> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(invalid(format!(
            "invalid {key} {p:?}: must be an absolute path without '..'"
        )));
    }
    Ok(PathBuf::from(p))
}

/// Parses a requested IP given as `10.0.0.5` or `10.0.0.5/24`.
fn parse_requested_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<ipnet::IpNet>().ok().map(|n| n.addr()))
}

/// The config the plugin would be called with for `v`: a single-plugin
/// config as is, or the first `cni-ebpf` entry of a conflist with the list's
/// `name` and `cniVersion` filled in (as libcni does). `None` when a conflist
/// has no such entry. The list's own keys are matched exactly: libcni reads
/// a conflist as a `map[string]interface{}`, not through a struct.
pub fn plugin_conf(v: &Value) -> Option<Value> {
    let Some(plugins) = v.get("plugins").and_then(Value::as_array) else {
        return Some(v.clone());
    };
    let mut c = plugins
        .iter()
        .find(|p| {
            // An entry's `type` is read by libcni through a Go struct.
            p.as_object().is_some_and(|o| {
                gojson::fold_iter(o, &["type"])
                    .any(|(k, v)| k == "type" && v.as_str() == Some("cni-ebpf"))
            })
        })?
        .clone();
    for key in ["name", "cniVersion"] {
        if let Some(x) = v.get(key) {
            c[key] = x.clone();
        }
    }
    Some(c)
}

impl NetConf {
    /// Parses the config; `command` decides which parts are required.
    pub fn parse(raw: &[u8], command: &str) -> Result<Self, CniError> {
        Self::parse_with(raw, command, true)
    }

    /// Checks a config as ADD would, without reading anything on the node
    /// (flanneld's subnet file need not exist yet): for `install`.
    pub fn parse_offline(raw: &[u8]) -> Result<Self, CniError> {
        Self::parse_with(raw, "ADD", false)
    }

    fn parse_with(raw: &[u8], command: &str, read_files: bool) -> Result<Self, CniError> {
        if raw.len() > MAX_STDIN {
            return Err(CniError::new(
                code::DECODE,
                format!(
                    "network config on stdin is {} bytes, more than the {MAX_STDIN} allowed",
                    raw.len()
                ),
            ));
        }
        let text = std::str::from_utf8(raw).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!(
                    "network config is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                ),
            )
            .with_details(e.to_string())
        })?;
        if let Some(at) = text.find('\0') {
            return Err(CniError::new(
                code::DECODE,
                format!("network config contains a NUL byte (at byte {at})"),
            ));
        }
        // serde_json refuses nesting deeper than 128 levels ("recursion limit
        // exceeded"), so a hostile document cannot exhaust the stack.
        let v: Value = serde_json::from_str(text).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("failed to decode network config: {e}"),
            )
        })?;
        let Value::Object(map) = v else {
            return Err(CniError::new(
                code::DECODE,
                "network config is not a JSON object",
            ));
        };
        // Keys folded first: flannel reads and rewrites some of them below.
        let mut obj = ConfObject::fold(map);

        let cni_version = get_str(&obj, Key::CniVersion)?.unwrap_or_else(|| "0.1.0".to_string());
        version::check(&cni_version, command)?;
        let name = get_str(&obj, Key::Name)?
            .ok_or_else(|| invalid("missing network name (\"name\")".into()))?;
        if !valid_id(&name) || name.len() > 255 {
            return Err(invalid(format!(
                "invalid network name {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
            )));
        }

        // flannel: the file's subnet, MTU and masquerade setting become
        // ordinary keys of this config before anything else reads them.
        let subnet_file = crate::flannel::subnet_file(&obj)?;
        if let Some(file) = &subnet_file {
            if get_str(&obj, Key::Mode)?.as_deref() == Some("chained") {
                return Err(invalid(
                    "flannel/subnetFile need mode bridge or routed: in chained mode the plugin before cni-ebpf allocates the addresses".into(),
                ));
            }
            let state_dir = get_path(&obj, Key::StateDir, DEFAULT_STATE_DIR)?;
            if read_files {
                crate::flannel::resolve(&mut obj, file, command, &state_dir, &name)?;
            }
        }
        let obj = &obj;

        let prev_result = match obj.get(Key::PrevResult) {
            None | Some(Value::Null) => None,
            Some(pr) => Some(CniResult::from_value(pr)?),
        };
        // libcni passes prevResult to every plugin on CHECK and DEL too, so a
        // prevResult alone does not mean chained: a main-mode config has ipam.
        let has_ipam = matches!(obj.get(Key::Ipam), Some(Value::Object(m)) if !m.is_empty())
            || subnet_file.is_some();
        let mode = match get_str(obj, Key::Mode)?.as_deref() {
            None if prev_result.is_some() && !has_ipam => Mode::Chained,
            None | Some("bridge") => Mode::Bridge,
            Some("routed") => Mode::Routed,
            Some("chained") => Mode::Chained,
            Some(m) => {
                return Err(invalid(format!(
                    "invalid mode {m:?}: want bridge, routed or chained"
                )))
            }
        };
        let bridge = get_str(obj, Key::Bridge)?.unwrap_or_else(|| "cni0".to_string());
        crate::cni::env::validate_ifname(&bridge)
            .map_err(|e| invalid(format!("invalid bridge: {}", e.msg)))?;
        let mtu = match obj.get(Key::Mtu) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(m) if (68..=65535).contains(&m) => Some(m as u32),
                _ => return Err(invalid(format!("invalid mtu {v}: want 68..65535"))),
            },
        };
        let (ipam, ipam_type) = match obj.get(Key::Ipam) {
            None | Some(Value::Null) => (None, None),
            Some(Value::Object(m)) if m.is_empty() => (None, None),
            Some(Value::Object(m)) => {
                // Folded with host-local's names: the built-in IPAM reads the
                // stored object, and libcni reads `type` as Go does.
                let ipam = IpamObject::fold(m.clone());
                let t = match ipam.get(IpamKey::Type) {
                    Some(Value::String(t)) if !t.is_empty() => t.clone(),
                    _ => return Err(invalid("ipam.type is missing or not a string".into())),
                };
                (Some(Value::Object(ipam.into_map())), Some(t))
            }
            Some(v) => return Err(invalid(format!("invalid ipam: {v} is not an object"))),
        };
        let dns = match obj.get(Key::Dns) {
            None | Some(Value::Null) => Dns::default(),
            Some(d) => decode::<Dns>("dns", d)?,
        };
        // Only ADD uses the capability arguments; DEL and the others work from
        // the state record, so a bad runtimeConfig must not make them fail.
        let runtime = match parse_runtime(obj.get(Key::RuntimeConfig)) {
            Err(_) if command != "ADD" => RuntimeConfig::default(),
            r => r?,
        };
        // main set logging up from these before parsing; a bad value is
        // still an error of the config.
        let (_log_file, _log_level) = log_settings_of(obj)?;
        log_format_of(obj)?;
        let valid_attachments = match obj
            .get(Key::ValidAttachments)
            .or_else(|| obj.get(Key::Attachments))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(decode::<Vec<Attachment>>("cni.dev/valid-attachments", v)?),
        };
        let is_default_gateway = get_bool(obj, Key::IsDefaultGateway)?;
        let attach_mode = match get_str(obj, Key::AttachMode)?.as_deref() {
            None | Some("netlink") => crate::datapath::AttachMode::Netlink,
            Some("auto") => crate::datapath::AttachMode::Auto,
            Some("tcx") => crate::datapath::AttachMode::Tcx,
            Some(m) => {
                return Err(invalid(format!(
                    "invalid attachMode {m:?}: want auto, tcx or netlink"
                )))
            }
        };
        let uplinks = match obj.get(Key::Uplinks) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let l = decode::<Vec<String>>("uplinks", v)?;
                for u in &l {
                    crate::cni::env::validate_ifname(u)
                        .map_err(|e| invalid(format!("invalid uplinks entry {u:?}: {}", e.msg)))?;
                }
                Some(l)
            }
        };
        let non_masquerade_cidrs = match obj.get(Key::NonMasqueradeCidrs) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => decode::<Vec<String>>("nonMasqueradeCIDRs", v)?
                .iter()
                .map(|c| {
                    c.parse::<ipnet::IpNet>()
                        .map(|n| n.trunc())
                        .map_err(|_| invalid(format!("invalid nonMasqueradeCIDRs entry {c:?}: want a CIDR such as 10.0.0.0/8")))
                })
                .collect::<Result<_, _>>()?,
        };
        let snat_ports = match get_str(obj, Key::SnatPortRange)? {
            None => DEFAULT_SNAT_PORTS,
            Some(r) => parse_port_range(&r).ok_or_else(|| {
                invalid(format!(
                    "invalid snatPortRange {r:?}: want \"min-max\" with 1024 <= min <= max <= 65535"
                ))
            })?,
        };
        let nat_map_entries = match obj.get(Key::NatMapEntries) {
            None | Some(Value::Null) => cni_ebpf_common::NAT_MAX,
            Some(v) => match v.as_u64() {
                Some(n) if NAT_MAP_ENTRIES.contains(&n) => n as u32,
                _ => {
                    return Err(invalid(format!(
                        "invalid natMapEntries {v}: want an integer in {}..={}",
                        NAT_MAP_ENTRIES.start(),
                        NAT_MAP_ENTRIES.end()
                    )))
                }
            },
        };
        let cgroup_path = match get_str(obj, Key::CgroupPath)? {
            Some(p) if p.is_empty() => None,
            Some(_) => Some(get_path(obj, Key::CgroupPath, "")?),
            None => crate::datapath::cgroup2_root(),
        };
        let subnet_file_applied = subnet_file.is_some();
        Ok(Self {
            cni_version,
            name,
            mode,
            bridge,
            is_gateway: get_bool(obj, Key::IsGateway)? || is_default_gateway,
            is_default_gateway,
            force_address: get_bool(obj, Key::ForceAddress)?,
            mtu,
            hairpin_mode: get_bool(obj, Key::HairpinMode)?,
            promisc_mode: get_bool(obj, Key::PromiscMode)?,
            ip_masq: get_bool(obj, Key::IpMasq)?,
            allow_router_messages: get_bool(obj, Key::AllowRouterMessages)?,
            ipam,
            ipam_type,
            dns,
            runtime,
            prev_result,
            pin_path: get_path(obj, Key::PinPath, DEFAULT_PIN_PATH)?,
            state_dir: get_path(obj, Key::StateDir, DEFAULT_STATE_DIR)?,
            attach_mode,
            valid_attachments,
            uplinks,
            non_masquerade_cidrs,
            snat_ports,
            nat_map_entries,
            cgroup_path,
            subnet_file,
            // A delegated IPAM plugin must see the ranges flannel's file gave.
            raw: if subnet_file_applied {
                serde_json::to_vec(obj.as_map()).expect("a JSON object serializes")
            } else {
                raw.to_vec()
            },
        })
    }
}

/// `logFile` (None: `""`, logging off) and `logLevel` of a config object.
pub fn log_settings(
    obj: &serde_json::Map<String, Value>,
) -> Result<(Option<PathBuf>, crate::log::Level), CniError> {
    log_settings_of(&log_keys(obj))
}

/// The logging keys of a raw config object, folded as [`NetConf::parse`]
/// folds them (so logging is set up before, and even without, a full parse).
fn log_keys(obj: &serde_json::Map<String, Value>) -> ConfObject {
    let mut logs = serde_json::Map::new();
    for (k, v) in gojson::fold_iter(obj, Key::NAMES) {
        if [Key::LogFile, Key::LogLevel, Key::LogFormat]
            .iter()
            .any(|l| k == l.name())
        {
            logs.insert(k.to_string(), v.clone());
        }
    }
    ConfObject::fold(logs)
}

fn log_settings_of(obj: &ConfObject) -> Result<(Option<PathBuf>, crate::log::Level), CniError> {
    let file = match get_str(obj, Key::LogFile)? {
        Some(s) if s.is_empty() => None,
        Some(s) if s.starts_with('/') => Some(PathBuf::from(s)),
        Some(s) => {
            return Err(invalid(format!(
                "invalid logFile {s:?}: want an absolute path, or \"\" for no log file"
            )))
        }
        None => Some(PathBuf::from(DEFAULT_LOG_FILE)),
    };
    let level = match get_str(obj, Key::LogLevel)? {
        None => crate::log::Level::default(),
        Some(l) => crate::log::Level::parse(&l).ok_or_else(|| {
            invalid(format!(
                "invalid logLevel {l:?}: want error, warn, info or debug"
            ))
        })?,
    };
    Ok((file, level))
}

/// `logFormat` of a config object: `text` (default) or `json`.
pub fn log_format(obj: &serde_json::Map<String, Value>) -> Result<crate::log::Format, CniError> {
    log_format_of(&log_keys(obj))
}

fn log_format_of(obj: &ConfObject) -> Result<crate::log::Format, CniError> {
    match get_str(obj, Key::LogFormat)? {
        None => Ok(crate::log::Format::default()),
        Some(f) => crate::log::Format::parse(&f)
            .ok_or_else(|| invalid(format!("invalid logFormat {f:?}: want text or json"))),
    }
}

/// Parses `"min-max"` (unprivileged ports only).
fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (1024 <= a && a <= b).then_some((a, b))
}

fn parse_runtime(v: Option<&Value>) -> Result<RuntimeConfig, CniError> {
    let mut rc = RuntimeConfig::default();
    let Some(Value::Object(obj)) = v else {
        return Ok(rc);
    };
    let obj = Object::<RuntimeKey>::fold(obj.clone());
    if let Some(pm) = obj.get(RuntimeKey::PortMappings).filter(|x| !x.is_null()) {
        rc.port_mappings = decode::<Vec<PortMapping>>("runtimeConfig.portMappings", pm)?;
        for (i, m) in rc.port_mappings.iter_mut().enumerate() {
            for (key, port) in [
                ("hostPort", m.host_port),
                ("containerPort", m.container_port),
            ] {
                if !(1..=65535).contains(&port) {
                    return Err(invalid(format!(
                        "invalid runtimeConfig.portMappings[{i}].{key} {port}: want 1..65535"
                    )));
                }
            }
            m.protocol = m.protocol.to_ascii_lowercase();
            if !matches!(m.protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(invalid(format!(
                    "invalid runtimeConfig.portMappings[{i}].protocol {:?}: want tcp, udp or sctp",
                    m.protocol
                )));
            }
            if m.protocol == "sctp" && m.host_port != m.container_port {
                return Err(invalid(format!(
                    "runtimeConfig.portMappings[{i}]: SCTP needs hostPort == containerPort ({} != {}): the SCTP checksum does not cover the IP header, so only the address can be rewritten",
                    m.host_port, m.container_port
                )));
            }
            if !m.host_ip.is_empty() && m.host_ip.parse::<IpAddr>().is_err() {
                return Err(invalid(format!(
                    "invalid runtimeConfig.portMappings[{i}].hostIP {:?}: not an IP address",
                    m.host_ip
                )));
            }
        }
    }
    if let Some(Value::Array(ips)) = obj.get(RuntimeKey::Ips) {
        for ip in ips {
            let s = ip.as_str().unwrap_or_default();
            rc.ips.push(parse_requested_ip(s).ok_or_else(|| {
                invalid(format!(
                    "invalid runtimeConfig.ips entry {ip}: not an IP address"
                ))
            })?);
        }
    }
    if let Some(Value::String(m)) = obj.get(RuntimeKey::Mac) {
        rc.mac = Some(m.clone());
    }
    if let Some(d) = obj.get(RuntimeKey::Dns).filter(|x| !x.is_null()) {
        rc.dns = decode::<RuntimeDns>("runtimeConfig.dns", d)?;
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes(), "ADD")
    }

    #[test]
    fn bridge_keys_and_defaults() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"net1","type":"cni-ebpf","isDefaultGateway":true,
            "mtu":1400,"hairpinMode":true,"ipMasq":true,"somethingUnknown":{"x":1},
            "ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Bridge);
        assert_eq!(c.bridge, "cni0");
        assert!(c.is_gateway && c.is_default_gateway && c.hairpin_mode && c.ip_masq);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
    }

    #[test]
    fn nat_map_entries() {
        let with = |v: &str| {
            parse(&format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"cni-ebpf","natMapEntries":{v}}}"#
            ))
        };
        let base = r#"{"cniVersion":"1.0.0","name":"n","type":"cni-ebpf"}"#;
        assert_eq!(
            parse(base).unwrap().nat_map_entries,
            cni_ebpf_common::NAT_MAX
        );
        assert_eq!(with("4096").unwrap().nat_map_entries, 4096);
        for bad in [
            "0",
            "255",
            "16777217",
            "-1",
            "1.5",
            "\"4096\"",
            "4294967296",
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
            assert!(e.msg.contains("natMapEntries"), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn prev_result_means_chained() {
        let c = parse(
            r#"{"cniVersion":"0.4.0","name":"n","type":"cni-ebpf",
            "prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Chained);
        assert_eq!(c.prev_result.unwrap().ips.len(), 1);
    }

    #[test]
    fn runtime_config() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"cni-ebpf","runtimeConfig":{
            "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"},{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"10.0.0.1"}],
            "ips":["10.1.0.9/24","fd00::9"],"mac":"02:00:00:00:00:09"}}"#)
        .unwrap();
        assert_eq!(c.runtime.port_mappings.len(), 2);
        assert_eq!(c.runtime.port_mappings[0].protocol, "tcp");
        assert_eq!(c.runtime.ips.len(), 2);
    }

    /// Every key the plugin reads from a capability, and a sample of the
    /// top-level and ipam keys, in each spelling Go's `encoding/json`
    /// accepts: the typed result is the same.
    #[test]
    fn keys_match_as_go_does() {
        type Spell = fn(&str) -> String;
        let spellings: [(&str, Spell); 4] = [
            ("lower", |k| k.to_lowercase()),
            ("camel", |k| k.to_string()),
            ("Pascal", |k| {
                let mut c = k.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            }),
            ("UPPER", |k| k.to_uppercase()),
        ];
        for (label, spell) in spellings {
            let k = |name: &str| spell(name);
            let mapping = json!({
                k("hostPort"): 18080, k("containerPort"): 80,
                k("protocol"): "UDP", k("hostIP"): "10.0.0.1",
            });
            let doc = json!({
                k("cniVersion"): "1.0.0", k("name"): "n", "type": "cni-ebpf",
                k("isDefaultGateway"): true, k("mtu"): 1400, k("hairpinMode"): true,
                k("ipMasq"): true, k("bridge"): "br9", k("snatPortRange"): "40000-41000",
                k("ipam"): {
                    k("type"): "host-local", k("subnet"): "10.9.0.0/24",
                    k("rangeStart"): "10.9.0.10", k("rangeEnd"): "10.9.0.20",
                    k("dataDir"): "/run/cni-ebpf-test-ipam",
                    k("routes"): [{k("dst"): "0.0.0.0/0", k("gw"): "10.9.0.254"}],
                },
                k("runtimeConfig"): {
                    k("portMappings"): [mapping],
                    k("dns"): {k("servers"): ["10.96.0.10"], k("searches"): ["svc.local"], k("options"): ["ndots:5"]},
                    k("ips"): ["10.9.0.15/24"],
                    k("mac"): "02:00:00:00:00:09",
                },
            });
            let c = parse(&doc.to_string()).unwrap_or_else(|e| panic!("{label}: {e}: {doc}"));
            assert_eq!(c.cni_version, "1.0.0", "{label}");
            assert_eq!(
                (
                    c.is_default_gateway,
                    c.mtu,
                    c.hairpin_mode,
                    c.ip_masq,
                    c.bridge.as_str()
                ),
                (true, Some(1400), true, true, "br9"),
                "{label}"
            );
            assert_eq!(c.snat_ports, (40000, 41000), "{label}");
            assert_eq!(
                c.runtime.port_mappings,
                [PortMapping {
                    host_port: 18080,
                    container_port: 80,
                    protocol: "udp".into(),
                    host_ip: "10.0.0.1".into(),
                }],
                "{label}"
            );
            assert_eq!(
                c.runtime.dns,
                RuntimeDns {
                    servers: vec!["10.96.0.10".into()],
                    searches: vec!["svc.local".into()],
                    options: vec!["ndots:5".into()],
                },
                "{label}"
            );
            assert_eq!(
                c.runtime.ips,
                ["10.9.0.15".parse::<IpAddr>().unwrap()],
                "{label}"
            );
            assert_eq!(
                c.runtime.mac.as_deref(),
                Some("02:00:00:00:00:09"),
                "{label}"
            );
            assert_eq!(c.ipam_type.as_deref(), Some("host-local"), "{label}");
            let h = crate::ipam::host_local::HostLocalConfig::parse(c.ipam.as_ref().unwrap())
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let r = &h.range_sets[0][0];
            assert_eq!(
                (
                    r.subnet.to_string(),
                    r.range_start.to_string(),
                    r.range_end.to_string()
                ),
                ("10.9.0.0/24".into(), "10.9.0.10".into(), "10.9.0.20".into()),
                "{label}"
            );
            assert_eq!(
                h.data_dir,
                PathBuf::from("/run/cni-ebpf-test-ipam"),
                "{label}"
            );
            assert_eq!(
                h.routes[0].gw,
                Some("10.9.0.254".parse().unwrap()),
                "{label}"
            );
        }
    }

    /// containerd's go-cni marshals its structs without JSON tags.
    #[test]
    fn containerd_go_cni_capabilities() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"cni-ebpf","runtimeConfig":{
            "portMappings":[{"HostPort":18080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
            "dns":{"Servers":["10.96.0.10"],"Searches":["default.svc.cluster.local","svc.cluster.local"],"Options":["ndots:5"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.runtime.port_mappings,
            [PortMapping {
                host_port: 18080,
                container_port: 80,
                protocol: "tcp".into(),
                // Empty: every node address, as for "hostIP": "".
                host_ip: String::new(),
            }]
        );
        assert_eq!(c.runtime.dns.servers, ["10.96.0.10"]);
        assert_eq!(c.runtime.dns.searches.len(), 2);
        assert_eq!(c.runtime.dns.options, ["ndots:5"]);
        // go-cni marshals a nil slice as null: Go leaves the field empty.
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"dns":{"Servers":null,"Searches":null,"Options":null}}}"#,
        )
        .unwrap();
        assert_eq!(c.runtime.dns, RuntimeDns::default());
    }

    #[test]
    fn exact_spelling_wins_and_unknown_keys_are_ignored() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","MTU":1500,"mtu":1400,"Mtu":1300,"mtuX":1,
            "runtimeConfig":{"portMappings":[{"HOSTPORT":9090,"hostPort":8080,"containerPort":80,"hostPorts":1,"HostPortX":2}],
            "MAC":"02:00:00:00:00:01","mac":"02:00:00:00:00:02","macs":"x"},
            "ipam":{"type":"host-local","Type":"other","subnet":"10.1.0.0/24","SUBNET":"10.2.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.runtime.port_mappings[0].host_port, 8080);
        assert_eq!(c.runtime.mac.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        let h = crate::ipam::host_local::HostLocalConfig::parse(c.ipam.as_ref().unwrap()).unwrap();
        assert_eq!(h.range_sets[0][0].subnet.to_string(), "10.1.0.0/24");
        // A folded spelling still carries its value's validation and message.
        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","MTU":10}"#).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (7, "invalid mtu 10: want 68..65535")
        );
        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"PortMappings":[{"ContainerPort":80}]}}"#)
            .unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("missing field `hostPort`"), "{}", e.msg);
    }

    #[test]
    fn log_settings_fold() {
        let v = json!({"LogFile": "", "LOGLEVEL": "debug"});
        let (file, level) = log_settings(v.as_object().unwrap()).unwrap();
        assert_eq!(file, None);
        assert_eq!(level, crate::log::Level::parse("debug").unwrap());
    }

    #[test]
    fn flannel_subnet_file() {
        let dir = std::env::temp_dir().join(format!("cni-ebpf-flannel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("subnet.env");
        std::fs::write(
            &file,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let conf = |cmd: &str, file: &Path| {
            NetConf::parse(
                json!({"cniVersion": "1.1.0", "name": "fl", "subnetFile": file, "stateDir": dir.join("state"),
                    "prevResult": {"cniVersion": "1.0.0", "ips": []}})
                .to_string()
                .as_bytes(),
                cmd,
            )
        };
        let c = conf("ADD", &file).unwrap();
        // prevResult (as libcni passes on DEL) does not make it chained.
        assert_eq!(c.mode, Mode::Bridge);
        assert_eq!((c.mtu, c.ip_masq, c.is_gateway), (Some(1450), true, true));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(
            c.ipam.as_ref().unwrap()["ranges"],
            json!([[{"subnet": "10.244.2.0/24"}]])
        );
        assert_eq!(
            c.non_masquerade_cidrs,
            vec!["10.244.0.0/16".parse::<ipnet::IpNet>().unwrap()]
        );
        // A delegated IPAM plugin gets the same ranges on stdin.
        let raw: Value = serde_json::from_slice(&c.raw).unwrap();
        assert_eq!(raw["ipam"]["ranges"], c.ipam.as_ref().unwrap()["ranges"]);

        // flanneld gone: ADD is "try again later", DEL falls back to ADD's copy.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(conf("ADD", &file).unwrap_err().code, code::TRY_AGAIN);
        // install checks a conflist before flanneld runs.
        let offline = json!({"cniVersion": "1.0.0", "name": "fl", "subnetFile": file});
        NetConf::parse_offline(offline.to_string().as_bytes()).unwrap();
        assert_eq!(conf("STATUS", &file).unwrap_err().code, code::NOT_AVAILABLE);
        let d = conf("DEL", &file).unwrap();
        assert_eq!(
            d.ipam.unwrap()["ranges"],
            json!([[{"subnet": "10.244.2.0/24"}]])
        );
        // Without a copy either, DEL still parses (and skips IPAM).
        let other = dir.join("state/fl");
        std::fs::remove_dir_all(&other).unwrap();
        let d = conf("DEL", &file).unwrap();
        assert!(d.ipam.is_none() && d.mode == Mode::Bridge);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_inputs_have_the_right_codes() {
        let cases: &[(&str, u32, &str)] = &[
            ("{not json", 6, "decode"),
            ("[1,2]", 6, "not a JSON object"),
            (r#"{"cniVersion":"0.2.0","name":"n"}"#, 1, "incompatible"),
            (r#"{"cniVersion":"1.0.0"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"../etc"}"#,
                7,
                "network name",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#, 7, "mtu"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","logLevel":"loud"}"#,
                7,
                "logLevel",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","logFile":"cni.log"}"#,
                7,
                "logFile",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mode":"foo"}"#,
                7,
                "mode",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","stateDir":"rel/dir"}"#,
                7,
                "stateDir",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"x"}}"#,
                7,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}"#,
                7,
                "hostPort",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80}]}}"#,
                7,
                "hostPort",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}}"#,
                7,
                "protocol",
            ),
        ];
        for (input, code, needle) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, *code, "{input}: {e}");
            assert!(e.to_string().contains(needle), "{input}: {e}");
        }
        assert_eq!(NetConf::parse(&[0xff, 0xfe], "ADD").unwrap_err().code, 6);
        assert_eq!(
            NetConf::parse(&vec![b' '; MAX_STDIN + 1], "ADD")
                .unwrap_err()
                .code,
            6
        );
        let deep = format!("{}{}", "[".repeat(10000), "]".repeat(10000));
        assert_eq!(NetConf::parse(deep.as_bytes(), "ADD").unwrap_err().code, 6);
    }
}
