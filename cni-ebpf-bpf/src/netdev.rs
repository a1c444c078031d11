//! The uplink programs: the node's edge.
//!
//! `from_netdev` (uplink ingress) translates hostPort packets to their pod and
//! replies of masqueraded flows back to theirs; `to_netdev` (uplink egress)
//! translates hostPort replies back to `nodeIP:hostPort` and masquerades pod
//! flows. The host stack in between (routing, conntrack, firewall) only ever
//! sees pod addresses for these flows.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use cni_ebpf_common::{
    nat_flag, nat_kind, nat_pod_share, proto, scope, Counter, NatKey, NatScratch, NatValue,
    ShareKey, EP_FLAG_MASQ, FAMILY_V4, NAT_CLOSED_REUSE_NS, NAT_IDLE_DGRAM_NS, NAT_IDLE_TCP_NS,
    NAT_TIME_WAIT_NS,
};

use crate::{
    events::{drop_event, flow_event},
    flow::{parse, parse_inner, Flow, Inner, IPPROTO_ICMP, IPPROTO_ICMPV6},
    maps::{count, nat, nat_est, nat_share, no_masq_hit, scratch, settings, uplinks},
    rewrite::{rewrite, rewrite_icmp_error, Target},
    translate::{
        dropped, endpoint, est_remove, forget_reply, hostport, is_loopback, is_node_addr, live,
        live_at, now, quota_add, quota_of, remember_reply, reply_of, touch, translated, AT_NAT,
    },
};

/// `BPF_NOEXIST`.
const BPF_NOEXIST: u64 = 1;
/// Random probes for a free masquerade port before giving up on a packet.
const PORT_PROBES: u32 = 8;

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: context field read, rewritten by the verifier.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Uplink ingress.
#[inline(never)]
pub fn from_netdev(ctx: &TcContext) -> i32 {
    let mut f = Flow::default();
    if parse(ctx, &mut f) {
        f.key.scope = scope::NETDEV;
        if f.icmp_err {
            return icmp_error(ctx, &f, false);
        } else if !known_flow(ctx, &f)
            && !is_loopback(f.key.family, &f.key.daddr)
            && !to_hostport(ctx, &f)
        {
            return inbound(ctx, &f);
        }
    }
    TC_ACT_OK as i32
}

/// Uplink egress.
#[inline(never)]
pub fn to_netdev(ctx: &TcContext) -> i32 {
    let mut f = Flow::default();
    if !parse(ctx, &mut f) {
        return TC_ACT_OK as i32;
    }
    f.key.scope = scope::NETDEV;
    if f.icmp_err {
        return icmp_error(ctx, &f, true);
    }
    if known_flow(ctx, &f) {
        return TC_ACT_OK as i32;
    }
    masquerade(ctx, &f)
}

/// A packet of a flow with a live translation (a masqueraded flow either
/// way, a hostPort reply): translated. False if there is none.
#[inline(never)]
fn known_flow(ctx: &TcContext, f: &Flow) -> bool {
    let mut v = NatValue::default();
    let mut at = 0;
    let ep = live_at(&f.key, &mut v, &mut at);
    if ep == 0 {
        return false;
    }
    if v.kind == nat_kind::PASS {
        return true;
    }
    if v.kind == nat_kind::MASQ || v.kind == nat_kind::MASQ_REPLY {
        touch(&f.key, f.tcp_flags);
    }
    // The first reply of a masqueraded flow: it is established.
    if v.kind == nat_kind::MASQ_REPLY && at == AT_NAT {
        promote(&f.key, &v);
    }
    if rewrite(ctx, f, &Target::of(&v)) {
        let c = if v.kind == nat_kind::MASQ {
            Counter::NatMasq
        } else {
            Counter::NatReply
        };
        translated(c, ep);
    }
    true
}

