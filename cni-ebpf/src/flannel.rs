//! flannel interop: the pod subnet, MTU and masquerade setting come from the
//! `subnet.env` file flanneld writes, as flannel's own CNI plugin
//! (flannel-io/cni-plugin) takes them, so one `cni-ebpf` entry replaces
//! `flannel` + `bridge` + `portmap` while flanneld keeps doing the
//! cross-node transport.
//!
//! The reference plugin renders a `bridge` config from the file and runs
//! it; here the file is folded into this plugin's own config object before
//! the ordinary parsing, so every key keeps one meaning and one validation:
//! - `ipam.ranges` = `FLANNEL_SUBNET` (and `FLANNEL_IPV6_SUBNET`), host-local
//!   unless `ipam.type` says otherwise; the gateway is the subnet's `.1`;
//! - `ipam.routes` += `FLANNEL_NETWORK` (and `FLANNEL_IPV6_NETWORK`), reached
//!   via that gateway;
//! - `mtu` = `FLANNEL_MTU`, `isGateway` = true, unless the config sets them;
//! - `ipMasq` = `FLANNEL_IPMASQ` unless the config sets it, and the flannel
//!   networks go into `nonMasqueradeCIDRs`: what is masqueraded is exactly
//!   what flanneld's `--ip-masq` rules masquerade (traffic leaving the
//!   flannel network), never pod-to-pod traffic between nodes. (The
//!   reference plugin sets `bridge`'s `ipMasq` to the opposite of
//!   `FLANNEL_IPMASQ`, because flanneld's iptables rules do the work when it
//!   is true; see docs/configuration.md for why this plugin differs.)

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use crate::{
    cni::CniError,
    config::{ConfObject, Key},
    ipam::host_local::{IpamKey, IpamObject},
};

/// flanneld's default output file (also the reference plugin's default).
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// The parsed `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` (comma-separated in flannel with several networks).
    pub networks: Vec<IpNet>,
    /// `FLANNEL_SUBNET`: this node's pod subnet (network address).
    pub subnet: Option<IpNet>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_networks: Vec<IpNet>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<IpNet>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
}

/// What can go wrong with flannel interop; [`CniError`] gives each its CNI
/// code (`From<FlannelError> for CniError` in `cni/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum FlannelError {
    /// The subnet file does not parse (code 7).
    #[error("flannel subnet file {}: {what}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        what: String,
    },
    /// The subnet file is not there yet (code 11: try again later).
    #[error(
        "flannel subnet file {} does not exist yet (is flanneld running on this node?)",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The subnet file cannot be read (code 5).
    #[error("cannot read flannel subnet file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config's `flannel`/`subnetFile` keys are invalid (code 7).
    #[error("{0}")]
    Config(String),
    /// STATUS: the live file is unusable, so the plugin is not available
    /// (code 50, with the inner error's message and details).
    #[error(transparent)]
    NotAvailable(Box<FlannelError>),
}

fn malformed(path: &Path, what: String) -> FlannelError {
    FlannelError::Malformed {
        path: path.to_path_buf(),
        what,
    }
}

fn cidr(path: &Path, key: &str, v: &str, v6: bool) -> Result<IpNet, FlannelError> {
    match v.trim().parse::<IpNet>() {
        Ok(n) if n.addr().is_ipv6() == v6 => Ok(n.trunc()),
        _ => Err(malformed(
            path,
            format!(
                "{key}={v:?} is not an {} CIDR",
                if v6 { "IPv6" } else { "IPv4" }
            ),
        )),
    }
}

