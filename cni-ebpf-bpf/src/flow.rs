//! Parsing a packet into the flow tuple the NAT works on, and remembering
//! where each field sits so the rewrite can change it in place.
//!
//! Reads use `bpf_skb_load_bytes` (`TcContext::load`): variable offsets (IPv4
//! options, the packet quoted in an ICMP error) stay simple for the verifier.

use aya_ebpf::programs::TcContext;
use cni_ebpf_common::{proto, NatKey, FAMILY_V4, FAMILY_V6};

use crate::packet::{Ipv4Hdr, ETH_LEN, ETH_P_IP, ETH_P_IPV6};

/// ICMP for IPv4.
pub const IPPROTO_ICMP: u8 = 1;
/// ICMP for IPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// A parsed packet: its tuple and the offsets of the fields NAT rewrites.
///
/// `repr(C)` with the flags first: `Option<Flow>` keeps its niche in the
/// first byte, which BTF can describe (a niche deeper inside becomes a union
/// member at a non-zero offset, which the kernel's BTF check rejects).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Flow {
    /// An ICMP error: the tuple is only outer addresses; see [`parse_inner`].
    pub icmp_err: bool,
    /// Addresses are part of the L4 checksum (TCP, UDP, ICMPv6).
    pub pseudo: bool,
    /// UDP: a zero checksum means "none" and must stay zero.
    pub udp: bool,
    /// A TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// The tuple (scope 0; each hook sets its own).
    pub key: NatKey,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the L4 header.
    pub l4: usize,
    /// Offset of the L4 checksum; 0 when there is none to fix (SCTP: its
    /// CRC32c does not cover the IP header, and its ports are never changed).
    pub csum: usize,
    /// Offset of the field holding the source "port" (the ICMP echo id).
    pub sport_off: usize,
    /// Offset of the field holding the destination "port".
    pub dport_off: usize,
}

/// The packet quoted inside an ICMP error.
#[derive(Clone, Copy, Default)]
pub struct Inner {
    /// Its tuple, as its sender sent it.
    pub key: NatKey,
    /// Offset of its IP header.
    pub l3: usize,
    /// Offset of its L4 header.
    pub l4: usize,
}

impl Flow {
    /// Offset of the source address.
    #[inline(always)]
    pub fn saddr_off(l3: usize, family: u8) -> usize {
        if family == FAMILY_V4 {
            l3 + 12
        } else {
            l3 + 8
        }
    }

    /// Offset of the destination address.
    #[inline(always)]
    pub fn daddr_off(l3: usize, family: u8) -> usize {
        if family == FAMILY_V4 {
            l3 + 16
        } else {
            l3 + 24
        }
    }
}

/// Parses an Ethernet frame carrying TCP, UDP, SCTP or ICMP echo/error over
/// IPv4 or IPv6 (no IPv6 extension headers). `None` for anything else and for
/// IPv4 fragments after the first (they carry no ports).
///
/// Fills `f` (out-parameter: a returned `Option<Flow>` would cost the
/// caller a second copy of the stack the verifier limits to 512 bytes).
#[inline(never)]
pub fn parse(ctx: &TcContext, f: &mut Flow) -> bool {
    parse_into(ctx, f).is_some()
}

#[inline(always)]
fn parse_into(ctx: &TcContext, f: &mut Flow) -> Option<()> {
    let ethertype: [u8; 2] = ctx.load(12).ok()?;
    let l4 = match u16::from_be_bytes(ethertype) {
        ETH_P_IP => ip4(ctx, ETH_LEN, &mut f.key)?,
        ETH_P_IPV6 => ip6(ctx, ETH_LEN, &mut f.key)?,
        _ => return None,
    };
    l4_fields(ctx, f, ETH_LEN, l4)
}

