//! The map entries an attachment owns: its addresses in `endpoints`, its
//! interface's MAC in `ep_ifaces` and its counters in `ep_stats`.

use std::net::IpAddr;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use cni_ebpf_common::{
    map, Counter, EndpointIface, EndpointInfo, EndpointStats, IpKey, EP_FLAG_ACTIVE, EP_FLAG_MASQ,
    IFACE_FLAG_ROUTER,
};
use ipnet::IpNet;

use super::pins::{BpfError, Datapath};

/// One row of the endpoints map, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    /// Pod address.
    pub ip: IpAddr,
    /// Value.
    pub info: EndpointInfo,
}

/// Map key of an address.
pub fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => IpKey::v4(v4.octets()),
        IpAddr::V6(v6) => IpKey::v6(v6.octets()),
    }
}

/// Address of a map key.
pub(super) fn key_ip(k: &IpKey) -> IpAddr {
    if k.family == cni_ebpf_common::FAMILY_V4 {
        IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
    } else {
        IpAddr::from(k.addr)
    }
}

impl Datapath {
    fn endpoints(&self) -> Result<HashMap<MapData, IpKey, EndpointInfo>, BpfError> {
        self.map(map::ENDPOINTS)
    }

    fn ep_ifaces(&self) -> Result<HashMap<MapData, u32, EndpointIface>, BpfError> {
        self.map(map::EP_IFACES)
    }

    fn ep_stats(&self) -> Result<PerCpuHashMap<MapData, u32, EndpointStats>, BpfError> {
        self.map(map::EP_STATS)
    }

    /// Publishes an endpoint: its counters first, then its addresses (the
    /// moment an address is in the map, its packets pass anti-spoofing).
    /// `nets` are the pod's addresses with their subnet's prefix length;
    /// `masq` marks them for masquerade; `router` lets the pod send router
    /// advertisements, redirects and DHCP server messages.
    pub fn add_endpoint(
        &self,
        nets: &[IpNet],
        ifindex: u32,
        mac: [u8; 6],
        owner: u64,
        masq: bool,
        router: bool,
    ) -> Result<(), BpfError> {
        let mut st = self.ep_stats()?;
        let zero =
            PerCpuValues::try_from(vec![
                EndpointStats::default();
                aya::util::nr_cpus().map_err(|(_, e)| BpfError::Io {
                    what: "count cpus",
                    path: String::new(),
                    source: e
                })?
            ])
            .map_err(|e| BpfError::Io {
                what: "per-cpu values",
                path: String::new(),
                source: e,
            })?;
        st.insert(ifindex, zero, 0)
            .map_err(|source| BpfError::Map {
                name: map::EP_STATS,
                what: format!("insert {ifindex}"),
                source,
            })?;
        let iface = EndpointIface {
            mac,
            flags: if router { IFACE_FLAG_ROUTER } else { 0 },
            pad: 0,
            owner,
        };
        self.ep_ifaces()?
            .insert(ifindex, iface, 0)
            .map_err(|source| BpfError::Map {
                name: map::EP_IFACES,
                what: format!("insert {ifindex}"),
                source,
            })?;
        let mut eps = self.endpoints()?;
        for net in nets {
            let ip = net.addr();
            let info = EndpointInfo {
                ifindex,
                flags: EP_FLAG_ACTIVE | if masq { EP_FLAG_MASQ } else { 0 },
                owner,
                mac,
                prefix_len: net.prefix_len(),
                pad: 0,
            };
            eps.insert(ip_key(ip), info, 0)
                .map_err(|source| BpfError::Map {
                    name: map::ENDPOINTS,
                    what: format!("insert {ip}"),
                    source,
                })?;
        }
        Ok(())
    }