impl SubnetEnv {
    /// Parses the file's text (`KEY=VALUE` lines; blank lines, `#` comments
    /// and unknown keys are ignored, as flanneld may add keys). `path` only
    /// names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, FlannelError> {
        let (mut nw, mut sn, mut nw6, mut sn6, mut mtu, mut masq) =
            (Vec::new(), None, Vec::new(), None, None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(malformed(path, format!("line {line:?} is not KEY=VALUE")));
            };
            let list = |v6| {
                v.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| cidr(path, k, s, v6))
                    .collect::<Result<Vec<_>, _>>()
            };
            match k.trim() {
                "FLANNEL_NETWORK" => nw = list(false)?,
                "FLANNEL_IPV6_NETWORK" => nw6 = list(true)?,
                "FLANNEL_SUBNET" => sn = Some(cidr(path, k, v, false)?),
                "FLANNEL_IPV6_SUBNET" => sn6 = Some(cidr(path, k, v, true)?),
                "FLANNEL_MTU" => {
                    mtu = Some(
                        v.trim()
                            .parse::<u32>()
                            .ok()
                            .filter(|m| (68..=65535).contains(m))
                            .ok_or_else(|| {
                                malformed(path, format!("FLANNEL_MTU={v:?} is not in 68..65535"))
                            })?,
                    )
                }
                "FLANNEL_IPMASQ" => {
                    masq = Some(match v.trim() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(malformed(
                                path,
                                format!("FLANNEL_IPMASQ={v:?} is neither true nor false"),
                            ))
                        }
                    })
                }
                _ => {}
            }
        }
        // The same keys the reference plugin requires.
        let mut missing = Vec::new();
        if nw.is_empty() && nw6.is_empty() {
            missing.push("FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK)");
        }
        if sn.is_none() && sn6.is_none() {
            missing.push("FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET)");
        }
        if mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if masq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        if !missing.is_empty() {
            return Err(malformed(path, format!("missing {}", missing.join(", "))));
        }
        for (s, nets, key) in [
            (sn, &nw, "FLANNEL_SUBNET"),
            (sn6, &nw6, "FLANNEL_IPV6_SUBNET"),
        ] {
            if let Some(s) = s {
                if !nets.is_empty() && !nets.iter().any(|n| n.contains(&s)) {
                    return Err(malformed(
                        path,
                        format!("{key}={s} is outside the flannel network {nets:?}"),
                    ));
                }
            }
        }
        Ok(Self {
            networks: nw,
            subnet: sn,
            ipv6_networks: nw6,
            ipv6_subnet: sn6,
            mtu: mtu.expect("checked above"),
            ipmasq: masq.expect("checked above"),
        })
    }

    /// Reads and parses `path`. An absent file is "try again later" (11):
    /// flanneld has not leased this node's subnet yet, and kubelet retries
    /// the sandbox; any other read failure is an I/O error (5).
    pub fn load(path: &Path) -> Result<Self, FlannelError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FlannelError::Missing {
                path: path.to_path_buf(),
            }),
            Err(source) => Err(FlannelError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Folds the file into a config object (keys the config sets itself win,
    /// as the reference plugin's `delegate` keys do; the ranges are always
    /// flannel's).
    pub fn apply(&self, obj: &mut ConfObject) {
        // Folded first, so that `Subnet` is removed as `subnet` is.
        let mut ipam = IpamObject::fold(match obj.remove(Key::Ipam) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        });
        if !ipam.contains(IpamKey::Type) {
            ipam.insert(IpamKey::Type, "host-local".into());
        }
        // The legacy single-range keys would add a range set ahead of ours.
        for k in [
            IpamKey::Subnet,
            IpamKey::RangeStart,
            IpamKey::RangeEnd,
            IpamKey::Gateway,
        ] {
            ipam.remove(k);
        }
        let ranges: Vec<Value> = [self.subnet, self.ipv6_subnet]
            .into_iter()
            .flatten()
            .map(|s| json!([{"subnet": s.to_string()}]))
            .collect();
        ipam.insert(IpamKey::Ranges, ranges.into());
        let nets: Vec<IpNet> = self
            .networks
            .iter()
            .chain(&self.ipv6_networks)
            .copied()
            .collect();
        let mut routes = match ipam.remove(IpamKey::Routes) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        routes.extend(nets.iter().map(|n| json!({"dst": n.to_string()})));
        ipam.insert(IpamKey::Routes, routes.into());
        obj.insert(Key::Ipam, ipam.into_map().into());

        for (k, v) in [
            (Key::Mtu, Value::from(self.mtu)),
            (Key::IpMasq, self.ipmasq.into()),
            (Key::IsGateway, true.into()),
        ] {
            if obj.get(k).is_none_or(Value::is_null) {
                obj.insert(k, v);
            }
        }
        let mut no_masq = match obj.remove(Key::NonMasqueradeCidrs) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        no_masq.extend(nets.iter().map(|n| Value::from(n.to_string())));
        obj.insert(Key::NonMasqueradeCidrs, no_masq.into());
    }
}

