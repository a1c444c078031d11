//! hostPort mappings in the `portmap` map: one entry per (protocol, family,
//! hostIP or any, hostPort), owned by one attachment. Inserting with
//! `BPF_NOEXIST` is the ownership check, so two concurrent ADDs can never both
//! win a port.

use std::net::IpAddr;

use aya::maps::{HashMap, MapData, MapError};
use cni_ebpf_common::{map, proto, PortKey, PortTarget, FAMILY_V4, FAMILY_V6};

use super::{
    endpoints::{ip_key, key_ip},
    pins::{BpfError, Datapath},
};
use crate::config::PortMapping;

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// `portMappings` protocol names and their IP protocol numbers.
const PROTOCOLS: [(&str, u8); 3] = [
    ("tcp", proto::TCP),
    ("udp", proto::UDP),
    ("sctp", proto::SCTP),
];

/// Name of an IP protocol number: `tcp`, `udp`, `sctp`, `icmp`, `icmpv6`.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        58 => "icmpv6",
        _ => PROTOCOLS
            .iter()
            .find(|(_, n)| *n == p)
            .map_or("other", |(name, _)| name),
    }
}

/// One `portmap` entry, decoded (inspect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// `tcp`, `udp`, `sctp`.
    pub protocol: &'static str,
    /// Node address the mapping is limited to; `None` = every node address.
    pub host_ip: Option<IpAddr>,
    /// Host port.
    pub host_port: u16,
    /// Pod address.
    pub pod_ip: IpAddr,
    /// Container port.
    pub container_port: u16,
    /// Owner tag.
    pub owner: u64,
}

/// Why a set of mappings could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Another attachment holds the port.
    #[error("{protocol} hostPort {host_port}{} is already mapped by another container", if host_ip.is_empty() { String::new() } else { format!(" on {host_ip}") })]
    Conflict {
        /// `tcp`, `udp`, `sctp`.
        protocol: String,
        /// The port.
        host_port: u32,
        /// The hostIP of the mapping ("" = any).
        host_ip: String,
        /// Owner tag of the holder.
        owner: u64,
    },
    /// The map could not be used.
    #[error(transparent)]
    Bpf(#[from] Box<BpfError>),
}

/// The map entries for `mappings` of a pod with addresses `pod_ips`: a
/// mapping without hostIP applies to each address family the pod has, one
/// with hostIP only to that family.
pub fn entries<'a>(
    mappings: &'a [PortMapping],
    pod_ips: &[IpAddr],
    owner: u64,
) -> Vec<(PortKey, PortTarget, &'a PortMapping)> {
    let mut out = Vec::new();
    for m in mappings {
        let proto = PROTOCOLS
            .iter()
            .find(|(name, _)| *name == m.protocol)
            .map_or(proto::TCP, |(_, n)| *n);
        let host_ip: Option<IpAddr> = m.host_ip.parse().ok();
        for pod in pod_ips {
            if host_ip.is_some_and(|h| h.is_ipv4() != pod.is_ipv4()) {
                continue;
            }
            let key = PortKey {
                proto,
                family: if pod.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 },
                host_port: (m.host_port as u16).to_be(),
                host_ip: host_ip.map(|h| ip_key(h).addr).unwrap_or([0; 16]),
            };
            let target = PortTarget {
                pod_ip: ip_key(*pod).addr,
                container_port: (m.container_port as u16).to_be(),
                pad: [0; 6],
                owner,
            };
            out.push((key, target, m));
        }
    }
    out
}

impl Datapath {
    fn portmap(&self) -> Result<HashMap<MapData, PortKey, PortTarget>, BpfError> {
        self.map(map::PORTMAP)
    }

