//! Per-endpoint work on the host veth: anti-spoofing and counters.
//!
//! A pod may send only frames that are its own: its MAC as Ethernet source
//! (every frame), its addresses as IPv4/IPv6 source, its IPv4 address and
//! MAC as ARP sender (requests and replies), its addresses as the target of
//! IPv6 neighbour advertisements, and no VLAN tags (which would let it reach
//! VLANs behind the bridge or uplink). Each refusal is counted by reason.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use cni_ebpf_common::{Counter, EndpointInfo, EndpointStats, IpKey, IFACE_FLAG_ROUTER};

use crate::{
    maps::{count, endpoints, ep_ifaces, ep_stats},
    packet::{
        ipv6_l4, ArpHdr, EthHdr, Icmp6Nd, Ipv4Hdr, Ipv6Hdr, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q,
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, ND_NEIGHBOR_ADVERT, ND_REDIRECT,
        ND_ROUTER_ADVERT,
    },
};

/// IP protocol numbers.
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
/// ICMP types of a redirect and of a router advertisement (RFC 1256).
const ICMP_REDIRECT: u8 = 5;
const ICMP_ROUTER_ADVERT: u8 = 9;
/// Source ports of DHCP (server or relay) and DHCPv6 (server or relay)
/// messages; clients send from 68 and 546.
const DHCP_SERVER_PORT: u16 = 67;
const DHCP6_SERVER_PORT: u16 = 547;

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed in; reading a
    // field of __sk_buff is a context access the verifier rewrites.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn stats(ifindex: u32) -> Option<&'static mut EndpointStats> {
    // SAFETY: per-CPU value; only this CPU touches it during this program run.
    ep_stats.get_ptr_mut(ifindex).map(|p| unsafe { &mut *p })
}

/// Why a frame from a container is refused.
#[derive(Clone, Copy)]
enum Refused {
    /// Source IP not the endpoint's.
    Ip,
    /// Source MAC not the endpoint's.
    Mac,
    /// ARP sender IP or MAC not the endpoint's, or not IPv4-over-Ethernet ARP.
    Arp,
    /// Neighbour advertisement for an address that is not the endpoint's.
    Nd,
    /// 802.1Q / 802.1ad tagged.
    Vlan,
    /// Router advertisement, redirect or DHCP server message from a pod not
    /// allowed to be a router or DHCP server.
    Router,
    /// Truncated header.
    Malformed,
}

impl Refused {
    #[inline(always)]
    fn counter(self) -> Counter {
        match self {
            Self::Ip => Counter::DropSpoofedIp,
            Self::Mac => Counter::DropSpoofedMac,
            Self::Arp => Counter::DropSpoofedArp,
            Self::Nd => Counter::DropSpoofedNd,
            Self::Vlan => Counter::DropVlan,
            Self::Router => Counter::DropRouterMsg,
            Self::Malformed => Counter::DropMalformed,
        }
    }
}

/// Verdict for a packet the container sent.
#[inline(always)]
pub fn from_container(ctx: &TcContext) -> i32 {
    let ifindex = ifindex(ctx);
    let st = stats(ifindex);
    match check_frame(ctx, ifindex) {
        Ok(()) => {
            if let Some(st) = st {
                st.from_packets += 1;
                st.from_bytes += u64::from(ctx.len());
            }
            count(Counter::FromContainerPass);
            // The live-upgrade test's variant object (see Cargo.toml).
            #[cfg(feature = "upgrade-test")]
            count(Counter::FromContainerPass);
            crate::hairpin::from_pod(ctx, ifindex).unwrap_or(TC_ACT_OK)
        }
        Err(reason) => {
            if let Some(st) = st {
                st.drop_spoofed += 1;
            }
            count(reason.counter());
            crate::events::drop_event(ctx, reason.counter(), ifindex);
            TC_ACT_SHOT
        }
    }
}

/// Verdict for a packet on its way into the container: what is meant for
/// the pod is counted and delivered, what the bridge merely flooded to
/// every port is dropped here (see [`crate::delivery`]).
#[inline(always)]
pub fn to_container(ctx: &TcContext) -> i32 {
    let ifindex = ifindex(ctx);
    if !crate::delivery::for_pod(ctx, ifindex) {
        count(Counter::ToContainerFiltered);
        return TC_ACT_SHOT;
    }
    if let Some(st) = stats(ifindex) {
        st.to_packets += 1;
        st.to_bytes += u64::from(ctx.len());
    }
    count(Counter::ToContainerPass);
    TC_ACT_OK
}

/// True if `key` is an address of the endpoint behind `ifindex`.
#[inline(always)]
pub fn owned(key: &IpKey, ifindex: u32) -> bool {
    // SAFETY: the map value is only read.
    unsafe { endpoints.get(key) }.is_some_and(|ep: &EndpointInfo| ep.ifindex == ifindex)
}

/// True for fe80::/10 (link-local) and :: (unspecified).
#[inline(always)]
pub fn link_local_or_unspecified(a: &[u8; 16]) -> bool {
    (a[0] == 0xfe && a[1] & 0xc0 == 0x80) || *a == [0; 16]
}

