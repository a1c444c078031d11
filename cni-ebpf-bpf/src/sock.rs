//! Node-local access to hostPorts: cgroup socket hooks translate a socket's
//! destination once, at `connect()` (or per datagram for unconnected UDP),
//! instead of every packet, and show the socket the address it asked for
//! (`getpeername`, `recvmsg`). Only sockets of the node's network namespace
//! are touched (its cookie is in `config`). `127.0.0.1`/`::1` work without
//! `route_localnet`: the socket simply connects to the pod.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
    EbpfContext,
};
use cni_ebpf_common::{
    proto, Counter, NatKey, PortTarget, SockRevKey, SockRevValue, FAMILY_V4, FAMILY_V6,
};

use crate::{
    maps::{count, settings, sock_rev},
    translate::{hostport, is_loopback},
};

#[inline(always)]
fn in_node_netns(ctx: &SockAddrContext) -> bool {
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let want = settings().netns_cookie;
    want != 0 && cookie == want
}

#[inline(always)]
fn addr_of(sa: &bpf_sock_addr, family: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    if family == FAMILY_V4 {
        a[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        for i in 0..4 {
            a[4 * i..4 * i + 4].copy_from_slice(&sa.user_ip6[i].to_ne_bytes());
        }
    }
    a
}

#[inline(always)]
fn set_addr(sa: &mut bpf_sock_addr, family: u8, a: &[u8; 16], port: u16) {
    if family == FAMILY_V4 {
        sa.user_ip4 = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
    } else {
        for i in 0..4 {
            sa.user_ip6[i] =
                u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
        }
    }
    sa.user_port = u32::from(port);
}

/// The hostPort a node-local socket is dialling, if any: like packets, but
/// the loopback address counts as the node's own here.
#[inline(always)]
fn target(sa: &bpf_sock_addr, family: u8) -> Option<(PortTarget, [u8; 16], u16)> {
    let p = sa.protocol as u8;
    if p != proto::TCP && p != proto::UDP {
        return None;
    }
    let daddr = addr_of(sa, family);
    let dport = sa.user_port as u16;
    let mut key = NatKey {
        daddr,
        dport,
        proto: p,
        family,
        ..NatKey::default()
    };
    if let Some(t) = hostport(&key) {
        return Some((t, daddr, dport));
    }
    // 127.0.0.1 / ::1 for mappings without hostIP (hostport() needs the
    // address in node_addrs, where the loopback addresses also are; this
    // covers the rest of 127/8 being absent).
    if is_loopback(family, &daddr) {
        key.daddr = if family == FAMILY_V4 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[127, 0, 0, 1]);
            a
        } else {
            let mut a = [0u8; 16];
            a[15] = 1;
            a
        };
        if key.daddr != daddr {
            return hostport(&key).map(|t| (t, daddr, dport));
        }
    }
    None
}

/// `connect` / `sendmsg`: redirect a hostPort destination to its pod.
#[inline(always)]
pub fn redirect(ctx: &SockAddrContext, family: u8) {
    if !in_node_netns(ctx) {
        return;
    }
    // SAFETY: the context is the kernel's bpf_sock_addr for this call.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some((t, daddr, dport)) = target(sa, family) else {
        return;
    };
    set_addr(sa, family, &t.pod_ip, t.container_port);
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let k = SockRevKey {
        cookie,
        addr: t.pod_ip,
        port: t.container_port,
        family,
        pad: [0; 5],
    };
    let v = SockRevValue {
        addr: daddr,
        port: dport,
        pad: [0; 6],
    };
    let _ = sock_rev.insert(&k, &v, 0);
    count(Counter::SockTranslated);
}

/// `recvmsg` / `getpeername`: show the address the socket dialled.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, family: u8) {
    if !in_node_netns(ctx) {
        return;
    }
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let k = SockRevKey {
        cookie,
        addr: addr_of(sa, family),
        port: sa.user_port as u16,
        family,
        pad: [0; 5],
    };
    // SAFETY: copied out.
    if let Some(v) = unsafe { sock_rev.get(&k) }.copied() {
        set_addr(sa, family, &v.addr, v.port);
    }
}

/// Family tags for the entry points.
pub const V4: u8 = FAMILY_V4;
/// IPv6.
pub const V6: u8 = FAMILY_V6;
