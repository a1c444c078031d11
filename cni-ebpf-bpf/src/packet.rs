//! Header layouts. Headers are read with `TcContext::load`
//! (`bpf_skb_load_bytes`), which bounds-checks in the helper: functions can
//! then take the context alone, without packet pointers the verifier cannot
//! follow across calls.

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// EtherType IPv4 (host order).
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6 (host order).
pub const ETH_P_IPV6: u16 = 0x86DD;

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
