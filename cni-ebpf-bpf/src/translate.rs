//! The NAT decisions shared by the hooks: which hostPort a packet is for, the
//! live translation of a flow, remembering the reply direction of a new one,
//! and per-endpoint counting.

use cni_ebpf_common::{
    nat_flag, nat_kind, proto, Counter, EndpointInfo, EndpointStats, IpKey, NatKey, NatValue,
    PortKey, PortTarget, FAMILY_V4, NAT_STAMP_NS,
};

use crate::{
    maps::{count, endpoints, ep_stats, nat, nat_est, nat_in, nat_quota, node_addrs, portmap},
    rewrite::Target,
};

/// `BPF_ANY`.
const BPF_ANY: u64 = 0;

/// Map key of an address in a tuple.
#[inline(always)]
pub fn ip_key(family: u8, addr: &[u8; 16]) -> IpKey {
    IpKey {
        family,
        pad: [0; 3],
        addr: *addr,
    }
}

/// The endpoint that owns `addr`, if any.
#[inline(always)]
pub fn endpoint(family: u8, addr: &[u8; 16]) -> Option<&'static EndpointInfo> {
    // SAFETY: the value is only read.
    unsafe { endpoints.get(ip_key(family, addr)) }
}

/// Loopback destinations (127/8, ::1) are reachable only through the socket
/// hooks, never by a packet: one arriving on an uplink or from a pod with such
/// a destination is not translated (CVE-2020-8558).
#[inline(always)]
pub fn is_loopback(family: u8, a: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        a[0] == 127
    } else {
        a[..15] == [0; 15] && a[15] == 1
    }
}

/// True if `addr` is one of the node's own addresses.
#[inline(always)]
pub fn is_node_addr(family: u8, addr: &[u8; 16]) -> bool {
    // SAFETY: only tested for presence.
    unsafe { node_addrs.get(ip_key(family, addr)) }.is_some()
}

/// The hostPort mapping a packet to `key.daddr:key.dport` hits, only if the
/// address is the node's own (as the reference `portmap`'s `--dst-type
/// LOCAL`): one bound to that exact address, else one without hostIP. A
/// mapping whose hostIP is not (or no longer) a node address never matches,
/// so it cannot take the traffic of a host, a server or a pod that has it.
#[inline(never)]
pub fn hostport(key: &NatKey) -> Option<PortTarget> {
    if !matches!(key.proto, proto::TCP | proto::UDP | proto::SCTP) {
        return None;
    }
    if !is_node_addr(key.family, &key.daddr) {
        return None;
    }
    let mut pk = PortKey {
        proto: key.proto,
        family: key.family,
        host_port: key.dport,
        host_ip: key.daddr,
    };
    // SAFETY: values are only read (copied out).
    if let Some(t) = unsafe { portmap.get(pk) } {
        return Some(*t);
    }
    pk.host_ip = [0; 16];
    // SAFETY: as above.
    unsafe { portmap.get(pk) }.copied()
}

/// The address whose endpoint a translation belongs to.
#[inline(always)]
fn pod_addr<'a>(key: &'a NatKey, v: &'a NatValue) -> &'a [u8; 16] {
    if v.kind == nat_kind::MASQ_REPLY {
        &v.daddr
    } else {
        &key.saddr
    }
}

/// The translation of `key` (into `v`) and the host ifindex of its pod, if
/// it is still valid: its pod's address still belongs to the owner that made
/// it. 0 if there is none; a stale entry (pod deleted, address reused) is
/// removed and counted. (An out-parameter: a returned `Option` would cost
/// every caller a second copy of the limited stack.)
#[inline(never)]
pub fn live(key: &NatKey, v: &mut NatValue) -> u32 {
    let mut at = 0;
    live_at(key, v, &mut at)
}

