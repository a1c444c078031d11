//! Events for `cni-ebpf monitor`: drops with their reason and new
//! translations, written to a ring buffer only while a monitor has set a
//! level in the `monitor` map. With no monitor the cost is one array lookup
//! per drop or new flow, never per packet.

use aya_ebpf::{
    btf_maps::{Array, RingBuf},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::btf_map,
    programs::TcContext,
};
use cni_ebpf_common::{
    event_kind, monitor as level, Counter, Event, NatKey, EVENTS_BYTES, EVENT_HEAD,
};

use crate::rewrite::Target;

/// The events (see `cni_ebpf_common::map::EVENTS`).
#[btf_map]
pub static events: RingBuf<Event, { EVENTS_BYTES as usize }> = RingBuf::new();

/// The level a monitor asked for (see `cni_ebpf_common::map::MONITOR`).
#[btf_map]
pub static monitor: Array<u32, 1> = Array::new();

#[inline(always)]
fn wanted(at: u32) -> bool {
    monitor.get(0).is_some_and(|l| *l >= at)
}

/// Reports a dropped packet with its first bytes.
#[inline(never)]
pub fn drop_event(ctx: &TcContext, reason: Counter, ifindex: u32) {
    if !wanted(level::DROPS) {
        return;
    }
    let Some(mut e) = events.reserve(0) else {
        return;
    };
    let p = e.as_mut_ptr();
    let len = ctx.len();
    // The helper refuses a zero length and reads must stay inside the packet.
    let n = if len > EVENT_HEAD as u32 {
        EVENT_HEAD as u32
    } else {
        len
    };
    // SAFETY: `p` is the reserved, exclusively owned entry; every field is
    // written before it is submitted.
    unsafe {
        core::ptr::write_bytes(p, 0, 1);
        (*p).ktime = bpf_ktime_get_ns();
        (*p).reason = reason as u32;
        (*p).ifindex = ifindex;
        (*p).len = len;
        (*p).kind = event_kind::DROP;
        if n > 0
            && bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                0,
                (*p).head.as_mut_ptr() as *mut _,
                n,
            ) == 0
        {
            (*p).head_len = n as u8;
        }
    }
    e.submit(0);
}

/// Reports a new translation: `key` became `to`.
#[inline(never)]
pub fn flow_event(reason: Counter, ifindex: u32, key: &NatKey, to: &Target) {
    if !wanted(level::FLOWS) {
        return;
    }
    let Some(mut e) = events.reserve(0) else {
        return;
    };
    let p = e.as_mut_ptr();
    // SAFETY: as in `drop_event`.
    unsafe {
        core::ptr::write_bytes(p, 0, 1);
        (*p).ktime = bpf_ktime_get_ns();
        (*p).reason = reason as u32;
        (*p).ifindex = ifindex;
        (*p).kind = event_kind::FLOW;
        (*p).flow = *key;
        (*p).to_saddr = to.saddr;
        (*p).to_daddr = to.daddr;
        (*p).to_sport = to.sport;
        (*p).to_dport = to.dport;
    }
    e.submit(0);
}
