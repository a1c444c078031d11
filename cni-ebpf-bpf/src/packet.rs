//! Header layouts. Headers are read with `TcContext::load`
//! (`bpf_skb_load_bytes`), which bounds-checks in the helper: functions can
//! then take the context alone, without packet pointers the verifier cannot
//! follow across calls.

use aya_ebpf::programs::TcContext;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// EtherType IPv4 (host order).
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6 (host order).
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType ARP (host order).
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q VLAN tag (host order).
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ) service tag (host order).
pub const ETH_P_8021AD: u16 = 0x88A8;
/// IPv6 header length.
pub const IPV6_LEN: usize = 40;
/// IPv6 next header: ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 type of a neighbour advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 type of a neighbour solicitation.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type of a router solicitation.
pub const ND_ROUTER_SOLICIT: u8 = 133;
/// ICMPv6 types of MLDv1 reports and dones, and MLDv2 reports (RFC 2710,
/// RFC 3810): addressed to routers only.
pub const MLD_REPORT: u8 = 131;
/// See [`MLD_REPORT`].
pub const MLD_DONE: u8 = 132;
/// See [`MLD_REPORT`].
pub const MLD2_REPORT: u8 = 143;
/// ARP operation: request (host order).
pub const ARP_REQUEST: u16 = 1;

/// Ethernet header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Big-endian EtherType.
    pub proto: [u8; 2],
}

/// The part of the IPv4 header we read (fixed 20 bytes; options follow).
#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// IPv6 fixed header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub vtcfl: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// ARP for IPv4 over Ethernet (RFC 826): the only kind a pod may send.
#[repr(C)]
pub struct ArpHdr {
    /// Hardware type, big-endian (1 = Ethernet).
    pub htype: [u8; 2],
    /// Protocol type, big-endian (0x0800).
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// The first 24 bytes of an ICMPv6 message: enough for a neighbour
/// advertisement's target address (RFC 4861 4.4).
#[repr(C)]
pub struct Icmp6Nd {
    pub ty: u8,
    pub code: u8,
    pub csum: [u8; 2],
    pub flags: [u8; 4],
    /// Target address (NS and NA).
    pub target: [u8; 16],
}

/// ICMPv6 type of a router advertisement.
pub const ND_ROUTER_ADVERT: u8 = 134;
/// ICMPv6 type of a redirect.
pub const ND_REDIRECT: u8 = 137;
/// IPv6 next header of a fragment header.
pub const IPV6_FRAGMENT: u8 = 44;

/// The upper-layer protocol of an IPv6 packet whose fixed header says
/// `next_hdr`, and where it starts: behind at most four hop-by-hop /
/// routing / destination-options / fragment headers. A fragment that is not
/// the first carries no upper-layer header: `(IPV6_FRAGMENT, _)`. `Err(())`
/// for a truncated header or a longer chain.
#[inline(always)]
pub fn ipv6_l4(ctx: &TcContext, next_hdr: u8) -> Result<(u8, usize), ()> {
    let mut nh = next_hdr;
    let mut off = ETH_LEN + IPV6_LEN;
    for _ in 0..4 {
        if nh == IPV6_FRAGMENT {
            let frag: [u8; 4] = ctx.load(off).map_err(|_| ())?;
            if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                return Ok((IPV6_FRAGMENT, off));
            }
            nh = frag[0];
            off += 8;
            continue;
        }
        if nh != 0 && nh != 43 && nh != 60 {
            break;
        }
        let ext: [u8; 2] = ctx.load(off).map_err(|_| ())?;
        nh = ext[0];
        off += (usize::from(ext[1]) + 1) * 8;
    }
    match nh {
        0 | 43 | 60 | IPV6_FRAGMENT => Err(()),
        _ => Ok((nh, off)),
    }
}

/// Where ICMPv6 starts in an IPv6 packet whose fixed header says
/// `next_hdr`: behind at most four hop-by-hop / routing / destination-options
/// headers (MLD reports come behind a hop-by-hop header; a longer chain is
/// not walked). `Ok(Some(offset))` for ICMPv6, `Ok(None)` for another
/// protocol, `Err(())` for a truncated header or a longer chain.
#[inline(always)]
pub fn icmp6_offset(ctx: &TcContext, next_hdr: u8) -> Result<Option<usize>, ()> {
    let mut nh = next_hdr;
    let mut off = ETH_LEN + IPV6_LEN;
    for _ in 0..4 {
        if nh != 0 && nh != 43 && nh != 60 {
            break;
        }
        let ext: [u8; 2] = ctx.load(off).map_err(|_| ())?;
        nh = ext[0];
        off += (usize::from(ext[1]) + 1) * 8;
    }
    match nh {
        IPPROTO_ICMPV6 => Ok(Some(off)),
        0 | 43 | 60 => Err(()),
        _ => Ok(None),
    }
}
