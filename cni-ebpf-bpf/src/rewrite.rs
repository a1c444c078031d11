//! Rewriting addresses and ports in place, with every checksum fixed
//! incrementally by the kernel's helpers (which also handle
//! `CHECKSUM_PARTIAL` packets from local sockets correctly).
//!
//! Values passed to the checksum helpers are the raw field bytes
//! (`from_ne_bytes`), exactly as they sit in the packet.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use cni_ebpf_common::{NatKey, NatValue, FAMILY_V4};

use crate::flow::{Flow, Inner};

type Res = Result<(), i64>;

/// The four fields a translation sets.
#[derive(Clone, Copy)]
pub struct Target {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl Target {
    #[inline(always)]
    pub fn of(v: &NatValue) -> Self {
        Self {
            saddr: v.saddr,
            daddr: v.daddr,
            sport: v.sport,
            dport: v.dport,
        }
    }
}

/// One's-complement difference of two 16-byte addresses (for IPv6).
#[inline(always)]
fn diff16(old: &[u8; 16], new: &[u8; 16]) -> u64 {
    let mut a = [0u32; 4];
    let mut b = [0u32; 4];
    for i in 0..4 {
        a[i] = u32::from_ne_bytes([old[4 * i], old[4 * i + 1], old[4 * i + 2], old[4 * i + 3]]);
        b[i] = u32::from_ne_bytes([new[4 * i], new[4 * i + 1], new[4 * i + 2], new[4 * i + 3]]);
    }
    // SAFETY: both buffers are 16-byte stack arrays, sizes are multiples of 4.
    let d = unsafe { bpf_csum_diff(a.as_mut_ptr(), 16, b.as_mut_ptr(), 16, 0) };
    d as u32 as u64
}

#[inline(always)]
fn word4(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
}

/// Flags for an L4 checksum update of `f`.
#[inline(always)]
fn l4_flags(f: &Flow, size: u64, pseudo: bool) -> u64 {
    let mut fl = size;
    if pseudo {
        fl |= u64::from(BPF_F_PSEUDO_HDR);
    }
    if f.udp {
        fl |= u64::from(BPF_F_MARK_MANGLED_0);
    }
    fl
}

/// Sets the address at `off` (an outer source or destination) from `old` to
/// `new`: IPv4 header checksum, and the L4 checksum where addresses are in
/// its pseudo-header.
#[inline(never)]
fn set_addr(ctx: &TcContext, f: &Flow, off: usize, old: &[u8; 16], new: &[u8; 16]) -> bool {
    addr_fields(ctx, f, off, old, new).is_ok()
}

#[inline(always)]
fn addr_fields(ctx: &TcContext, f: &Flow, off: usize, old: &[u8; 16], new: &[u8; 16]) -> Res {
    if old == new {
        return Ok(());
    }
    if f.key.family == FAMILY_V4 {
        let (o, n) = (word4(old), word4(new));
        ctx.store(off, &n, 0)?;
        ctx.l3_csum_replace(f.l3 + 10, u64::from(o), u64::from(n), 4)?;
        if f.pseudo && f.csum != 0 {
            ctx.l4_csum_replace(f.csum, u64::from(o), u64::from(n), l4_flags(f, 4, true))?;
        }
    } else {
        ctx.store(off, new, 0)?;
        if f.pseudo && f.csum != 0 {
            ctx.l4_csum_replace(f.csum, 0, diff16(old, new), l4_flags(f, 0, true))?;
        }
    }
    Ok(())
}

/// Sets a port (or ICMP identifier) at `off`; it is covered by the L4 checksum.
#[inline(always)]
fn set_port(ctx: &TcContext, f: &Flow, off: usize, old: u16, new: u16) -> Res {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    if f.csum != 0 {
        ctx.l4_csum_replace(
            f.csum,
            u64::from(old),
            u64::from(new),
            l4_flags(f, 2, false),
        )?;
    }
    Ok(())
}

/// Rewrites the packet's tuple to `to`. False if the packet could not be
/// rewritten.
#[inline(never)]
pub fn rewrite(ctx: &TcContext, f: &Flow, to: &Target) -> bool {
    fields(ctx, f, to).is_ok()
}

#[inline(always)]
fn fields(ctx: &TcContext, f: &Flow, to: &Target) -> Res {
    let k = &f.key;
    ok(set_addr(
        ctx,
        f,
        Flow::saddr_off(f.l3, k.family),
        &k.saddr,
        &to.saddr,
    ))?;
    ok(set_addr(
        ctx,
        f,
        Flow::daddr_off(f.l3, k.family),
        &k.daddr,
        &to.daddr,
    ))?;
    set_port(ctx, f, f.sport_off, k.sport, to.sport)?;
    set_port(ctx, f, f.dport_off, k.dport, to.dport)
}

/// Sets an address of the packet quoted in an ICMP error. For IPv4 the quoted
/// header's own checksum is fixed, which leaves the ICMP checksum unchanged
/// (a correct header always sums to zero); IPv6 has no header checksum, so
/// the ICMPv6 checksum takes the difference.
#[inline(never)]
fn set_inner_addr(ctx: &TcContext, f: &Flow, off: usize, old: &[u8; 16], new: &[u8; 16]) -> bool {
    inner_addr_fields(ctx, f, off, old, new).is_ok()
}

#[inline(always)]
fn inner_addr_fields(ctx: &TcContext, f: &Flow, off: usize, old: &[u8; 16], new: &[u8; 16]) -> Res {
    if old == new {
        return Ok(());
    }
    if f.key.family == FAMILY_V4 {
        let (o, n) = (word4(old), word4(new));
        ctx.store(off, &n, 0)?;
        // The quoted header starts right after the 8-byte ICMP header.
        ctx.l3_csum_replace(f.l4 + 8 + 10, u64::from(o), u64::from(n), 4)?;
    } else {
        ctx.store(off, new, 0)?;
        ctx.l4_csum_replace(f.csum, 0, diff16(old, new), 0)?;
    }
    Ok(())
}

/// Sets a port of the quoted packet; the ICMP checksum covers it. (The quoted
/// packet's own L4 checksum is left alone: it may not even be quoted, and no
/// receiver checks it.)
#[inline(always)]
fn set_inner_port(ctx: &TcContext, f: &Flow, off: usize, old: u16, new: u16) -> Res {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    ctx.l4_csum_replace(f.csum, u64::from(old), u64::from(new), 2)
}

/// Translates an ICMP error about a translated flow. `rkey` is the quoted
/// packet reversed (a packet of the flow in the direction of the error) and
/// `v` its translation: the outer addresses that are the flow's get `v`'s,
/// and the quoted packet becomes `v` reversed. False if the packet could not
/// be rewritten.
#[inline(never)]
pub fn rewrite_icmp_error(
    ctx: &TcContext,
    f: &Flow,
    inner: &Inner,
    rkey: &NatKey,
    v: &NatValue,
) -> bool {
    icmp_error_fields(ctx, f, inner, rkey, v).is_ok()
}

#[inline(always)]
fn icmp_error_fields(ctx: &TcContext, f: &Flow, inner: &Inner, rkey: &NatKey, v: &NatValue) -> Res {
    let k = &f.key;
    let fam = k.family;
    if k.saddr == rkey.saddr {
        ok(set_addr(
            ctx,
            f,
            Flow::saddr_off(f.l3, fam),
            &k.saddr,
            &v.saddr,
        ))?;
    }
    if k.daddr == rkey.daddr {
        ok(set_addr(
            ctx,
            f,
            Flow::daddr_off(f.l3, fam),
            &k.daddr,
            &v.daddr,
        ))?;
    }
    // The quoted packet is `rkey` reversed; it becomes `v` reversed.
    ok(set_inner_addr(
        ctx,
        f,
        Flow::saddr_off(inner.l3, fam),
        &rkey.daddr,
        &v.daddr,
    ))?;
    ok(set_inner_addr(
        ctx,
        f,
        Flow::daddr_off(inner.l3, fam),
        &rkey.saddr,
        &v.saddr,
    ))?;
    set_inner_port(ctx, f, inner.l4, rkey.dport, v.dport)?;
    set_inner_port(ctx, f, inner.l4 + 2, rkey.sport, v.sport)
}

#[inline(always)]
fn ok(b: bool) -> Res {
    if b {
        Ok(())
    } else {
        Err(-1)
    }
}
