//! `cni-ebpf inspect`: what the data path holds and did, read from the pinned
//! maps, the link pins, the kernel's tc filters and the state records only.
//!
//! It takes no lock and writes nothing, so it runs while ADD and DEL do: an
//! entry or record that vanishes between two reads is simply left out, and
//! an entry whose record is gone (or not written yet) is shown without a
//! container. Every view is a table for people and, with `--json`, an array
//! (or object) with stable camelCase field names for scripts.

mod table;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_json::Value;

use crate::{
    config::{DEFAULT_PIN_PATH, DEFAULT_STATE_DIR},
    datapath::{proto_name, Datapath},
    netlink::{format_mac, Netlink},
    state::Record,
};

/// What to show (`inspect` alone shows endpoints, portmaps, nat and counters).
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// One row per pod attachment: container, pod, addresses, host veth, hostPorts.
    Endpoints,
    /// hostPort mappings: (protocol, hostIP, hostPort) -> pod address and port.
    Portmaps,
    /// Live translations (hostPort replies, hairpin, masquerade).
    Nat,
    /// Per-pod packet counters and node-wide counters by reason.
    Counters,
    /// Program attachments per interface: TCX link pins, cls_bpf filters, cgroup hooks.
    Links,
}

/// Options of every view.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// bpffs directory the plugin pins into (`pinPath` in the config).
    #[arg(long, default_value = DEFAULT_PIN_PATH, global = true)]
    pub pin_path: PathBuf,
    /// State directory (`stateDir`), to name the container and pod of each entry.
    #[arg(long, default_value = DEFAULT_STATE_DIR, global = true)]
    pub state_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Only entries of containers whose ID starts with this.
    #[arg(long, value_name = "ID", global = true)]
    pub container: Option<String>,
    /// Only entries of this Kubernetes pod (`K8S_POD_NAMESPACE`/`K8S_POD_NAME`).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_pod, global = true)]
    pub pod: Option<(String, String)>,
}

fn parse_pod(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?}: want NAMESPACE/NAME")),
    }
}

/// Who an entry belongs to, from the state record of its owner tag.
#[derive(Serialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct Who {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    network: String,
    pod_namespace: String,
    pod_name: String,
}

impl Who {
    fn of(r: &Record) -> Self {
        Self {
            container_id: r.container_id.clone(),
            ifname: r.ifname.clone(),
            network: r.network.clone(),
            pod_namespace: r.pod_namespace.clone(),
            pod_name: r.pod_name.clone(),
        }
    }

    /// `ns/name`, or `-`.
    fn pod(&self) -> String {
        if self.pod_name.is_empty() {
            "-".into()
        } else {
            format!("{}/{}", self.pod_namespace, self.pod_name)
        }
    }

    /// The container ID as `docker ps` shortens it, or `-`.
    fn short_id(&self) -> String {
        if self.container_id.is_empty() {
            "-".into()
        } else {
            self.container_id.chars().take(12).collect()
        }
    }
}

/// `--container` and `--pod`.
struct Filter<'a> {
    container: Option<&'a str>,
    pod: Option<&'a (String, String)>,
}

impl Filter<'_> {
    fn keeps(&self, w: &Who) -> bool {
        self.container
            .is_none_or(|c| !w.container_id.is_empty() && w.container_id.starts_with(c))
            && self
                .pod
                .is_none_or(|(ns, name)| w.pod_namespace == *ns && w.pod_name == *name)
    }
}

#[derive(Serialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct Counters {
    from_packets: u64,
    from_bytes: u64,
    to_packets: u64,
    to_bytes: u64,
    drop_spoofed: u64,
    translated: u64,
    drop_nat: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
struct HostPort {
    protocol: String,
    #[serde(rename = "hostIP")]
    host_ip: String,
    host_port: u16,
    container_port: u16,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    #[serde(flatten)]
    who: Who,
    owner: String,
    host_veth: String,
    ifindex: u32,
    ips: Vec<String>,
    mac: String,
    masquerade: bool,
    host_ports: Vec<HostPort>,
    counters: Counters,
}