/// [`live`], also saying in which map the entry is (`at`: [`AT_EST`] ...).
#[inline(never)]
pub fn live_at(key: &NatKey, v: &mut NatValue, at_out: &mut u8) -> u32 {
    // Established flows first (most packets), then new ones, then what
    // came from outside. SAFETY: copied out at once; entries may be
    // replaced concurrently.
    let at = if let Some(cur) = unsafe { nat_est.get(key) } {
        *v = *cur;
        AT_EST
    } else if let Some(cur) = unsafe { nat.get(key) } {
        *v = *cur;
        AT_NAT
    } else if let Some(cur) = unsafe { nat_in.get(key) } {
        *v = *cur;
        AT_IN
    } else {
        return 0;
    };
    *at_out = at;
    match endpoint(key.family, pod_addr(key, v)) {
        Some(ep) if ep.owner == v.owner => ep.ifindex,
        _ => {
            if at == AT_EST {
                est_remove(key, v.owner);
            } else if at == AT_NAT {
                let _ = nat.remove(key);
            } else {
                let _ = nat_in.remove(key);
            }
            count(Counter::NatStale);
            0
        }
    }
}

/// Which map an entry was found in: `nat_est`, `nat`, `nat_in`.
pub const AT_EST: u8 = 1;
/// See [`AT_EST`].
pub const AT_NAT: u8 = 2;
/// See [`AT_EST`].
pub const AT_IN: u8 = 3;

/// Adds `delta` to the `nat_est` count of `owner` (not atomic: a lost
/// update only skews the quota until GC recounts).
#[inline(always)]
pub fn quota_add(owner: u64, delta: i32) {
    match quota_ptr(owner) {
        Some(p) => {
            // SAFETY: a live map value.
            let q = unsafe { &mut *p };
            *q = q.saturating_add_signed(delta);
        }
        None if delta > 0 => {
            let _ = nat_quota.insert(&owner, &(delta as u32), BPF_ANY);
        }
        None => {}
    }
}

#[inline(always)]
fn quota_ptr(owner: u64) -> Option<*mut u32> {
    nat_quota.get_ptr_mut(&owner)
}

/// `owner`'s count of `nat_est` entries.
#[inline(always)]
pub fn quota_of(owner: u64) -> u32 {
    // SAFETY: copied out.
    unsafe { nat_quota.get(&owner) }.copied().unwrap_or(0)
}

/// Removes `key` from `nat_est` (if there) and counts it off `owner`.
#[inline(never)]
pub fn est_remove(key: &NatKey, owner: u64) {
    if nat_est.remove(key).is_ok() {
        quota_add(owner, -1);
    }
}

/// True for the kinds of state that packets from outside create: they live
/// in `nat_in`, where their floods cannot evict a pod's translations.
#[inline(always)]
fn from_outside(kind: u8) -> bool {
    kind == nat_kind::HOSTPORT_REPLY || kind == nat_kind::PASS
}

/// Monotonic time in ns.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// Records activity on the entry `key` (a packet of its flow just passed):
/// the time (at most every `NAT_STAMP_NS`) and TCP FIN/RST.
#[inline(never)]
pub fn touch(key: &NatKey, tcp_flags: u8) {
    let Some(p) = nat_est.get_ptr_mut(key).or_else(|| nat.get_ptr_mut(key)) else {
        return;
    };
    let t = now();
    // SAFETY: a live map value; concurrent writers only store the same kind
    // of monotonic time or set bits, so a lost update is harmless.
    let v = unsafe { &mut *p };
    if t.wrapping_sub(v.stamp) > NAT_STAMP_NS {
        v.stamp = t;
    }
    let mut fl = 0;
    if tcp_flags & 0x01 != 0 {
        fl |= nat_flag::FIN;
    }
    if tcp_flags & 0x04 != 0 {
        fl |= nat_flag::RST;
    }
    if fl == 0 || v.flags & fl == fl {
        return;
    }
    if fl & nat_flag::FIN != 0 && v.flags & nat_flag::FIN == 0 && !peer_fin(key, v) {
        fl |= nat_flag::FIN_FIRST;
    }
    v.flags |= fl;
}