/// A packet from outside straight to an address (no translation). Its
/// replies must leave untranslated: a new TCP connection drops any reply
/// entry left by an earlier translated flow with the same ports (and
/// masquerade only starts flows at a SYN); a UDP flow to a masquerading pod
/// gets a pass-through entry, so its replies are not masqueraded.
///
/// It may only create state where no live flow holds it: a packet to the
/// pod's address and port of one of its live masqueraded flows, from (or
/// spoofed as) that flow's peer, would delete or replace the flow's
/// translation (its next packets would leave with the pod address, the
/// connection dies or masquerade silently stops). It is no packet of that
/// flow (whose replies come to the node address), so it is dropped, as
/// conntrack refuses a tuple that clashes with a confirmed one.
#[inline(never)]
fn inbound(ctx: &TcContext, f: &Flow) -> i32 {
    let ok = TC_ACT_OK as i32;
    if !f.syn && !f.udp {
        return ok;
    }
    let pod_if = live_masq_holds(&f.key);
    if pod_if != 0 {
        dropped(Counter::DropNatConflict, pod_if);
        drop_event(ctx, Counter::DropNatConflict, pod_if);
        return TC_ACT_SHOT as i32;
    }
    if f.syn {
        forget_reply(&f.key);
        return ok;
    }
    let key = &f.key;
    match endpoint(key.family, &key.daddr) {
        Some(ep) if ep.flags & EP_FLAG_MASQ != 0 => {
            let owner = ep.owner;
            // A masqueraded flow of this tuple that is over (a live one was
            // refused above) would take precedence over the pass-through
            // entry, which lives in the other map.
            forget_masq(key);
            let same = Target {
                saddr: key.saddr,
                daddr: key.daddr,
                sport: key.sport,
                dport: key.dport,
            };
            let _ = remember_reply(key, &same, nat_kind::PASS, owner);
        }
        _ => forget_reply(key),
    }
    ok
}