/// Reads the IPv4 header at `l3` into `key` (addresses, protocol); returns
/// the L4 offset.
#[inline(always)]
fn ip4(ctx: &TcContext, l3: usize, key: &mut NatKey) -> Option<usize> {
    let ip: Ipv4Hdr = ctx.load(l3).ok()?;
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ihl < 20 || u16::from_be_bytes(ip.frag) & 0x1fff != 0 {
        return None;
    }
    *key = NatKey::default();
    key.proto = ip.proto;
    key.family = FAMILY_V4;
    key.saddr[..4].copy_from_slice(&ip.src);
    key.daddr[..4].copy_from_slice(&ip.dst);
    Some(l3 + ihl)
}

/// Reads the IPv6 header at `l3` into `key`; returns the L4 offset.
#[inline(always)]
fn ip6(ctx: &TcContext, l3: usize, key: &mut NatKey) -> Option<usize> {
    *key = NatKey::default();
    key.saddr = ctx.load(l3 + 8).ok()?;
    key.daddr = ctx.load(l3 + 24).ok()?;
    key.proto = ctx.load(l3 + 6).ok()?;
    key.family = FAMILY_V6;
    Some(l3 + 40)
}

#[inline(always)]
fn l4_fields(ctx: &TcContext, f: &mut Flow, l3: usize, l4: usize) -> Option<()> {
    f.l3 = l3;
    f.l4 = l4;
    f.csum = 0;
    f.pseudo = false;
    f.udp = false;
    f.syn = false;
    f.tcp_flags = 0;
    f.sport_off = l4;
    f.dport_off = l4 + 2;
    f.icmp_err = false;
    let key = &mut f.key;
    match key.proto {
        proto::TCP | proto::UDP | proto::SCTP => {
            let ports: [u16; 2] = ctx.load(l4).ok()?;
            key.sport = ports[0];
            key.dport = ports[1];
            match key.proto {
                proto::TCP => {
                    f.csum = l4 + 16;
                    f.pseudo = true;
                    let flags: u8 = ctx.load(l4 + 13).ok()?;
                    f.syn = flags & 0x12 == 0x02;
                    f.tcp_flags = flags;
                }
                proto::UDP => {
                    f.csum = l4 + 6;
                    f.pseudo = true;
                    f.udp = true;
                }
                _ => {}
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let v6 = key.proto == IPPROTO_ICMPV6;
            if v6 != (key.family == FAMILY_V6) {
                return None;
            }
            let h: [u8; 2] = ctx.load(l4).ok()?;
            let id: u16 = ctx.load(l4 + 4).ok()?;
            f.csum = l4 + 2;
            f.pseudo = v6;
            f.sport_off = l4 + 4;
            f.dport_off = l4 + 4;
            match (v6, h[0]) {
                // Echo request: the identifier is the source "port".
                (false, 8) | (true, 128) => key.sport = id,
                // Echo reply: the identifier is the destination "port".
                (false, 0) | (true, 129) => key.dport = id,
                // Unreachable, time exceeded, parameter problem (and packet
                // too big for IPv6): they quote the packet that caused them.
                (false, 3 | 11 | 12) | (true, 1..=4) => f.icmp_err = true,
                _ => return None,
            }
        }
        _ => return None,
    }
    Some(())
}

/// The packet quoted by the ICMP error `f` (TCP, UDP or SCTP only), into
/// `inner`.
#[inline(never)]
pub fn parse_inner(ctx: &TcContext, f: &Flow, inner: &mut Inner) -> bool {
    inner_into(ctx, f, inner).is_some()
}

#[inline(always)]
fn inner_into(ctx: &TcContext, f: &Flow, inner: &mut Inner) -> Option<()> {
    let l3 = f.l4 + 8;
    let l4 = if f.key.family == FAMILY_V4 {
        ip4(ctx, l3, &mut inner.key)?
    } else {
        ip6(ctx, l3, &mut inner.key)?
    };
    if !matches!(inner.key.proto, proto::TCP | proto::UDP | proto::SCTP) {
        return None;
    }
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    inner.key.sport = ports[0];
    inner.key.dport = ports[1];
    inner.l3 = l3;
    inner.l4 = l4;
    Some(())
}
