//! Per-attachment records on disk, one JSON file per (network, container ID,
//! ifname), written before the kernel changes they describe so that DEL and
//! GC can undo a half-finished ADD.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Mode, PortMapping},
    datapath::AttachMode,
};

/// What one ADD set up (or is setting up).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Network name.
    pub network: String,
    /// Container ID.
    pub container_id: String,
    /// Interface name in the container.
    pub ifname: String,
    /// Netns path given at ADD.
    pub netns: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS` at ADD (empty outside Kubernetes
    /// and in records written before it was kept).
    #[serde(default)]
    pub pod_namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS` at ADD.
    #[serde(default)]
    pub pod_name: String,
    /// How the pod was wired.
    pub mode: Mode,
    /// Host-side veth name.
    pub host_veth: String,
    /// Host-side veth ifindex, once known.
    #[serde(default)]
    pub host_ifindex: Option<u32>,
    /// Container interface MAC, once known.
    #[serde(default)]
    pub mac: String,
    /// Addresses, once allocated.
    #[serde(default)]
    pub ips: Vec<IpNet>,
    /// The addresses as published in the `endpoints` map, with their
    /// subnet's prefix (differs from `ips` in routed mode, where the pod has
    /// host routes); empty = `ips`. Repair republishes these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_nets: Vec<IpNet>,
    /// `portMappings` requested at ADD (for the NAT data plane).
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// `ipMasq` of the network at ADD (for the NAT data plane).
    #[serde(default)]
    pub ip_masq: bool,
    /// `allowRouterMessages` of the network at ADD.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_router_messages: bool,
    /// How programs were attached, once they are.
    #[serde(default)]
    pub attach_mode: Option<AttachMode>,
    /// False until ADD has finished.
    #[serde(default)]
    pub complete: bool,
}

/// What can go wrong with the state directory; [`CniError`] gives each its
/// CNI code (`From<StateError> for CniError` in `cni/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation on the state directory failed.
    #[error("{what} {}", path.display())]
    Io {
        /// The operation (`read`, `write`, `lock`, ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record that does not parse.
    #[error("corrupt state record {}", path.display())]
    Corrupt {
        /// The record's file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(what: &'static str, path: &Path, e: std::io::Error) -> StateError {
    StateError::Io {
        what,
        path: path.to_path_buf(),
        source: e,
    }
}

/// The state directory of one network.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Opens `<state_dir>/<network>` and takes its lock: shared for ADD, DEL
    /// and CHECK (different containers proceed in parallel), exclusive for GC
    /// (which must not race an ADD, as the spec asks).
    pub fn open(state_dir: &Path, network: &str, exclusive: bool) -> Result<Self, StateError> {
        let dir = state_dir.join(network);
        crate::private::own_dir(&dir).map_err(|e| io_err("create state dir", &dir, e))?;
        let lock_path = dir.join(".lock");
        let lock = crate::lockfile::lock(&lock_path, exclusive)
            .map_err(|e| io_err("lock", &lock_path, e))?;
        Ok(Self { dir, _lock: lock })
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        // ':' appears in neither a container ID nor an ifname, so the name is unambiguous.
        self.dir.join(format!("{container_id}:{ifname}.json"))
    }

    /// Reads a record; `None` when there is none.
    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<Record>, StateError> {
        let p = self.path(container_id, ifname);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StateError::Corrupt {
                    path: p.clone(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p, e)),
        }
    }

    /// Writes a record atomically (temp file + rename). Not fsync'd: the
    /// rename is atomic against the process dying at any point, which is
    /// what the record guards against; after a power loss the pods' network
    /// namespaces are gone anyway and GC reconciles the records (a torn one
    /// reads as absent). An ADD writes the record four times, and four
    /// fsyncs were a third of its time on a disk-backed state directory.
    pub fn save(&self, r: &Record) -> Result<(), StateError> {
        let p = self.path(&r.container_id, &r.ifname);
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(r).expect("record serializes");
        let write = || -> std::io::Result<()> {
            let mut f = crate::private::create_file(&tmp)?;
            f.write_all(&body)?;
            std::fs::rename(&tmp, &p)
        };
        write().map_err(|e| io_err("write", &p, e))
    }

    /// Removes a record; a missing one is fine.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), StateError> {
        let p = self.path(container_id, ifname);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &p, e)),
        }
    }

    /// Every record of the network (GC).
    pub fn all(&self) -> Result<Vec<Record>, StateError> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            if let Ok(b) = std::fs::read(&p) {
                if let Ok(r) = serde_json::from_slice::<Record>(&b) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

/// Owner tag of the attachment (container ID, ifname): stored in every map
/// value it owns, and the source of its host veth name.
pub fn owner(container_id: &str, ifname: &str) -> u64 {
    cni_ebpf_common::owner_id(container_id.as_bytes(), ifname.as_bytes())
}

/// The record of the attachment with owner tag `owner`, in any network
/// (to name the holder of a hostPort in an error).
pub fn find_owner(state_dir: &Path, owner: u64) -> Option<Record> {
    owners(state_dir).remove(&owner)
}

/// Every record under `state_dir` (all networks), by owner tag (inspect).
pub fn owners(state_dir: &Path) -> std::collections::HashMap<u64, Record> {
    all_records(state_dir)
        .into_iter()
        .map(|r| (self::owner(&r.container_id, &r.ifname), r))
        .collect()
}

/// Every record under `state_dir`, all networks, read without locks (records
/// are replaced by rename, so each read sees a whole one; repair, STATUS).
pub fn all_records(state_dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    let nets = std::fs::read_dir(state_dir).into_iter().flatten().flatten();
    for net in nets {
        for f in std::fs::read_dir(net.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Ok(b) = std::fs::read(f.path()) else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<Record>(&b) {
                out.push(r);
            }
        }
    }
    out
}

/// Host-side veth name for (container ID, ifname): `veth` + 11 hex digits of
/// the owner hash, so a retried ADD or a DEL without state finds it.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = owner(container_id, ifname);
    format!("veth{:011x}", h & 0x0fff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_pod_names_still_read() {
        // A record as written before K8S_POD_NAMESPACE/K8S_POD_NAME were kept.
        let old = r#"{"network":"n","containerId":"c1","ifname":"eth0","netns":"/x","mode":"bridge",
            "hostVeth":"veth0","hostIfindex":7,"mac":"","ips":["10.0.0.2/24"],"complete":true}"#;
        let r: Record = serde_json::from_str(old).unwrap();
        assert_eq!((r.pod_namespace.as_str(), r.pod_name.as_str()), ("", ""));
        assert_eq!(r.host_ifindex, Some(7));
    }

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_eq!(a.len(), 15);
    }
}