    /// Installs the mappings of `owner`, or none of them: on a conflict the
    /// entries this call inserted are removed again.
    pub fn claim_ports(
        &self,
        mappings: &[PortMapping],
        pod_ips: &[IpAddr],
        owner: u64,
    ) -> Result<(), PortError> {
        let mut pm = self.portmap().map_err(Box::new)?;
        let mut done: Vec<PortKey> = Vec::new();
        let mut result = Ok(());
        for (k, v, m) in entries(mappings, pod_ips, owner) {
            match pm.insert(k, v, BPF_NOEXIST) {
                Ok(()) => done.push(k),
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                {
                    match pm.get(&k, 0) {
                        // Ours already (a retried ADD): refresh it.
                        Ok(cur) if cur.owner == owner => {
                            let _ = pm.insert(k, v, 0);
                        }
                        Ok(cur) => {
                            result = Err(PortError::Conflict {
                                protocol: m.protocol.clone(),
                                host_port: m.host_port,
                                host_ip: m.host_ip.clone(),
                                owner: cur.owner,
                            });
                            break;
                        }
                        // Removed between our insert and get: take it.
                        Err(_) => {
                            let _ = pm.insert(k, v, 0);
                            done.push(k);
                        }
                    }
                }
                Err(source) => {
                    result = Err(PortError::Bpf(Box::new(BpfError::Map {
                        name: map::PORTMAP,
                        what: format!("insert hostPort {}", m.host_port),
                        source,
                    })));
                    break;
                }
            }
        }
        if result.is_err() {
            for k in done {
                let _ = pm.remove(&k);
            }
        }
        result
    }

    /// The first of `mappings` that another attachment holds for a pod with
    /// addresses of the families of `pod_ips` (only their family matters):
    /// ADD asks before it allocates addresses, so a port conflict leaves even
    /// the IPAM round-robin cursor alone. [`Datapath::claim_ports`] remains
    /// the authoritative check against a concurrent ADD.
    pub fn check_ports(
        &self,
        mappings: &[PortMapping],
        pod_ips: &[IpAddr],
        owner: u64,
    ) -> Result<(), PortError> {
        if mappings.is_empty() {
            return Ok(());
        }
        let pm = self.portmap().map_err(Box::new)?;
        for (k, _, m) in entries(mappings, pod_ips, owner) {
            if let Ok(cur) = pm.get(&k, 0) {
                if cur.owner != owner {
                    return Err(PortError::Conflict {
                        protocol: m.protocol.clone(),
                        host_port: m.host_port,
                        host_ip: m.host_ip.clone(),
                        owner: cur.owner,
                    });
                }
            }
        }
        Ok(())
    }

    /// Removes every mapping `owner` holds among `mappings` (or, without
    /// them, found by scanning the map). Entries of other owners stay.
    pub fn release_ports(
        &self,
        mappings: Option<(&[PortMapping], &[IpAddr])>,
        owner: u64,
    ) -> Result<(), BpfError> {
        if !self.map_path(map::PORTMAP).exists() {
            return Ok(());
        }
        let mut pm = self.portmap()?;
        let keys: Vec<PortKey> = match mappings {
            Some((m, ips)) => entries(m, ips, owner)
                .into_iter()
                .map(|(k, _, _)| k)
                .collect(),
            None => pm
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, v)| v.owner == owner)
                .map(|(k, _)| k)
                .collect(),
        };
        for k in keys {
            if pm.get(&k, 0).is_ok_and(|v| v.owner == owner) {
                let _ = pm.remove(&k);
            }
        }
        Ok(())
    }

    /// Every mapping (inspect).
    pub fn port_entries(&self) -> Result<Vec<PortEntry>, BpfError> {
        let ip = |family, addr| {
            key_ip(&cni_ebpf_common::IpKey {
                family,
                pad: [0; 3],
                addr,
            })
        };
        Ok(self
            .portmap()?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| PortEntry {
                protocol: proto_name(k.proto),
                host_ip: (k.host_ip != [0; 16]).then(|| ip(k.family, k.host_ip)),
                host_port: u16::from_be(k.host_port),
                pod_ip: ip(k.family, v.pod_ip),
                container_port: u16::from_be(v.container_port),
                owner: v.owner,
            })
            .collect())
    }
}