/// True if the other direction of the flow of `key` -> `v` saw a FIN.
#[inline(never)]
fn peer_fin(key: &NatKey, v: &NatValue) -> bool {
    let pk = NatKey {
        saddr: v.daddr,
        daddr: v.saddr,
        sport: v.dport,
        dport: v.sport,
        proto: key.proto,
        family: key.family,
        scope: key.scope,
        pad: 0,
    };
    // SAFETY: only a flag is read.
    unsafe { nat_est.get(&pk).or_else(|| nat.get(&pk)) }
        .is_some_and(|p| p.flags & nat_flag::FIN != 0)
}

/// The reply direction of a translation: `key` became `to`, so a reply to
/// `to` (reversed) must become `key` (reversed).
#[inline(always)]
pub fn reply_of(
    key: &NatKey,
    to: &Target,
    kind: u8,
    owner: u64,
    rk: &mut NatKey,
    rv: &mut NatValue,
) {
    rk.saddr = to.daddr;
    rk.daddr = to.saddr;
    rk.sport = to.dport;
    rk.dport = to.sport;
    rk.proto = key.proto;
    rk.family = key.family;
    rk.scope = key.scope;
    rk.pad = 0;
    rv.saddr = key.daddr;
    rv.daddr = key.saddr;
    rv.sport = key.dport;
    rv.dport = key.sport;
    rv.kind = kind;
    rv.flags = 0;
    rv.pad = [0; 2];
    rv.owner = owner;
    rv.stamp = now();
}

/// Makes sure the reply of `key` -> `to` is translated back (written only
/// when missing or different, so established flows cost a lookup, not an
/// update). True when it was written: a new translation.
#[inline(never)]
pub fn remember_reply(key: &NatKey, to: &Target, kind: u8, owner: u64) -> bool {
    let mut rk = NatKey::default();
    let mut rv = NatValue::default();
    reply_of(key, to, kind, owner, &mut rk, &mut rv);
    let outside = from_outside(kind);
    // SAFETY: compared by value.
    let cur = if outside {
        unsafe { nat_in.get(&rk) }
    } else {
        unsafe { nat.get(&rk) }
    };
    if let Some(cur) = cur {
        if cur.saddr == rv.saddr
            && cur.daddr == rv.daddr
            && cur.sport == rv.sport
            && cur.dport == rv.dport
            && cur.kind == rv.kind
            && cur.owner == rv.owner
        {
            return false;
        }
    }
    let _ = if outside {
        nat_in.insert(&rk, &rv, BPF_ANY)
    } else {
        nat.insert(&rk, &rv, BPF_ANY)
    };
    true
}

#[inline(always)]
fn stats(ifindex: u32) -> Option<&'static mut EndpointStats> {
    // SAFETY: per-CPU value; only this CPU touches it during this program run.
    ep_stats.get_ptr_mut(ifindex).map(|p| unsafe { &mut *p })
}

/// Counts a translated packet node-wide and for its endpoint.
#[inline(always)]
pub fn translated(c: Counter, ifindex: u32) {
    count(c);
    if let Some(st) = stats(ifindex) {
        st.translated += 1;
    }
}

/// Counts a packet dropped by NAT node-wide and for its endpoint.
#[inline(always)]
pub fn dropped(c: Counter, ifindex: u32) {
    count(c);
    if let Some(st) = stats(ifindex) {
        st.drop_nat += 1;
    }
}

/// A packet that starts a flow the NAT does not translate (a TCP SYN, or any
/// UDP datagram) straight to a pod: a reply translation left behind by an
/// earlier translated flow with the same ports would capture this flow's
/// replies, so it is dropped. (Reply entries carry no TCP state; this keeps
/// a reused 4-tuple correct.)
#[inline(never)]
pub fn forget_reply(key: &NatKey) {
    let rk = NatKey {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        scope: key.scope,
        pad: 0,
    };
    // SAFETY: only tested for presence.
    if unsafe { nat.get(&rk) }.is_some() {
        let _ = nat.remove(&rk);
    }
    // SAFETY: as above.
    if unsafe { nat_in.get(&rk) }.is_some() {
        let _ = nat_in.remove(&rk);
    }
    // SAFETY: the owner is copied out.
    if let Some(owner) = unsafe { nat_est.get(&rk) }.map(|v| v.owner) {
        est_remove(&rk, owner);
    }
}
