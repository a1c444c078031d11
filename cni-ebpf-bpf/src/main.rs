//! cni-ebpf's eBPF programs. TC entry points are named by where they attach,
//! as in Cilium: `from_container`/`to_container` on a pod's host veth
//! (ingress: packets the pod sends; egress: packets delivered to it),
//! `from_netdev`/`to_netdev` on a node uplink. The `sock_*` programs are
//! cgroup socket hooks for node-local hostPort access. Each entry is a thin
//! wrapper around the module that does the work.
#![no_std]
#![no_main]
// Map statics carry the names the loader and bpftool see (cni_ebpf_common::map).
#![allow(non_upper_case_globals)]

mod delivery;
mod endpoint;
mod events;
mod flow;
mod hairpin;
mod maps;
mod netdev;
mod packet;
mod rewrite;
mod sock;
mod translate;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// Host veth ingress: packets leaving the container.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    endpoint::from_container(&ctx)
}

/// Host veth egress: packets entering the container.
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    endpoint::to_container(&ctx)
}

/// Uplink ingress: packets arriving at the node.
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    netdev::from_netdev(&ctx)
}

/// Uplink egress: packets leaving the node.
#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    netdev::to_netdev(&ctx)
}

/// Allow verdict of cgroup socket hooks.
const SOCK_ALLOW: i32 = 1;

/// `connect()` of an IPv4 socket on the node.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::redirect(&ctx, sock::V4);
    SOCK_ALLOW
}

/// `connect()` of an IPv6 socket on the node.
#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::redirect(&ctx, sock::V6);
    SOCK_ALLOW
}

/// `sendmsg()` of an unconnected IPv4 UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::redirect(&ctx, sock::V4);
    SOCK_ALLOW
}

/// `sendmsg()` of an unconnected IPv6 UDP socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::redirect(&ctx, sock::V6);
    SOCK_ALLOW
}

/// `recvmsg()` of an IPv4 UDP socket: the sender as the socket dialled it.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::V4);
    SOCK_ALLOW
}

/// `recvmsg()` of an IPv6 UDP socket.
#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::V6);
    SOCK_ALLOW
}

/// `getpeername()` of an IPv4 socket.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_peer4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::V4);
    SOCK_ALLOW
}

/// `getpeername()` of an IPv6 socket.
#[cgroup_sock_addr(getpeername6)]
pub fn sock_peer6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, sock::V6);
    SOCK_ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