/// Ok if the whole frame is the endpoint's own.
#[inline(never)]
fn check_frame(ctx: &TcContext, ifindex: u32) -> Result<(), Refused> {
    // The kernel moves the outer tag into the skb before TC ingress
    // (skb_vlan_untag in __netif_receive_skb_core), so a tag shows here as
    // vlan_present rather than in the frame; an inner (QinQ) tag stays in
    // the frame and is caught by its EtherType below.
    // SAFETY: a context field read, rewritten by the verifier.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Err(Refused::Vlan);
    }
    let eth: EthHdr = ctx.load(0).map_err(|_| Refused::Malformed)?;
    let proto = u16::from_be_bytes(eth.proto);
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(Refused::Vlan);
    }
    // SAFETY: the map value is only read.
    let (mac, flags) = unsafe { ep_ifaces.get(&ifindex) }.map_or(([0; 6], 0), |i| (i.mac, i.flags));
    if mac != [0; 6] && eth.src != mac {
        return Err(Refused::Mac);
    }
    let router = flags & IFACE_FLAG_ROUTER != 0;
    match proto {
        ETH_P_IP => check_ipv4(ctx, ifindex, router),
        ETH_P_IPV6 => check_ipv6(ctx, ifindex, router),
        ETH_P_ARP => check_arp(ctx, ifindex),
        _ => Ok(()),
    }
}

/// IPv4: the source is the endpoint's (or 0.0.0.0, a DHCP client); no
/// redirect or DHCP server message unless the pod may be a `router`.
#[inline(never)]
fn check_ipv4(ctx: &TcContext, ifindex: u32, router: bool) -> Result<(), Refused> {
    let ip: Ipv4Hdr = ctx.load(ETH_LEN).map_err(|_| Refused::Malformed)?;
    let src = ip.src;
    if src != [0, 0, 0, 0] && !owned(&IpKey::v4(src), ifindex) {
        return Err(Refused::Ip);
    }
    // Only a first fragment carries the ICMP or UDP header.
    if router || u16::from_be_bytes(ip.frag) & 0x1fff != 0 {
        return Ok(());
    }
    let off = ETH_LEN + usize::from(ip.vihl & 0x0f) * 4;
    router_msg(
        ctx,
        ip.proto,
        off,
        ICMP_REDIRECT,
        ICMP_ROUTER_ADVERT,
        DHCP_SERVER_PORT,
    )
}

/// `Err(Router)` for an ICMP(v6) message of type `ty_a` or `ty_b`, or UDP
/// from `server_port`, at `off`. A header too short to read is no such
/// message (the kernel would not take it as one either).
#[inline(always)]
fn router_msg(
    ctx: &TcContext,
    proto: u8,
    off: usize,
    ty_a: u8,
    ty_b: u8,
    server_port: u16,
) -> Result<(), Refused> {
    if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        let ty: u8 = ctx.load(off).unwrap_or(0);
        if ty != 0 && (ty == ty_a || ty == ty_b) {
            return Err(Refused::Router);
        }
    } else if proto == IPPROTO_UDP {
        let sport: [u8; 2] = ctx.load(off).unwrap_or([0; 2]);
        if u16::from_be_bytes(sport) == server_port {
            return Err(Refused::Router);
        }
    }
    Ok(())
}

/// ARP: IPv4 over Ethernet only; the sender MAC is the frame's source (so
/// the endpoint's), the sender IP the endpoint's (or 0.0.0.0, an RFC 5227
/// probe). Requests and replies alike: a gratuitous request poisons caches
/// as well as a reply does.
#[inline(never)]
fn check_arp(ctx: &TcContext, ifindex: u32) -> Result<(), Refused> {
    let arp: ArpHdr = ctx.load(ETH_LEN).map_err(|_| Refused::Arp)?;
    if arp.htype != [0, 1] || arp.ptype != [0x08, 0x00] || arp.hlen != 6 || arp.plen != 4 {
        return Err(Refused::Arp);
    }
    let eth_src: [u8; 6] = ctx.load(6).map_err(|_| Refused::Malformed)?;
    if arp.sha != eth_src {
        return Err(Refused::Arp);
    }
    let spa = arp.spa;
    if spa == [0, 0, 0, 0] || owned(&IpKey::v4(spa), ifindex) {
        Ok(())
    } else {
        Err(Refused::Arp)
    }
}

/// IPv6: the source is the endpoint's, or link-local / unspecified (needed
/// by neighbour discovery, never routed); a neighbour advertisement's
/// target is the endpoint's.
/// No router advertisement, redirect or DHCPv6 server message unless the
/// pod may be a `router` (found behind the extension headers [`ipv6_l4`]
/// walks, fragment headers included; a longer chain is refused).
#[inline(never)]
fn check_ipv6(ctx: &TcContext, ifindex: u32, router: bool) -> Result<(), Refused> {
    let ip: Ipv6Hdr = ctx.load(ETH_LEN).map_err(|_| Refused::Malformed)?;
    let src = ip.src;
    if !link_local_or_unspecified(&src) && !owned(&IpKey::v6(src), ifindex) {
        return Err(Refused::Ip);
    }
    let (nh, off) = ipv6_l4(ctx, ip.next_hdr).map_err(|_| Refused::Malformed)?;
    if !router {
        router_msg(
            ctx,
            nh,
            off,
            ND_ROUTER_ADVERT,
            ND_REDIRECT,
            DHCP6_SERVER_PORT,
        )?;
    }
    if nh != IPPROTO_ICMPV6 {
        return Ok(());
    }
    check_nd(ctx, ifindex, off)
}

/// Checks a neighbour advertisement's target (the ICMPv6 message at `off`).
/// Link-local targets are not tracked per endpoint and pass (they matter
/// only on the pod's own link).
#[inline(never)]
fn check_nd(ctx: &TcContext, ifindex: u32, off: usize) -> Result<(), Refused> {
    let icmp: Icmp6Nd = match ctx.load(off) {
        Ok(h) => h,
        // Shorter than a neighbour advertisement: some other message.
        Err(_) => return Ok(()),
    };
    if icmp.ty != ND_NEIGHBOR_ADVERT {
        return Ok(());
    }
    let target = icmp.target;
    if link_local_or_unspecified(&target) || owned(&IpKey::v6(target), ifindex) {
        Ok(())
    } else {
        Err(Refused::Nd)
    }
}
