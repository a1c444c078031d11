//! Reading (and pruning) the `nat` map: the translations of live flows.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{HashMap, MapData};
use cni_ebpf_common::{map, nat_kind, scope, IpKey, NatKey, NatValue};

use super::{
    endpoints::key_ip,
    pins::{BpfError, Datapath},
};

/// One `nat` entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatEntry {
    /// `hostport-reply`, `hairpin-reply`, `masquerade`, `masquerade-reply`.
    pub kind: &'static str,
    /// `pod` (host veth) or `uplink`.
    pub scope: &'static str,
    /// IP protocol number.
    pub proto: u8,
    /// The flow as the hook sees it.
    pub from: (SocketAddr, SocketAddr),
    /// What it becomes.
    pub to: (SocketAddr, SocketAddr),
    /// Owner tag.
    pub owner: u64,
    /// The pod's address still belongs to `owner` (else the programs
    /// discard the entry on its next use).
    pub live: bool,
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    key_ip(&IpKey {
        family,
        pad: [0; 3],
        addr: *a,
    })
}

fn kind_name(k: u8) -> &'static str {
    match k {
        nat_kind::HOSTPORT_REPLY => "hostport-reply",
        nat_kind::HAIRPIN_REPLY => "hairpin-reply",
        nat_kind::MASQ => "masquerade",
        nat_kind::MASQ_REPLY => "masquerade-reply",
        nat_kind::PASS => "pass",
        _ => "unknown",
    }
}

impl Datapath {
    fn nat(&self) -> Result<HashMap<MapData, NatKey, NatValue>, BpfError> {
        self.map(map::NAT)
    }

    /// `nat_in`, if this data path has it (one pinned by an older build
    /// does not).
    fn nat_in(&self) -> Option<HashMap<MapData, NatKey, NatValue>> {
        self.map(map::NAT_IN).ok()
    }

    /// Every raw `nat` entry with whether it is still live: its pod's
    /// address (as the programs pick it) still has the entry's owner.
    fn raw_entries(&self) -> Result<Vec<(NatKey, NatValue, bool)>, BpfError> {
        let owners: std::collections::HashMap<IpAddr, u64> = self
            .endpoint_entries()?
            .into_iter()
            .map(|e| (e.ip, e.info.owner))
            .collect();
        let mut all: Vec<(NatKey, NatValue)> = self.nat()?.iter().filter_map(Result::ok).collect();
        if let Some(m) = self.nat_in() {
            all.extend(m.iter().filter_map(Result::ok));
        }
        Ok(all
            .into_iter()
            .map(|(k, v)| {
                let pod = if v.kind == nat_kind::MASQ_REPLY {
                    addr(k.family, &v.daddr)
                } else {
                    addr(k.family, &k.saddr)
                };
                let live = owners.get(&pod) == Some(&v.owner);
                (k, v, live)
            })
            .collect())
    }

    /// Every `nat` entry, decoded, with whether it is still live.
    pub fn nat_entries(&self) -> Result<Vec<NatEntry>, BpfError> {
        Ok(self
            .raw_entries()?
            .into_iter()
            .map(|(k, v, live)| {
                let f = k.family;
                let sock = |a: &[u8; 16], p: u16| SocketAddr::new(addr(f, a), u16::from_be(p));
                NatEntry {
                    kind: kind_name(v.kind),
                    scope: if k.scope == scope::POD {
                        "pod"
                    } else {
                        "uplink"
                    },
                    proto: k.proto,
                    from: (sock(&k.saddr, k.sport), sock(&k.daddr, k.dport)),
                    to: (sock(&v.saddr, v.sport), sock(&v.daddr, v.dport)),
                    owner: v.owner,
                    live,
                }
            })
            .collect())
    }

    /// Removes entries whose pod is gone (GC); returns how many.
    pub fn prune_nat(&self) -> Result<usize, BpfError> {
        let stale: Vec<NatKey> = self
            .raw_entries()?
            .into_iter()
            .filter(|(_, _, live)| !live)
            .map(|(k, _, _)| k)
            .collect();
        let mut m = self.nat()?;
        let mut inbound = self.nat_in();
        for k in &stale {
            if m.remove(k).is_err() {
                if let Some(i) = inbound.as_mut() {
                    let _ = i.remove(k);
                }
            }
        }
        Ok(stale.len())
    }
}
