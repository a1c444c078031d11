//! What a host veth delivers to its pod. A Linux bridge floods broadcast,
//! multicast and unknown-unicast frames to every port: with N pods, every
//! router solicitation, MLD report and ARP or neighbour solicitation one pod
//! (or the node) sends is copied N times. Each copy that reaches a veth is
//! queued on the CPU's backlog (`netdev_max_backlog`, 1000 by default) and
//! then processed by the receiving pod's stack, only to be discarded there.
//! At a few hundred pods those copies overflow the backlog and real traffic
//! is dropped with them (`/proc/net/softnet_stat`, second column). Dropped
//! here instead, at TC egress of the host veth, a copy never enters the
//! backlog or the pod.
//!
//! Delivered: unicast to the pod's MAC; ARP requests for its addresses and
//! address announcements of the node; neighbour solicitations for its
//! addresses or its EUI-64 link-local address; every other broadcast and
//! multicast (MLD queries, router advertisements, applications' groups).
//! Not delivered: unicast to another MAC; ARP for other addresses;
//! neighbour solicitations for other addresses; router solicitations and
//! MLD reports (meant for routers, which pods are not).

use cni_ebpf_common::{EndpointIface, IpKey};

use crate::{
    endpoint::{link_local_or_unspecified, owned},
    maps::{endpoints, ep_ifaces},
    packet::{
        icmp6_offset, ArpHdr, EthHdr, Icmp6Nd, Ipv6Hdr, ARP_REQUEST, ETH_LEN, ETH_P_ARP,
        ETH_P_IPV6, MLD2_REPORT, MLD_DONE, MLD_REPORT, ND_NEIGHBOR_SOLICIT, ND_ROUTER_SOLICIT,
    },
};
use aya_ebpf::programs::TcContext;

/// True if the frame on its way through the host veth `ifindex` is meant
/// for the pod behind it. Anything this cannot parse is delivered: the
/// filter only removes what it recognises as someone else's.
#[inline(never)]
pub fn for_pod(ctx: &TcContext, ifindex: u32) -> bool {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return true;
    };
    // SAFETY: the map value is only read.
    let mac = unsafe { ep_ifaces.get(&ifindex) }.map_or([0; 6], |i: &EndpointIface| i.mac);
    if eth.dst[0] & 1 == 0 {
        // Unicast: the bridge floods a frame to an unknown MAC everywhere.
        return mac == [0; 6] || eth.dst == mac;
    }
    match u16::from_be_bytes(eth.proto) {
        ETH_P_ARP => arp_for_pod(ctx, ifindex),
        ETH_P_IPV6 => ipv6_multicast_for_pod(ctx, ifindex, &mac),
        _ => true,
    }
}

/// A broadcast ARP: a request for one of the pod's addresses, or an
/// announcement (sender = target) of an address that is no pod's (the
/// node's gateway address). Other ARP is about someone else.
#[inline(never)]
fn arp_for_pod(ctx: &TcContext, ifindex: u32) -> bool {
    let Ok(arp) = ctx.load::<ArpHdr>(ETH_LEN) else {
        return true;
    };
    if arp.ptype != [0x08, 0x00] || arp.plen != 4 {
        return true;
    }
    if owned(&IpKey::v4(arp.tpa), ifindex) {
        return true;
    }
    arp.spa == arp.tpa
        && u16::from_be_bytes(arp.op) == ARP_REQUEST
        // SAFETY: the map value is only read.
        && unsafe { endpoints.get(&IpKey::v4(arp.spa)) }.is_none()
}

/// An IPv6 multicast frame: router solicitations and MLD reports are for
/// routers; a neighbour solicitation must be for one of the pod's
/// addresses. Everything else is delivered.
#[inline(never)]
fn ipv6_multicast_for_pod(ctx: &TcContext, ifindex: u32, mac: &[u8; 6]) -> bool {
    let Ok(ip) = ctx.load::<Ipv6Hdr>(ETH_LEN) else {
        return true;
    };
    let Ok(Some(off)) = icmp6_offset(ctx, ip.next_hdr) else {
        return true;
    };
    let Ok(ty) = ctx.load::<u8>(off) else {
        return true;
    };
    match ty {
        ND_ROUTER_SOLICIT | MLD_REPORT | MLD_DONE | MLD2_REPORT => false,
        ND_NEIGHBOR_SOLICIT => match ctx.load::<Icmp6Nd>(off) {
            Ok(ns) => solicited(&ns.target, ifindex, mac),
            Err(_) => true,
        },
        _ => true,
    }
}

/// True if `target` of a neighbour solicitation is the pod's: one of its
/// addresses, or (link-local) the EUI-64 address of its MAC. Link-local
/// addresses are not in the endpoint map; the kernel forms a pod's from its
/// MAC (`addr_gen_mode` 0, the default in a new namespace), and the
/// solicited-node group the frame was sent to is made of the same last
/// three bytes. With the MAC unknown, every link-local target is delivered.
#[inline(always)]
fn solicited(target: &[u8; 16], ifindex: u32, mac: &[u8; 6]) -> bool {
    if link_local_or_unspecified(target) {
        return *mac == [0; 6]
            || (target[8] == mac[0] ^ 0x02
                && target[9] == mac[1]
                && target[10] == mac[2]
                && target[11] == 0xff
                && target[12] == 0xfe
                && target[13] == mac[3]
                && target[14] == mac[4]
                && target[15] == mac[5]);
    }
    owned(&IpKey::v6(*target), ifindex)
}