/// The subnet file a config asks for: `subnetFile`, or the default when
/// `"flannel": true`; None when flannel interop is off.
pub fn subnet_file(obj: &ConfObject) -> Result<Option<PathBuf>, FlannelError> {
    let invalid = FlannelError::Config;
    let on = match obj.get(Key::Flannel) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => return Err(invalid(format!("invalid flannel: {v} is not a boolean"))),
    };
    let file = match obj.get(Key::SubnetFile) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.starts_with('/') => Some(PathBuf::from(s)),
        Some(v) => {
            return Err(invalid(format!(
                "invalid subnetFile {v}: want an absolute path"
            )))
        }
    };
    match (on, file) {
        (Some(false), Some(_)) => Err(invalid(
            "subnetFile is set but flannel is false: remove one of them".into(),
        )),
        (Some(true), None) => Ok(Some(PathBuf::from(DEFAULT_SUBNET_FILE))),
        (_, f) => Ok(f),
    }
}

/// Where the last subnet file an ADD used is kept, so a DEL or GC while
/// flanneld's file is gone (node teardown, flanneld restarting) still
/// releases addresses from the right ranges.
pub fn cached_copy(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join(network).join("flannel-subnet.env")
}

/// Applies flannel's file to `obj` for `command`. ADD, CHECK and STATUS
/// need the live file (STATUS reports its absence as "not available", 50);
/// ADD keeps a copy for DEL and GC, which fall back to it and, failing
/// that, go on without (nothing of this network was ever allocated here).
pub fn resolve(
    obj: &mut ConfObject,
    file: &Path,
    command: &str,
    state_dir: &Path,
    network: &str,
) -> Result<(), FlannelError> {
    let copy = cached_copy(state_dir, network);
    let env = match command {
        "DEL" | "GC" => match SubnetEnv::load(file) {
            Ok(e) => e,
            // Logged as the runtime would have seen it (message and code).
            Err(e) => match (CniError::from(e), SubnetEnv::load(&copy)) {
                (e, Ok(c)) => {
                    crate::warn!("{e}; using the copy {} from the last ADD", copy.display());
                    c
                }
                (e, Err(_)) => {
                    crate::warn!("{e}; no copy from an earlier ADD: IPAM is skipped");
                    return Ok(());
                }
            },
        },
        "STATUS" => SubnetEnv::load(file).map_err(|e| FlannelError::NotAvailable(Box::new(e)))?,
        _ => SubnetEnv::load(file)?,
    };
    if command == "ADD" {
        if let Ok(text) = std::fs::read(file) {
            if std::fs::read(&copy).ok().as_deref() != Some(&text[..]) {
                let _ = std::fs::create_dir_all(copy.parent().expect("has a parent"));
                let tmp = copy.with_extension("tmp");
                if let Err(e) =
                    std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &copy))
                {
                    crate::warn!("cannot keep a copy of {}: {e}", file.display());
                }
            }
        }
    }
    env.apply(obj);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::code;

    const P: &str = "/run/flannel/subnet.env";

    fn parse(s: &str) -> Result<SubnetEnv, CniError> {
        SubnetEnv::parse(s, Path::new(P)).map_err(CniError::from)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn flanneld_output() {
        let e = parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(e.networks, vec![net("10.244.0.0/16")]);
        // flanneld writes the gateway address; the range is the network.
        assert_eq!(e.subnet, Some(net("10.244.1.0/24")));
        assert_eq!((e.mtu, e.ipmasq), (1450, true));
        assert_eq!((e.ipv6_subnet, e.ipv6_networks.len()), (None, 0));
    }

    #[test]
    fn dual_stack_several_networks_comments_and_unknown_keys() {
        let e = parse(
            "# written by flanneld\n\nFLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.245.3.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
             FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\nFLANNEL_SOMETHING_NEW=x\n",
        )
        .unwrap();
        assert_eq!(e.networks.len(), 2);
        assert_eq!(e.ipv6_subnet, Some(net("fd00:10:244:3::/64")));
        assert!(!e.ipmasq);
        // IPv6 only is fine too.
        let e = parse("FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true").unwrap();
        assert_eq!(e.subnet, None);
    }

    #[test]
    fn malformed_files_name_the_file_and_key() {
        let ok = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "FLANNEL_SUBNET=10.244.1.1/24",
                "FLANNEL_SUBNET=banana",
                "FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_SUBNET=10.244.1.1/24",
                "FLANNEL_SUBNET=fd00::1/64",
                "FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_SUBNET=10.244.1.1/24",
                "FLANNEL_SUBNET=10.9.1.1/24",
                "outside",
            ),
            (
                "FLANNEL_SUBNET=10.244.1.1/24\n",
                "",
                "missing FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16\n",
                "",
                "missing FLANNEL_NETWORK",
            ),
            ("FLANNEL_MTU=1450", "FLANNEL_MTU=9", "FLANNEL_MTU"),
            ("FLANNEL_MTU=1450\n", "", "missing FLANNEL_MTU"),
            (
                "FLANNEL_IPMASQ=true",
                "FLANNEL_IPMASQ=yes",
                "FLANNEL_IPMASQ",
            ),
            ("FLANNEL_IPMASQ=true\n", "", "missing FLANNEL_IPMASQ"),
            ("FLANNEL_MTU=1450", "FLANNEL_MTU 1450", "not KEY=VALUE"),
        ];
        for (from, to, needle) in cases {
            let text = ok.replace(from, to);
            let e = parse(&text).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{text}: {e}");
            assert!(e.msg.contains(P) && e.msg.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn absent_file_is_try_again_later() {
        let e = CniError::from(
            SubnetEnv::load(Path::new("/nonexistent/cni-ebpf/subnet.env")).unwrap_err(),
        );
        assert_eq!(e.code, code::TRY_AGAIN);
        assert!(e.msg.contains("/nonexistent/cni-ebpf/subnet.env"), "{e}");
    }

    #[test]
    fn applied_like_the_reference_plugin() {
        let e = parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        // Keys spelled as Go would accept them are folded before the rewrite.
        let mut obj = ConfObject::fold(
            json!({"name": "n", "MTU": 1400, "NonMasqueradeCIDRs": ["192.168.0.0/16"],
            "IPAM": {"dataDir": "/d", "Subnet": "10.1.0.0/24", "RangeStart": "10.1.0.9", "Routes": [{"dst": "10.96.0.0/12"}]}})
            .as_object()
            .unwrap()
            .clone(),
        );
        e.apply(&mut obj);
        let v = Value::Object(obj.into_map());
        assert_eq!(
            v["ipam"],
            json!({"type": "host-local", "dataDir": "/d", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                   "routes": [{"dst": "10.96.0.0/12"}, {"dst": "10.244.0.0/16"}]})
        );
        // The config's own mtu wins; the rest comes from the file.
        assert_eq!(v["mtu"], 1400);
        assert_eq!(v["ipMasq"], true);
        assert_eq!(v["isGateway"], true);
        assert_eq!(
            v["nonMasqueradeCIDRs"],
            json!(["192.168.0.0/16", "10.244.0.0/16"])
        );
    }

    #[test]
    fn subnet_file_key() {
        let o = |v: Value| ConfObject::fold(v.as_object().unwrap().clone());
        assert_eq!(subnet_file(&o(json!({}))).unwrap(), None);
        assert_eq!(subnet_file(&o(json!({"flannel": false}))).unwrap(), None);
        assert_eq!(
            subnet_file(&o(json!({"flannel": true}))).unwrap(),
            Some(PathBuf::from(DEFAULT_SUBNET_FILE))
        );
        assert_eq!(
            subnet_file(&o(json!({"subnetFile": "/x/s.env"}))).unwrap(),
            Some(PathBuf::from("/x/s.env"))
        );
        assert_eq!(
            subnet_file(&o(json!({"SubnetFile": "/x/s.env", "FLANNEL": true}))).unwrap(),
            Some(PathBuf::from("/x/s.env"))
        );
        for bad in [
            json!({"subnetFile": "rel.env"}),
            json!({"flannel": "yes"}),
            json!({"flannel": false, "subnetFile": "/x"}),
        ] {
            assert_eq!(
                CniError::from(subnet_file(&o(bad.clone())).unwrap_err()).code,
                7,
                "{bad}"
            );
        }
    }
}