/// An `ep_ifaces` entry: the source MAC a host veth accepts from its pod.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Iface {
    #[serde(flatten)]
    who: Who,
    owner: String,
    host_veth: String,
    ifindex: u32,
    mac: String,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct PortMap {
    #[serde(flatten)]
    who: Who,
    owner: String,
    protocol: String,
    #[serde(rename = "hostIP")]
    host_ip: String,
    host_port: u16,
    #[serde(rename = "podIP")]
    pod_ip: String,
    container_port: u16,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Nat {
    #[serde(flatten)]
    who: Who,
    owner: String,
    kind: String,
    scope: String,
    proto: String,
    from: String,
    to: String,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct Link {
    #[serde(flatten)]
    who: Who,
    interface: String,
    ifindex: u32,
    hook: String,
    program: String,
    /// `tcx` (pinned link), `cls_bpf` (netlink filter) or `cgroup` (pinned link).
    attach: String,
    prog_id: Option<u32>,
    pin: String,
}

/// The node's pinned data path and every state record, read once.
struct Snapshot {
    dp: Datapath,
    pin_root: PathBuf,
    owners: HashMap<u64, Record>,
}

impl Snapshot {
    fn who(&self, owner: u64) -> Who {
        self.owners.get(&owner).map(Who::of).unwrap_or_default()
    }

    fn endpoints(&self, f: &Filter<'_>) -> Result<Vec<Endpoint>, String> {
        let entries = self.dp.endpoint_entries().map_err(|e| self.err(&e))?;
        let mut ports: HashMap<u64, Vec<HostPort>> = HashMap::new();
        for p in self.dp.port_entries().unwrap_or_default() {
            let v = ports.entry(p.owner).or_default();
            let hp = HostPort {
                protocol: p.protocol.into(),
                host_ip: p.host_ip.map(|h| h.to_string()).unwrap_or_default(),
                host_port: p.host_port,
                container_port: p.container_port,
            };
            if !v.contains(&hp) {
                v.push(hp);
            }
        }
        // One row per attachment (owner), its addresses gathered.
        let mut rows: BTreeMap<(String, u64), Endpoint> = BTreeMap::new();
        for e in entries {
            let who = self.who(e.info.owner);
            if !f.keeps(&who) {
                continue;
            }
            let key = (who.container_id.clone(), e.info.owner);
            let row = rows.entry(key).or_insert_with(|| {
                let st = self.dp.endpoint_stats(e.info.ifindex).unwrap_or_default();
                let mut hp = ports.remove(&e.info.owner).unwrap_or_default();
                hp.sort();
                Endpoint {
                    owner: format!("{:016x}", e.info.owner),
                    host_veth: ifname_of(e.info.ifindex),
                    ifindex: e.info.ifindex,
                    ips: Vec::new(),
                    mac: format_mac(&e.info.mac),
                    masquerade: e.info.flags & cni_ebpf_common::EP_FLAG_MASQ != 0,
                    host_ports: hp,
                    counters: Counters {
                        from_packets: st.from_packets,
                        from_bytes: st.from_bytes,
                        to_packets: st.to_packets,
                        to_bytes: st.to_bytes,
                        drop_spoofed: st.drop_spoofed,
                        translated: st.translated,
                        drop_nat: st.drop_nat,
                    },
                    who,
                }
            });
            row.ips.push(e.ip.to_string());
        }
        let mut out: Vec<Endpoint> = rows.into_values().collect();
        for r in &mut out {
            // IPv4 first, then IPv6, each in order.
            r.ips.sort_by_key(|ip| (ip.contains(':'), ip.clone()));
        }
        Ok(out)
    }

    fn interfaces(&self, f: &Filter<'_>) -> Result<Vec<Iface>, String> {
        let mut out: Vec<Iface> = self
            .dp
            .iface_entries()
            .map_err(|e| self.err(&e))?
            .into_iter()
            .map(|(ifindex, i)| Iface {
                who: self.who(i.owner),
                owner: format!("{:016x}", i.owner),
                host_veth: ifname_of(ifindex),
                ifindex,
                mac: format_mac(&i.mac),
            })
            .filter(|i| f.keeps(&i.who))
            .collect();
        out.sort_by_key(|i| i.ifindex);
        Ok(out)
    }

    fn portmaps(&self, f: &Filter<'_>) -> Result<Vec<PortMap>, String> {
        let mut out: Vec<PortMap> = self
            .dp
            .port_entries()
            .map_err(|e| self.err(&e))?
            .into_iter()
            .map(|p| PortMap {
                who: self.who(p.owner),
                owner: format!("{:016x}", p.owner),
                protocol: p.protocol.into(),
                host_ip: p.host_ip.map(|h| h.to_string()).unwrap_or_default(),
                host_port: p.host_port,
                pod_ip: p.pod_ip.to_string(),
                container_port: p.container_port,
            })
            .filter(|p| f.keeps(&p.who))
            .collect();
        out.sort_by(|a, b| {
            (a.host_port, &a.protocol, &a.host_ip, &a.pod_ip).cmp(&(
                b.host_port,
                &b.protocol,
                &b.host_ip,
                &b.pod_ip,
            ))
        });
        Ok(out)
    }

    fn nat(&self, f: &Filter<'_>) -> Result<Vec<Nat>, String> {
        Ok(self
            .dp
            .nat_entries()
            .map_err(|e| self.err(&e))?
            .into_iter()
            .filter(|n| n.live)
            .map(|n| Nat {
                who: self.who(n.owner),
                owner: format!("{:016x}", n.owner),
                kind: n.kind.into(),
                scope: n.scope.into(),
                proto: proto_name(n.proto).into(),
                from: format!("{} -> {}", n.from.0, n.from.1),
                to: format!("{} -> {}", n.to.0, n.to.1),
            })
            .filter(|n| f.keeps(&n.who))
            .collect())
    }

    /// `{"node": {reason: count}, "endpoints": [...]}`.
    fn counters(&self, f: &Filter<'_>) -> Result<Value, String> {
        let node: serde_json::Map<String, Value> = self
            .dp
            .counters()
            .map_err(|e| self.err(&e))?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let eps: Vec<Value> = self
            .endpoints(f)?
            .into_iter()
            .map(|e| {
                let mut v = serde_json::to_value(&e.who).expect("serializes");
                v["hostVeth"] = e.host_veth.into();
                v["ifindex"] = e.ifindex.into();
                if let (Value::Object(o), Value::Object(c)) = (
                    &mut v,
                    serde_json::to_value(&e.counters).expect("serializes"),
                ) {
                    o.extend(c);
                }
                v
            })
            .collect();
        Ok(serde_json::json!({"node": node, "endpoints": eps}))
    }

    /// TCX link pins (pods and uplinks), cgroup hook pins, and cls_bpf
    /// filters running one of our programs, on every interface.
    fn links(&self, f: &Filter<'_>) -> Result<Vec<Link>, String> {
        let by_veth: HashMap<&str, &Record> = self
            .owners
            .values()
            .map(|r| (r.host_veth.as_str(), r))
            .collect();
        let who = |ifname: &str| by_veth.get(ifname).map(|r| Who::of(r)).unwrap_or_default();
        let ifaces = Netlink::with(|nl| async move {
            let mut out = Vec::new();
            for l in nl.links().await? {
                // A link that vanished between the two dumps has no filters.
                let filters = nl.bpf_filters(l.index).await.unwrap_or_default();
                out.push((l, filters));
            }
            Ok(out)
        })
        .map_err(|e| format!("list interfaces: {}", crate::cni::error::chain(&e)))?;
        let index_of: HashMap<String, u32> = ifaces
            .iter()
            .map(|(l, _)| (l.name.clone(), l.index))
            .collect();
        let mut out = Vec::new();
        for (l, filters) in &ifaces {
            for flt in filters {
                if !cni_ebpf_common::prog::TC.contains(&flt.name.as_str()) {
                    continue;
                }
                out.push(Link {
                    who: who(&l.name),
                    interface: l.name.clone(),
                    ifindex: l.index,
                    hook: if flt.ingress { "ingress" } else { "egress" }.into(),
                    program: flt.name.clone(),
                    attach: "cls_bpf".into(),
                    prog_id: Some(flt.prog_id),
                    pin: String::new(),
                });
            }
        }
        let links = self.dp.links_dir();
        for (dir, programs) in [
            (links.clone(), ["from_container", "to_container"]),
            (links.join("uplink"), ["from_netdev", "to_netdev"]),
        ] {
            for (name, path) in files(&dir) {
                let Some((ifname, hook)) = name.rsplit_once('_') else {
                    continue;
                };
                let program = if hook == "ingress" {
                    programs[0]
                } else {
                    programs[1]
                };
                out.push(Link {
                    who: who(ifname),
                    interface: ifname.into(),
                    ifindex: index_of.get(ifname).copied().unwrap_or(0),
                    hook: hook.into(),
                    program: program.into(),
                    attach: "tcx".into(),
                    prog_id: None,
                    pin: path.display().to_string(),
                });
            }
        }
        for (cg, cg_dir) in files(&links.join("cgroup")) {
            for (name, path) in files(&cg_dir) {
                out.push(Link {
                    who: Who::default(),
                    interface: format!("cgroup:{cg}"),
                    ifindex: 0,
                    hook: name.trim_start_matches("sock_").into(),
                    program: name,
                    attach: "cgroup".into(),
                    prog_id: None,
                    pin: path.display().to_string(),
                });
            }
        }
        out.retain(|l| f.keeps(&l.who));
        out.sort_by(|a, b| {
            (&a.interface, &a.hook, &a.attach).cmp(&(&b.interface, &b.hook, &b.attach))
        });
        Ok(out)
    }

    fn err(&self, e: &crate::datapath::BpfError) -> String {
        format!(
            "cannot read the data path under {}: {}",
            self.pin_root.display(),
            crate::cni::error::chain(e)
        )
    }
}

/// Entries of a directory (name, path), sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

/// The name of interface `index` in this namespace, or `#index` if it is gone.
fn ifname_of(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires; on
    // success it is NUL-terminated.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: if_indextoname succeeded, so `buf` holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Runs `inspect [VIEW]`; returns the exit code.
pub fn run(view: Option<View>, o: &Opts) -> i32 {
    let snap = Snapshot {
        dp: Datapath::layout(&o.pin_path),
        pin_root: o.pin_path.clone(),
        owners: crate::state::owners(&o.state_dir),
    };
    let f = Filter {
        container: o.container.as_deref(),
        pod: o.pod.as_ref(),
    };
    let res = match view {
        None => overview(&snap, &f, o.json),
        Some(v) => one(&snap, &f, v, o.json),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("inspect rows serialize")
}

/// One view's JSON.
fn view_json(s: &Snapshot, f: &Filter<'_>, v: View) -> Result<Value, String> {
    Ok(match v {
        View::Endpoints => json(&s.endpoints(f)?),
        View::Portmaps => json(&s.portmaps(f)?),
        View::Nat => json(&s.nat(f)?),
        View::Counters => s.counters(f)?,
        View::Links => json(&s.links(f)?),
    })
}

fn one(s: &Snapshot, f: &Filter<'_>, v: View, as_json: bool) -> Result<(), String> {
    if as_json {
        println!("{}", view_json(s, f, v)?);
        return Ok(());
    }
    match v {
        View::Endpoints => table::endpoints(&s.endpoints(f)?),
        View::Portmaps => table::portmaps(&s.portmaps(f)?),
        View::Nat => table::nat(&s.nat(f)?),
        View::Counters => table::counters(&s.counters(f)?),
        View::Links => table::links(&s.links(f)?),
    }
    Ok(())
}

/// `inspect` alone: endpoints, portmaps, nat and counters (JSON: an object
/// with those four keys, each the view's own JSON, and `interfaces`, the
/// `ep_ifaces` map).
fn overview(s: &Snapshot, f: &Filter<'_>, as_json: bool) -> Result<(), String> {
    const VIEWS: [(&str, View); 4] = [
        ("endpoints", View::Endpoints),
        ("portmaps", View::Portmaps),
        ("nat", View::Nat),
        ("counters", View::Counters),
    ];
    if as_json {
        let mut o = serde_json::Map::new();
        for (k, v) in VIEWS {
            o.insert(k.into(), view_json(s, f, v)?);
        }
        // The anti-spoofing MAC of each host veth: part of the endpoints
        // table, listed on its own here so scripts see every map entry.
        o.insert("interfaces".into(), json(&s.interfaces(f)?));
        println!("{}", Value::Object(o));
        return Ok(());
    }
    for (i, (_, v)) in VIEWS.into_iter().enumerate() {
        if i > 0 {
            println!();
        }
        one(s, f, v, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(cid: &str, ns: &str, name: &str) -> Who {
        Who {
            container_id: cid.into(),
            pod_namespace: ns.into(),
            pod_name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn filters() {
        let pod = ("default".to_string(), "web".to_string());
        let all = Filter {
            container: None,
            pod: None,
        };
        let by_id = Filter {
            container: Some("abc"),
            pod: None,
        };
        let by_pod = Filter {
            container: None,
            pod: Some(&pod),
        };
        let w = who("abcdef", "default", "web");
        assert!(all.keeps(&w) && by_id.keeps(&w) && by_pod.keeps(&w));
        let other = who("xabc", "default", "db");
        assert!(all.keeps(&other) && !by_id.keeps(&other) && !by_pod.keeps(&other));
        // An entry nobody owns (uplink, cgroup, record gone) only without filters.
        assert!(all.keeps(&Who::default()));
        assert!(!by_id.keeps(&Who::default()) && !by_pod.keeps(&Who::default()));
    }

    #[test]
    fn pod_argument() {
        assert_eq!(
            parse_pod("kube-system/coredns-1").unwrap(),
            ("kube-system".into(), "coredns-1".into())
        );
        for bad in ["web", "/web", "ns/", ""] {
            assert!(parse_pod(bad).is_err(), "{bad}");
        }
    }
}