    /// True when every address of `nets` is in `endpoints` exactly as
    /// [`Self::add_endpoint`] would put it, and `ifindex` has counters
    /// (repair leaves such an endpoint and its counters alone).
    pub fn has_endpoint(
        &self,
        nets: &[IpNet],
        ifindex: u32,
        mac: [u8; 6],
        owner: u64,
        masq: bool,
    ) -> bool {
        let (Ok(eps), Ok(st)) = (self.endpoints(), self.ep_stats()) else {
            return false;
        };
        st.get(&ifindex, 0).is_ok()
            && nets.iter().all(|n| {
                eps.get(&ip_key(n.addr()), 0).is_ok_and(|v| {
                    v.ifindex == ifindex
                        && v.owner == owner
                        && v.mac == mac
                        && v.prefix_len == n.prefix_len()
                        && (v.flags & EP_FLAG_MASQ != 0) == masq
                })
            })
    }

    /// Removes `ips` from `endpoints` where `owner` still owns them (an address
    /// already handed to another container is left alone), and the interface
    /// entry and counters of `ifindex`. Missing entries are fine.
    pub fn remove_endpoint(
        &self,
        ips: &[IpAddr],
        ifindex: Option<u32>,
        owner: u64,
    ) -> Result<(), BpfError> {
        let mut eps = self.endpoints()?;
        for ip in ips {
            let k = ip_key(*ip);
            if let Ok(v) = eps.get(&k, 0) {
                if v.owner == owner {
                    let _ = eps.remove(&k);
                }
            }
        }
        if let Some(ifindex) = ifindex {
            let mut ifs = self.ep_ifaces()?;
            if ifs.get(&ifindex, 0).is_ok_and(|i| i.owner == owner) {
                let _ = ifs.remove(&ifindex);
            }
            let _ = self.ep_stats()?.remove(&ifindex);
        }
        Ok(())
    }

    /// Every `ep_ifaces` entry: (host veth ifindex, value) (inspect).
    pub fn iface_entries(&self) -> Result<Vec<(u32, EndpointIface)>, BpfError> {
        Ok(self.ep_ifaces()?.iter().filter_map(Result::ok).collect())
    }

    /// Every endpoint entry (inspect, GC, DEL without state).
    pub fn endpoint_entries(&self) -> Result<Vec<EndpointEntry>, BpfError> {
        let eps = self.endpoints()?;
        Ok(eps
            .iter()
            .filter_map(Result::ok)
            .map(|(k, info)| EndpointEntry {
                ip: key_ip(&k),
                info,
            })
            .collect())
    }

    /// Removes every `endpoints` and `ep_ifaces` entry of `owner` (DEL when
    /// its state is lost).
    pub fn remove_owner(&self, owner: u64) -> Result<Vec<IpAddr>, BpfError> {
        let gone: Vec<EndpointEntry> = self
            .endpoint_entries()?
            .into_iter()
            .filter(|e| e.info.owner == owner)
            .collect();
        let mut eps = self.endpoints()?;
        for e in &gone {
            let _ = eps.remove(&ip_key(e.ip));
            let _ = self.ep_stats()?.remove(&e.info.ifindex);
        }
        let mut ifs = self.ep_ifaces()?;
        for (ifindex, _) in self
            .iface_entries()?
            .iter()
            .filter(|(_, i)| i.owner == owner)
        {
            let _ = ifs.remove(ifindex);
            let _ = self.ep_stats()?.remove(ifindex);
        }
        Ok(gone.into_iter().map(|e| e.ip).collect())
    }

    /// Summed per-endpoint counters of a host veth.
    pub fn endpoint_stats(&self, ifindex: u32) -> Option<EndpointStats> {
        let v = self.ep_stats().ok()?.get(&ifindex, 0).ok()?;
        let mut s = EndpointStats::default();
        for c in v.iter() {
            s.from_packets += c.from_packets;
            s.from_bytes += c.from_bytes;
            s.to_packets += c.to_packets;
            s.to_bytes += c.to_bytes;
            s.drop_spoofed += c.drop_spoofed;
            s.translated += c.translated;
            s.drop_nat += c.drop_nat;
        }
        Some(s)
    }

    /// Node-wide counters by name.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        let m: PerCpuArray<MapData, u64> = self.map(map::STATS)?;
        Ok(Counter::ALL
            .iter()
            .map(|(c, name)| {
                (
                    *name,
                    m.get(&(*c as u32), 0).map(|v| v.iter().sum()).unwrap_or(0),
                )
            })
            .collect())
    }
}
