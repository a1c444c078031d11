//! Hairpin: a pod reaching a hostPort (its own or another pod's) through a
//! node address. Translated on the sending pod's host veth and redirected
//! straight to the serving pod's veth, so the bridge, the host stack and
//! `bridge-nf-call-iptables` never see the flow. When a pod reaches itself,
//! the source becomes the node address it dialled, so its reply comes back
//! through its host veth instead of staying inside the pod.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use cni_ebpf_common::{nat_kind, scope, Counter, NatValue};

use crate::{
    events::flow_event,
    flow::{parse, Flow},
    packet::EthHdr,
    rewrite::{rewrite, Target},
    translate::{endpoint, forget_reply, hostport, is_loopback, live, remember_reply, translated},
};

/// NAT for a packet the pod behind `ifindex` sent (already past
/// anti-spoofing). `Some(verdict)` when the packet was translated.
#[inline(never)]
pub fn from_pod(ctx: &TcContext, ifindex: u32) -> Option<i32> {
    let mut f = Flow::default();
    if !parse(ctx, &mut f) || f.icmp_err {
        return None;
    }
    f.key.scope = scope::POD;
    if let Some(v) = reply(ctx, &f, ifindex) {
        return Some(v);
    }
    if is_loopback(f.key.family, &f.key.daddr) {
        return None;
    }
    new_flow(ctx, &f, ifindex)
}

/// A reply of a hairpin flow, back to the pod that dialled the hostPort.
#[inline(never)]
fn reply(ctx: &TcContext, f: &Flow, ifindex: u32) -> Option<i32> {
    let mut v = NatValue::default();
    if live(&f.key, &mut v) == 0 {
        return None;
    }
    if !rewrite(ctx, f, &Target::of(&v)) {
        return None;
    }
    translated(Counter::NatReply, ifindex);
    Some(deliver(ctx, f.key.family, &v.daddr))
}

/// A packet to a hostPort through a node address: DNAT (and SNAT to that
/// address when the pod reaches itself), remember the reply, deliver.
#[inline(never)]
fn new_flow(ctx: &TcContext, f: &Flow, ifindex: u32) -> Option<i32> {
    let key = &f.key;
    let Some(t) = hostport(key) else {
        if f.syn || f.udp {
            forget_reply(key);
        }
        return None;
    };
    let to = Target {
        saddr: if t.pod_ip == key.saddr {
            key.daddr
        } else {
            key.saddr
        },
        daddr: t.pod_ip,
        sport: key.sport,
        dport: t.container_port,
    };
    if remember_reply(key, &to, nat_kind::HAIRPIN_REPLY, t.owner) {
        flow_event(Counter::NatHairpin, ifindex, key, &to);
    }
    if !rewrite(ctx, f, &to) {
        return None;
    }
    translated(Counter::NatHairpin, ifindex);
    Some(deliver(ctx, key.family, &to.daddr))
}

/// Redirects a translated packet to the host veth of the pod owning `daddr`,
/// addressed to the pod's MAC; if that pod is not local, the host routes it.
#[inline(never)]
fn deliver(ctx: &TcContext, family: u8, daddr: &[u8; 16]) -> i32 {
    let ok = aya_ebpf::bindings::TC_ACT_OK as i32;
    let Some(ep) = endpoint(family, daddr) else {
        return ok;
    };
    let (ifindex, mac) = (ep.ifindex, ep.mac);
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return ok;
    };
    if mac != [0; 6] && eth.dst != mac {
        // The pod sent to its gateway's MAC: that becomes the source.
        if ctx.store(6, &eth.dst, 0).is_err() || ctx.store(0, &mac, 0).is_err() {
            return ok;
        }
    }
    // SAFETY: no preconditions; the verdict tells TC to redirect.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
