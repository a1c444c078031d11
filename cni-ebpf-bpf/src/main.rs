//! cni-ebpf's TC programs. Entry points are named by where they attach, as in
//! Cilium: `from_container` is the host-side veth's ingress (packets the pod
//! sends), `to_container` its egress (packets delivered to the pod). Each entry
//! is a thin wrapper around a `try_` function whose verdict it returns.
#![no_std]
#![no_main]
// Map statics carry the names the loader and bpftool see (cni_ebpf_common::map).
#![allow(non_upper_case_globals)]

mod endpoint;
mod maps;
mod packet;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

/// Host veth ingress: packets leaving the container.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    endpoint::from_container(&ctx)
}

/// Host veth egress: packets entering the container.
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    endpoint::to_container(&ctx);
    TC_ACT_OK
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
