//! The `CNI_*` environment, validated as the reference library (libcni/skel)
//! does before anything is touched.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use super::error::{code, CniError};

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Set up a container's network.
    Add,
    /// Tear it down.
    Del,
    /// Verify it.
    Check,
    /// Report supported versions.
    Version,
    /// Report readiness (1.1).
    Status,
    /// Garbage-collect stale attachments (1.1).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND {other:?}"),
                ))
            }
        })
    }

    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// Parsed `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IP=` requested addresses (comma-separated).
    pub ips: Vec<IpAddr>,
    /// `MAC=` requested MAC for the container interface.
    pub mac: Option<String>,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`, and other keys.
    pub other: BTreeMap<String, String>,
}

const KNOWN_ARGS: [&str; 7] = [
    "IgnoreUnknown",
    "IP",
    "MAC",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

impl CniArgs {
    /// `K8S_POD_NAMESPACE`, or "".
    pub fn pod_namespace(&self) -> &str {
        self.other
            .get("K8S_POD_NAMESPACE")
            .map_or("", String::as_str)
    }

    /// `K8S_POD_NAME`, or "".
    pub fn pod_name(&self) -> &str {
        self.other.get("K8S_POD_NAME").map_or("", String::as_str)
    }

    /// Parses `K=V;K=V`. Unknown keys are an error unless `IgnoreUnknown` is
    /// true, as in the reference `types.LoadArgs`.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut out = Self::default();
        if s.is_empty() {
            return Ok(out);
        }
        let mut pairs = Vec::new();
        for item in s.split(';').filter(|x| !x.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: invalid pair {item:?}, want KEY=VALUE"),
                )
            })?;
            pairs.push((k.to_string(), v.to_string()));
        }
        let ignore_unknown = pairs.iter().any(|(k, v)| {
            k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
        });
        for (k, v) in pairs {
            match k.as_str() {
                "IP" => {
                    for ip in v.split(',').filter(|x| !x.is_empty()) {
                        out.ips.push(ip.parse().map_err(|_| {
                            CniError::new(
                                code::INVALID_ENV,
                                format!("CNI_ARGS: IP={ip:?} is not an IP address"),
                            )
                        })?);
                    }
                }
                "MAC" => out.mac = Some(v),
                _ if KNOWN_ARGS.contains(&k.as_str()) => {
                    out.other.insert(k, v);
                }
                _ if ignore_unknown => {
                    out.other.insert(k, v);
                }
                _ => {
                    return Err(CniError::new(
                        code::INVALID_ENV,
                        format!("CNI_ARGS: unknown key {k:?} (set IgnoreUnknown=1 to allow it)"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// The validated environment of one invocation.
#[derive(Debug, Clone)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, STATUS, GC).
    pub container_id: String,
    /// `CNI_NETNS` (None for VERSION, STATUS, GC, and DEL without one).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for VERSION, STATUS, GC).
    pub ifname: String,
    /// `CNI_ARGS`, parsed (ADD only; empty for the others, which do not
    /// use it).
    pub args: CniArgs,
    /// `CNI_PATH`, raw (empty for VERSION and STATUS).
    pub path: String,
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the reference library's rule for container
/// IDs and network names.
pub fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Interface name rules of the reference library (`ValidateInterfaceName`).
pub fn validate_ifname(s: &str) -> Result<(), CniError> {
    let bad = |why: &str| {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_IFNAME {s:?}: {why}"),
        ))
    };
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > 15 {
        return bad("longer than 15 bytes");
    }
    if s == "." || s == ".." {
        return bad("current or parent directory name");
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("contains '/', ':', whitespace or a control character");
    }
    Ok(())
}

/// Whether a command reads a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Not looked at, whatever it holds.
    Ignored,
    /// Read and validated when set; may be empty.
    Optional,
    /// Must be set, then validated.
    Required,
}

impl Command {
    /// What the command reads from `CNI_*`, as the reference skel requires
    /// it (`getCmdArgsFromEnv`) for the variables each command actually uses.
    /// Everything else is not even looked at: libcni probes a plugin with
    /// `CNI_COMMAND=VERSION CNI_CONTAINERID= CNI_NETNS=dummy CNI_IFNAME=dummy
    /// CNI_PATH=dummy`, and podman drops a network whose plugin fails that.
    /// Returns (container ID and ifname, netns, path, args).
    fn uses(self) -> (Use, Use, Use, Use) {
        use Use::{Ignored, Optional, Required};
        match self {
            // CNI_ARGS: requested IPs and MAC, pod name for the record.
            Self::Add => (Required, Required, Required, Required),
            // Delegated IPAM plugins are run from CNI_PATH.
            Self::Check => (Required, Required, Required, Ignored),
            // The netns may be gone already, or never given (spec: DEL).
            Self::Del => (Required, Optional, Required, Ignored),
            // Every attachment comes from the state records; delegated IPAM
            // plugins are run for the stale ones.
            Self::Gc => (Ignored, Ignored, Required, Ignored),
            Self::Status | Self::Version => (Ignored, Ignored, Ignored, Ignored),
        }
    }
}