/// Moves an established masqueraded flow (`rk` -> `rv` is its reply entry,
/// just used by its first reply) from the LRU `nat` to `nat_est`, where no
/// flood evicts it, if its pod's quota allows; else it stays (counted).
#[inline(never)]
fn promote(rk: &NatKey, rv: &NatValue) {
    let quota = settings().est_quota;
    let owner = rv.owner;
    if quota == 0 || quota_of(owner) >= quota {
        count(Counter::NatEstRefused);
        return;
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
    // SAFETY: copied out.
    let Some(fv) = (unsafe { nat.get(&fk) }).copied() else {
        return;
    };
    if fv.kind != nat_kind::MASQ || fv.owner != owner {
        return;
    }
    if nat_est.insert(&fk, &fv, BPF_NOEXIST).is_err() {
        count(Counter::NatEstRefused);
        return;
    }
    if nat_est.insert(rk, rv, BPF_NOEXIST).is_err() {
        let _ = nat_est.remove(&fk);
        count(Counter::NatEstRefused);
        return;
    }
    quota_add(owner, 2);
    let _ = nat.remove(&fk);
    let _ = nat.remove(rk);
    count(Counter::NatEstablished);
}

/// Removes the masquerade entry that is the reverse of `key`, if any.
#[inline(never)]
fn forget_masq(key: &NatKey) {
    let fk = NatKey {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        scope: key.scope,
        pad: 0,
    };
    // SAFETY: only the kind is read.
    if unsafe { nat.get(&fk) }.is_some_and(|v| v.kind == nat_kind::MASQ) {
        let _ = nat.remove(&fk);
    }
    // SAFETY: copied out.
    if let Some(v) = unsafe { nat_est.get(&fk) }.copied() {
        if v.kind == nat_kind::MASQ {
            est_remove(&fk, v.owner);
        }
    }
}

/// The host ifindex of the pod whose live masqueraded flow is the reverse
/// of `key` (`key` reversed is its forward entry), 0 if there is none or
/// its flow is over (closed, idle, or its pod gone).
#[inline(never)]
fn live_masq_holds(key: &NatKey) -> u32 {
    let fk = NatKey {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        scope: key.scope,
        pad: 0,
    };
    // SAFETY: copied out.
    let Some(v) = (unsafe { nat_est.get(&fk).or_else(|| nat.get(&fk)) }).copied() else {
        return 0;
    };
    if v.kind != nat_kind::MASQ {
        return 0;
    }
    let Some(ep) = endpoint(fk.family, &fk.saddr) else {
        return 0;
    };
    if ep.owner != v.owner {
        return 0;
    }
    let pod_if = ep.ifindex;
    let rk = NatKey {
        saddr: v.daddr,
        daddr: v.saddr,
        sport: v.dport,
        dport: v.sport,
        proto: fk.proto,
        family: fk.family,
        scope: fk.scope,
        pad: 0,
    };
    // SAFETY: copied out.
    let (r_flags, r_stamp) = match unsafe { nat_est.get(&rk).or_else(|| nat.get(&rk)) } {
        Some(r) => (r.flags, r.stamp),
        // Its reply entry is gone: the flow can no longer be translated back.
        None => return 0,
    };
    if over(fk.proto, r_flags, r_stamp, v.flags, v.stamp) {
        0
    } else {
        pod_if
    }
}

/// True if a masqueraded flow whose reply entry has `e_flags`/`e_stamp` and
/// forward entry `f_flags`/`f_stamp` is over: closed (RST, or FIN both ways,
/// longer ago than the grace), or idle past its protocol's timeout.
#[inline(always)]
fn over(proto_: u8, e_flags: u8, e_stamp: u64, f_flags: u8, f_stamp: u64) -> bool {
    let last = if f_stamp > e_stamp { f_stamp } else { e_stamp };
    let idle = now().wrapping_sub(last);
    let both_fin = e_flags & nat_flag::FIN != 0 && f_flags & nat_flag::FIN != 0;
    // The outside closed first: it holds TIME_WAIT on the translated tuple.
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

/// A packet to a hostPort: DNAT to the pod, remember the reply. False if
/// the packet is not for a hostPort.
#[inline(never)]
fn to_hostport(ctx: &TcContext, f: &Flow) -> bool {
    let key = &f.key;
    let Some(t) = hostport(key) else {
        return false;
    };
    let Some(ep) = endpoint(key.family, &t.pod_ip) else {
        return false;
    };
    let ifindex = ep.ifindex;
    let to = Target {
        saddr: key.saddr,
        daddr: t.pod_ip,
        sport: key.sport,
        dport: t.container_port,
    };
    if remember_reply(key, &to, nat_kind::HOSTPORT_REPLY, t.owner) {
        flow_event(Counter::NatHostPort, ifindex, key, &to);
    }
    if rewrite(ctx, f, &to) {
        translated(Counter::NatHostPort, ifindex);
    }
    true
}

/// True when `a` and `b` share the first `plen` bits.
#[inline(always)]
fn same_prefix(a: &[u8; 16], b: &[u8; 16], plen: u8) -> bool {
    let mut left = u32::from(plen);
    for i in 0..16 {
        if left == 0 {
            return true;
        }
        // A whole byte, or the top `left` bits of the last one (a shift by
        // 8 would wrap in BPF, so the whole-byte case is separate).
        let (mask, bits) = if left >= 8 {
            (0xffu8, 8)
        } else {
            (!(0xffu8 >> left), left)
        };
        if (a[i] ^ b[i]) & mask != 0 {
            return false;
        }
        left -= bits;
    }
    true
}

#[inline(always)]
fn is_multicast(family: u8, a: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        a[0] & 0xf0 == 0xe0 || *a == [255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    } else {
        a[0] == 0xff
    }
}

/// A new flow from a masquerading pod leaving through this uplink: picks a
/// free port on the uplink's address and records both directions.
#[inline(never)]
fn masquerade(ctx: &TcContext, f: &Flow) -> i32 {
    let key = &f.key;
    let ok = TC_ACT_OK as i32;
    let Some(ep) = endpoint(key.family, &key.saddr) else {
        return ok;
    };
    if ep.flags & EP_FLAG_MASQ == 0
        || is_multicast(key.family, &key.daddr)
        || same_prefix(&key.saddr, &key.daddr, ep.prefix_len)
        || no_masq_hit(key.family, &key.daddr)
        || endpoint(key.family, &key.daddr).is_some()
    {
        return ok;
    }
    // Only flows with a port (or echo id) to allocate: TCP, UDP, echo requests.
    let icmp = key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6;
    // A TCP flow is masqueraded from its SYN on: a segment without an entry
    // is a reply of a connection that came in (or one whose entry is gone).
    if !((key.proto == proto::TCP && f.syn)
        || key.proto == proto::UDP
        || (icmp && is_echo_request(ctx, f)))
    {
        return ok;
    }
    let (pod_if, owner) = (ep.ifindex, ep.owner);
    // SAFETY: copied out.
    let Some(up) = (unsafe { uplinks.get(ifindex(ctx)) }).copied() else {
        return ok;
    };
    let mut node = [0u8; 16];
    if key.family == FAMILY_V4 {
        node[..4].copy_from_slice(&up.addr4);
    } else {
        node = up.addr6;
    }
    if node == [0; 16] {
        return ok;
    }
    let cfg = settings();
    let (lo, hi) = (u32::from(cfg.snat_min), u32::from(cfg.snat_max));
    if lo == 0 || hi < lo {
        return ok;
    }
    let span = hi - lo + 1;
    if span == 0 {
        return ok;
    }
    let mut to = Target {
        saddr: node,
        daddr: key.daddr,
        sport: 0,
        dport: key.dport,
    };
    // One pod holds at most its share of the ports to one destination, so
    // the others always find some free: at its share it may only take
    // over a port of its own whose flow is over.
    let full = share_of(owner, key) >= nat_pod_share(span);
    to.sport = alloc_port(key, &to, owner, lo, if full { span | FULL } else { span });
    if to.sport == 0 {
        let c = if share_refused() {
            Counter::DropNatPodShare
        } else {
            Counter::DropNatNoPort
        };
        dropped(c, pod_if);
        drop_event(ctx, c, pod_if);
        return TC_ACT_SHOT as i32;
    }
    share_claimed(owner, key);
    let fwd = NatValue {
        saddr: to.saddr,
        daddr: to.daddr,
        sport: to.sport,
        dport: to.dport,
        kind: nat_kind::MASQ,
        flags: 0,
        pad: [0; 2],
        owner,
        stamp: now(),
    };
    let _ = nat.insert(key, &fwd, 0);
    count(Counter::NatMasqNew);
    flow_event(Counter::NatMasqNew, pod_if, key, &to);
    if rewrite(ctx, f, &to) {
        translated(Counter::NatMasq, pod_if);
    }
    ok
}

/// Set in [`alloc_port`]'s `span`: the pod is at its share.
const FULL: u32 = 1 << 31;

/// Claims a free masquerade source port for the flow `key` -> `to` (whose
/// source port is ignored) by inserting its reply entry with `BPF_NOEXIST`
/// at random ports of `lo .. lo + span`, or by taking over a port whose flow
/// is over. With [`FULL`] set in `span` (`owner` holds its share of the
/// ports to this destination) only a port of `owner`'s own whose flow is
/// over is taken. Returns the port (network order), 0 if none was taken
/// (the scratch's `refused` then says whether one was free); the scratch's
/// `prev` is the owner whose port was taken over.
#[inline(never)]
fn alloc_port(key: &NatKey, to: &Target, owner: u64, lo: u32, span: u32) -> u16 {
    let Some(s) = scratch.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch entry; nothing else runs on it meanwhile.
    let s = unsafe { &mut *s };
    // Kept in the scratch, not in registers: the verifier sees one state
    // per probe either way.
    s.only = if span & FULL != 0 { owner } else { 0 };
    s.prev = 0;
    s.refused = 0;
    let span = span & 0xffff;
    if span == 0 {
        return 0;
    }
    let mut t = *to;
    for _ in 0..PORT_PROBES {
        // SAFETY: no preconditions.
        let r = unsafe { bpf_get_prandom_u32() };
        let port = ((lo + r % span) as u16).to_be();
        t.sport = port;
        reply_of(key, &t, nat_kind::MASQ_REPLY, owner, &mut s.rk, &mut s.rv);
        // A port an established flow holds is in `nat_est`, not `nat`.
        // SAFETY: only tested for presence.
        let held = unsafe { nat_est.get(&s.rk) }.is_some();
        if s.only != 0 {
            // SAFETY: as above.
            if !held && unsafe { nat.get(&s.rk) }.is_none() {
                s.refused = 1;
                continue;
            }
        } else if !held && nat.insert(&s.rk, &s.rv, BPF_NOEXIST).is_ok() {
            return port;
        }
        // Taken: free again if its flow is over (closed, idle, or its pod gone).
        if reusable(s) && nat.insert(&s.rk, &s.rv, 0).is_ok() {
            return port;
        }
    }
    0
}

/// True if the last [`alloc_port`] found a free port it did not take.
#[inline(always)]
fn share_refused() -> bool {
    // SAFETY: copied out.
    scratch.get(0).is_some_and(|s| s.refused != 0)
}

/// Counts the port [`alloc_port`] just claimed for the flow `key` to
/// `owner`'s share, and off the share of the flow it took it from.
#[inline(never)]
fn share_claimed(owner: u64, key: &NatKey) {
    share_add(owner, key, false, 1);
    let Some(s) = scratch.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, read only.
    let s = unsafe { &*s };
    if s.prev != 0 {
        // The reply key's source is the destination.
        share_add(s.prev, &s.rk, true, -1);
    }
}

/// How many masquerade ports to the destination of the flow `key`
/// (address, port, protocol) `owner` holds.
#[inline(never)]
fn share_of(owner: u64, key: &NatKey) -> u32 {
    let k = ShareKey {
        owner,
        daddr: key.daddr,
        dport: key.dport,
        proto: key.proto,
        family: key.family,
        pad: [0; 4],
    };
    // SAFETY: copied out.
    unsafe { nat_share.get(&k) }.copied().unwrap_or(0)
}

/// Adds `delta` to `owner`'s count of ports to the destination of `key`
/// (a forward key, or a `reply` key whose source is the destination). Not
/// atomic: a lost update only skews the share until GC recounts.
#[inline(never)]
fn share_add(owner: u64, key: &NatKey, reply: bool, delta: i32) {
    let (daddr, dport) = if reply {
        (key.saddr, key.sport)
    } else {
        (key.daddr, key.dport)
    };
    let k = ShareKey {
        owner,
        daddr,
        dport,
        proto: key.proto,
        family: key.family,
        pad: [0; 4],
    };
    match nat_share.get_ptr_mut(&k) {
        Some(p) => {
            // SAFETY: a live map value.
            let q = unsafe { &mut *p };
            *q = q.saturating_add_signed(delta);
        }
        None if delta > 0 => {
            let _ = nat_share.insert(&k, &(delta as u32), 0);
        }
        None => {}
    }
}

/// True if the masquerade port of the reply entry `s.rk` may go to a new
/// flow: the flow it belonged to is over. Its forward entry is removed then,
/// so a straggler of the old flow is not sent out as the new one. With
/// `s.only` set, only a port of that owner's flows is; `s.prev` is set to
/// the owner of the port taken over.
#[inline(never)]
fn reusable(s: &mut NatScratch) -> bool {
    let rk = &s.rk;
    // SAFETY: read in place; fields are copied before any map update.
    let Some(e) = (unsafe { nat_est.get(rk).or_else(|| nat.get(rk)) }) else {
        return true;
    };
    if e.kind != nat_kind::MASQ_REPLY {
        return false;
    }
    let (e_flags, e_stamp, e_owner) = (e.flags, e.stamp, e.owner);
    if s.only != 0 && e_owner != s.only {
        return false;
    }
    s.fk.saddr = e.daddr;
    s.fk.daddr = rk.saddr;
    s.fk.sport = e.dport;
    s.fk.dport = rk.sport;
    s.fk.proto = rk.proto;
    s.fk.family = rk.family;
    s.fk.scope = rk.scope;
    s.fk.pad = 0;
    // SAFETY: copied out.
    let (fstamp, fflags) = match unsafe { nat_est.get(&s.fk).or_else(|| nat.get(&s.fk)) } {
        Some(f) => (f.stamp, f.flags),
        None => (0, nat_flag::RST),
    };
    let gone = match endpoint(s.fk.family, &s.fk.saddr) {
        Some(ep) => ep.owner != e_owner,
        None => true,
    };
    let ok = gone || over(s.rk.proto, e_flags, e_stamp, fflags, fstamp);
    if ok {
        s.prev = e_owner;
        let _ = nat.remove(&s.fk);
        est_remove(&s.fk, e_owner);
        // The new flow's reply entry goes to `nat`.
        est_remove(&s.rk, e_owner);
    }
    ok
}

/// True for an ICMP echo request (whose id may legitimately be 0).
#[inline(always)]
fn is_echo_request(ctx: &TcContext, f: &Flow) -> bool {
    let t: u8 = ctx.load(f.l4).unwrap_or(0);
    t == 8 || t == 128
}

/// An ICMP error about a translated flow: finds the flow by the quoted packet
/// (reversed, as a reply) and translates the outer and the quoted headers.
///
/// Only an error from the flow's own peer side is translated: it travels
/// back to the quoted packet's source (the outer destination is the flow's),
/// and leaving the node (`egress`) it comes from the flow's own pod or from
/// the node itself (forwarding). Another pod's forged error quoting a
/// victim's flow, or one from outside addressed to anyone but the flow,
/// would otherwise leave with the victim's translated tuple (node address
/// and masquerade port) revealed to whoever it is sent to: dropped and
/// counted (`drop_icmp_foreign`). An error that cannot be rewritten whole
/// is dropped too, never let through half-translated.
#[inline(never)]
fn icmp_error(ctx: &TcContext, f: &Flow, egress: bool) -> i32 {
    let ok = TC_ACT_OK as i32;
    let mut inner = Inner::default();
    if !parse_inner(ctx, f, &mut inner) {
        return ok;
    }
    // The quoted packet reversed: a packet of the flow in the error's direction.
    let q = &mut inner.key;
    core::mem::swap(&mut q.saddr, &mut q.daddr);
    core::mem::swap(&mut q.sport, &mut q.dport);
    q.scope = scope::NETDEV;
    let rkey = &inner.key;
    let mut v = NatValue::default();
    let ep = live(rkey, &mut v);
    if ep == 0 || v.kind == nat_kind::PASS {
        return ok;
    }
    let k = &f.key;
    let from_peer = k.daddr == rkey.daddr
        && (!egress || k.saddr == rkey.saddr || is_node_addr(k.family, &k.saddr));
    if !from_peer {
        let sender = endpoint(k.family, &k.saddr).map_or(0, |e| e.ifindex);
        dropped(Counter::DropIcmpForeign, sender);
        drop_event(ctx, Counter::DropIcmpForeign, sender);
        return TC_ACT_SHOT as i32;
    }
    if rewrite_icmp_error(ctx, f, &inner, rkey, &v) {
        translated(Counter::NatIcmpError, ep);
        ok
    } else {
        dropped(Counter::DropMalformed, ep);
        TC_ACT_SHOT as i32
    }
}
