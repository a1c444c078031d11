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

    /// `nat_est`, likewise.
    fn nat_est(&self) -> Option<HashMap<MapData, NatKey, NatValue>> {
        self.map(map::NAT_EST).ok()
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
        for m in [self.nat_in(), self.nat_est()].into_iter().flatten() {
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
        let mut others: Vec<_> = [self.nat_in(), self.nat_est()]
            .into_iter()
            .flatten()
            .collect();
        for k in &stale {
            if m.remove(k).is_err() {
                for o in others.iter_mut() {
                    let _ = o.remove(k);
                }
            }
        }
        let over = self.prune_over_established();
        self.recount_quota();
        self.recount_share();
        Ok(stale.len() + over)
    }

    /// Removes the established flows (`nat_est`, both entries) that are
    /// over by the programs' own rule (closed, or idle past the protocol's
    /// timeout): that map is not LRU, nothing else takes their room back.
    fn prune_over_established(&self) -> usize {
        use cni_ebpf_common::{
            nat_flag, proto, NAT_CLOSED_REUSE_NS, NAT_IDLE_DGRAM_NS, NAT_IDLE_TCP_NS,
            NAT_TIME_WAIT_NS,
        };
        let Some(mut est) = self.nat_est() else {
            return 0;
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is valid for the kernel to write. CLOCK_MONOTONIC is
        // the clock of bpf_ktime_get_ns.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
            return 0;
        }
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let all: std::collections::HashMap<NatKey, NatValue> =
            est.iter().filter_map(Result::ok).collect();
        let mut gone = Vec::new();
        for (k, v) in &all {
            if v.kind != nat_kind::MASQ {
                continue;
            }
            let rk = NatKey {
                saddr: v.daddr,
                daddr: v.saddr,
                sport: v.dport,
                dport: v.sport,
                proto: k.proto,
                family: k.family,
                scope: k.scope,
                pad: 0,
            };
            let (r_flags, r_stamp) = all.get(&rk).map_or((0, 0), |r| (r.flags, r.stamp));
            let idle = now.saturating_sub(v.stamp.max(r_stamp));
            let wait = if r_flags & nat_flag::FIN_FIRST != 0 {
                NAT_TIME_WAIT_NS
            } else {
                NAT_CLOSED_REUSE_NS
            };
            let closed = ((v.flags | r_flags) & nat_flag::RST != 0 && idle > NAT_CLOSED_REUSE_NS)
                || (v.flags & r_flags & nat_flag::FIN != 0 && idle > wait);
            let timeout = if k.proto == proto::TCP {
                NAT_IDLE_TCP_NS
            } else {
                NAT_IDLE_DGRAM_NS
            };
            if closed || idle > timeout {
                gone.push(*k);
                gone.push(rk);
            }
        }
        let mut n = 0;
        for k in &gone {
            if est.remove(k).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Sets every owner's `nat_quota` count to what it holds in `nat_est`
    /// (the programs update it without atomics), dropping owners with none.
    fn recount_quota(&self) {
        let (Some(est), Ok(mut q)) = (
            self.nat_est(),
            self.map::<HashMap<MapData, u64, u32>>(map::NAT_QUOTA),
        ) else {
            return;
        };
        let mut held: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
        for (_, v) in est.iter().filter_map(Result::ok) {
            *held.entry(v.owner).or_default() += 1;
        }
        let known: Vec<u64> = q.keys().filter_map(Result::ok).collect();
        for o in known {
            if !held.contains_key(&o) {
                let _ = q.remove(&o);
            }
        }
        for (o, n) in held {
            let _ = q.insert(o, n, 0);
        }
    }

    /// Sets every `nat_share` count to the masquerade ports its owner's
    /// live flows hold to that destination (reply entries in `nat` and
    /// `nat_est` whose flow is not over by the programs' rule), dropping
    /// the rest: the programs count a port off only when it is taken over,
    /// so flows that ended, LRU evictions and lost updates are settled here.
    fn recount_share(&self) {
        use cni_ebpf_common::{nat_flag, ShareKey};
        let Ok(mut q) = self.map::<HashMap<MapData, ShareKey, u32>>(map::NAT_SHARE) else {
            return;
        };
        let Some(now) = monotonic_ns() else {
            return;
        };
        let mut all: std::collections::HashMap<NatKey, NatValue> = std::collections::HashMap::new();
        if let Ok(m) = self.nat() {
            all.extend(m.iter().filter_map(Result::ok));
        }
        if let Some(m) = self.nat_est() {
            all.extend(m.iter().filter_map(Result::ok));
        }
        let mut held: std::collections::HashMap<ShareKey, u32> = std::collections::HashMap::new();
        for (rk, rv) in &all {
            if rv.kind != nat_kind::MASQ_REPLY {
                continue;
            }
            let fk = NatKey {
                saddr: rv.daddr,
                daddr: rk.saddr,
                sport: rv.dport,
                dport: rk.sport,
                proto: rk.proto,
                family: rk.family,
                scope: rk.scope,
                pad: 0,
            };
            let (f_flags, f_stamp) = all
                .get(&fk)
                .map_or((nat_flag::RST, 0), |f| (f.flags, f.stamp));
            if flow_over(now, rk.proto, rv.flags, rv.stamp, f_flags, f_stamp) {
                continue;
            }
            let k = ShareKey {
                owner: rv.owner,
                daddr: rk.saddr,
                dport: rk.sport,
                proto: rk.proto,
                family: rk.family,
                pad: [0; 4],
            };
            *held.entry(k).or_default() += 1;
        }
        let known: Vec<ShareKey> = q.keys().filter_map(Result::ok).collect();
        for k in known {
            if !held.contains_key(&k) {
                let _ = q.remove(&k);
            }
        }
        for (k, n) in held {
            let _ = q.insert(k, n, 0);
        }
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for the kernel to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The programs' rule (`over` in the uplink programs): a masqueraded flow
/// whose reply entry has `e_flags`/`e_stamp` and forward entry
/// `f_flags`/`f_stamp` is over when closed (RST, or FIN both ways, longer
/// ago than the grace) or idle past its protocol's timeout.
fn flow_over(now: u64, proto_: u8, e_flags: u8, e_stamp: u64, f_flags: u8, f_stamp: u64) -> bool {
    use cni_ebpf_common::{
        nat_flag, proto, NAT_CLOSED_REUSE_NS, NAT_IDLE_DGRAM_NS, NAT_IDLE_TCP_NS, NAT_TIME_WAIT_NS,
    };
    let idle = now.saturating_sub(e_stamp.max(f_stamp));
    let both_fin = e_flags & nat_flag::FIN != 0 && f_flags & nat_flag::FIN != 0;
    let wait = if e_flags & nat_flag::FIN_FIRST != 0 {
        NAT_TIME_WAIT_NS
    } else {
        NAT_CLOSED_REUSE_NS
    };
    let closed = ((e_flags | f_flags) & nat_flag::RST != 0 && idle > NAT_CLOSED_REUSE_NS)
        || (both_fin && idle > wait);
    let timeout = if proto_ == proto::TCP {
        NAT_IDLE_TCP_NS
    } else {
        NAT_IDLE_DGRAM_NS
    };
    closed || idle > timeout
}