impl CniEnv {
    /// Reads and validates the environment through `get` (`std::env::var` in
    /// production, a map in tests): only what `CNI_COMMAND` uses (see
    /// `Command::uses`); the fields a command ignores are empty.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command_s = get("CNI_COMMAND").ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "required env variables [CNI_COMMAND] missing",
            )
        })?;
        let command = Command::parse(&command_s)?;
        let (container_use, netns_use, path_use, args_use) = command.uses();
        let mut missing = Vec::new();
        let mut req = |name: &'static str, usage: Use| -> String {
            if usage == Use::Ignored {
                return String::new();
            }
            match get(name).filter(|v| !v.is_empty()) {
                Some(v) => v,
                None => {
                    if usage == Use::Required {
                        missing.push(name);
                    }
                    String::new()
                }
            }
        };
        let container_id = req("CNI_CONTAINERID", container_use);
        let netns = req("CNI_NETNS", netns_use);
        let ifname = req("CNI_IFNAME", container_use);
        let path = req("CNI_PATH", path_use);
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        if !container_id.is_empty() && !valid_id(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("invalid CNI_CONTAINERID {container_id:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
            ));
        }
        if container_id.len() > 512 {
            return Err(CniError::new(
                code::INVALID_ENV,
                "invalid CNI_CONTAINERID: longer than 512 bytes",
            ));
        }
        if container_use == Use::Required {
            validate_ifname(&ifname)?;
        }
        for dir in path.split(':').filter(|d| !d.is_empty()) {
            if !dir.starts_with('/') {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("invalid CNI_PATH: {dir:?} is not an absolute directory"),
                ));
            }
        }
        // Only the form is checked here: whether it still exists is the
        // command's business (DEL goes on without it).
        let netns = if netns.is_empty() {
            None
        } else if !netns.starts_with('/') {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("invalid CNI_NETNS {netns:?}: not an absolute path"),
            ));
        } else {
            Some(PathBuf::from(netns))
        };
        let args = match args_use {
            Use::Ignored => CniArgs::default(),
            _ => CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
        };
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    const OK: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = OK
            .iter()
            .copied()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .collect();
        v.extend(over.iter().copied().filter(|(_, val)| !val.is_empty()));
        v
    }

    #[test]
    fn accepts_a_normal_add() {
        let e = env(&OK).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.ifname, "eth0");
    }

    #[test]
    fn names_every_missing_variable() {
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg
                .contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn del_without_netns_is_fine() {
        let e = env(&with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")])).unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn rejects_bad_ids_and_ifnames() {
        for id in ["-abc", "a/b", "a b", "..", "a;b"] {
            let e = env(&with(&[("CNI_CONTAINERID", id)])).unwrap_err();
            assert_eq!(e.code, 4, "{id}");
        }
        for ifn in ["..", ".", "a/b", "a:b", "eth 0", "abcdefghijklmnop"] {
            let e = env(&with(&[("CNI_IFNAME", ifn)])).unwrap_err();
            assert_eq!(e.code, 4, "{ifn}");
        }
        assert_eq!(
            env(&with(&[("CNI_PATH", "relative/bin")]))
                .unwrap_err()
                .code,
            4
        );
        assert_eq!(env(&with(&[("CNI_NETNS", "netns")])).unwrap_err().code, 4);
        assert_eq!(env(&with(&[("CNI_COMMAND", "FOO")])).unwrap_err().code, 4);
    }

    /// libcni's `GetVersionInfo` probe, exactly (podman validates every
    /// network with it), and garbage in every variable VERSION does not use.
    #[test]
    fn version_reads_only_cni_command() {
        let probe = [
            ("CNI_COMMAND", "VERSION"),
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
        ];
        let e = env(&probe).unwrap();
        assert_eq!(e.command, Command::Version);
        let garbage = [
            ("CNI_COMMAND", "VERSION"),
            ("CNI_CONTAINERID", "../../etc"),
            ("CNI_NETNS", "relative/\u{1}"),
            ("CNI_IFNAME", "much-too-long-for-an-ifname/"),
            ("CNI_PATH", "a:b::c"),
            ("CNI_ARGS", "NOTKNOWN=1;novalue"),
        ];
        env(&garbage).unwrap();
        env(&[("CNI_COMMAND", "VERSION")]).unwrap();
    }

    #[test]
    fn status_and_gc_ignore_the_attachment_variables() {
        let garbage = [
            ("CNI_CONTAINERID", "-bad id"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_ARGS", "FOO=bar"),
        ];
        for cmd in ["STATUS", "GC"] {
            let mut vars = vec![("CNI_COMMAND", cmd), ("CNI_PATH", "/opt/cni/bin")];
            vars.extend(garbage);
            let e = env(&vars).unwrap();
            assert_eq!(
                (e.container_id.as_str(), e.ifname.as_str()),
                ("", ""),
                "{cmd}"
            );
            assert!(e.netns.is_none(), "{cmd}");
        }
        // STATUS runs no other plugin: CNI_PATH is not its business either.
        env(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "dummy")]).unwrap();
        env(&[("CNI_COMMAND", "STATUS")]).unwrap();
        // GC runs delegated IPAM plugins for stale attachments.
        let e = env(&[("CNI_COMMAND", "GC")]).unwrap_err();
        assert!(e.msg.contains("[CNI_PATH]"), "{}", e.msg);
        let e = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "dummy")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
    }

    #[test]
    fn only_add_reads_cni_args() {
        for cmd in ["DEL", "CHECK"] {
            env(&with(&[("CNI_COMMAND", cmd), ("CNI_ARGS", "FOO=bar")])).unwrap();
        }
        let e = env(&with(&[("CNI_ARGS", "FOO=bar")])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
    }

    #[test]
    fn del_takes_a_netns_that_no_longer_exists() {
        let e = env(&with(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_NETNS", "/run/netns/cni-ebpf-gone-long-ago"),
        ]))
        .unwrap();
        assert_eq!(
            e.netns.unwrap(),
            PathBuf::from("/run/netns/cni-ebpf-gone-long-ago")
        );
        // Still required and checked: what DEL uses.
        for (k, v) in [
            ("CNI_CONTAINERID", ""),
            ("CNI_IFNAME", ""),
            ("CNI_PATH", ""),
        ] {
            let e = env(&with(&[("CNI_COMMAND", "DEL"), (k, v)])).unwrap_err();
            assert!(e.msg.contains(k), "{k}: {}", e.msg);
        }
        let e = env(&with(&[("CNI_COMMAND", "DEL"), ("CNI_PATH", "dummy")])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
    }

    #[test]
    fn parses_cni_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5,fd00::5;MAC=02:00:00:00:00:01;FOO=bar",
        )
        .unwrap();
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(a.other["K8S_POD_NAME"], "web");
        assert_eq!(CniArgs::parse("FOO=bar").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("IP=notanip").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("novalue").unwrap_err().code, 4);
    }
}
