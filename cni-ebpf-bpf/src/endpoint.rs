//! Per-endpoint work on the host veth: source anti-spoofing and counters.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use cni_ebpf_common::{Counter, EndpointInfo, EndpointStats, IpKey};

use crate::{
    maps::{count, endpoints, ep_stats},
    packet::{EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_LEN, ETH_P_IP, ETH_P_IPV6},
};

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

/// Why a packet from a container is refused.
enum Spoof {
    Ip,
    Mac,
}

/// Verdict for a packet the container sent.
#[inline(always)]
pub fn from_container(ctx: &TcContext) -> i32 {
    let ifindex = ifindex(ctx);
    let st = stats(ifindex);
    match check_source(ctx, ifindex) {
        Ok(()) => {
            if let Some(st) = st {
                st.from_packets += 1;
                st.from_bytes += u64::from(ctx.len());
            }
            count(Counter::FromContainerPass);
            crate::hairpin::from_pod(ctx, ifindex).unwrap_or(TC_ACT_OK)
        }
        Err(reason) => {
            if let Some(st) = st {
                st.drop_spoofed += 1;
            }
            count(match reason {
                Some(Spoof::Ip) => Counter::DropSpoofedIp,
                Some(Spoof::Mac) => Counter::DropSpoofedMac,
                None => Counter::DropMalformed,
            });
            TC_ACT_SHOT
        }
    }
}

/// Counts a packet delivered to the container.
#[inline(always)]
pub fn to_container(ctx: &TcContext) {
    if let Some(st) = stats(ifindex(ctx)) {
        st.to_packets += 1;
        st.to_bytes += u64::from(ctx.len());
    }
    count(Counter::ToContainerPass);
}

/// Ok if the packet's source belongs to the endpoint behind `ifindex`, or is not
/// IP (ARP is left to the kernel). `Err(None)` is a truncated IP header.
#[inline(never)]
fn check_source(ctx: &TcContext, ifindex: u32) -> Result<(), Option<Spoof>> {
    let eth: EthHdr = ctx.load(0).map_err(|_| None)?;
    let (proto, src_mac) = (u16::from_be_bytes(eth.proto), eth.src);
    let key = match proto {
        ETH_P_IP => {
            let ip: Ipv4Hdr = ctx.load(ETH_LEN).map_err(|_| None)?;
            let src = ip.src;
            // DHCP clients send from 0.0.0.0 before they have an address.
            if src == [0, 0, 0, 0] {
                return Ok(());
            }
            IpKey::v4(src)
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = ctx.load(ETH_LEN).map_err(|_| None)?;
            let src = ip.src;
            // Link-local (fe80::/10) and unspecified (::, duplicate address
            // detection) sources are needed by neighbour discovery and never
            // leave the link.
            if (src[0] == 0xfe && src[1] & 0xc0 == 0x80) || src == [0; 16] {
                return Ok(());
            }
            IpKey::v6(src)
        }
        _ => return Ok(()),
    };
    // SAFETY: the map value is only read.
    let ep: &EndpointInfo = unsafe { endpoints.get(&key) }.ok_or(Some(Spoof::Ip))?;
    if ep.ifindex != ifindex {
        return Err(Some(Spoof::Ip));
    }
    if ep.mac != [0; 6] && ep.mac != src_mac {
        return Err(Some(Spoof::Mac));
    }
    Ok(())
}
