//! The ABI between the cni-ebpf loader and its eBPF programs: every map's name,
//! key and value, and every program's name, defined once.
//!
//! All types are `#[repr(C)]`, integer-only, with explicit padding, so that the
//! kernel side, the userspace side and `bpftool map dump` (through BTF) agree on
//! every byte. Changing a size here changes the pinned-map ABI: bump
//! [`PIN_ABI_VERSION`].
#![no_std]
#![deny(missing_docs)]

/// Version of the pinned layout (`<pin root>/v<N>/...`). Bumped whenever a map
/// key or value changes size or meaning, so an old pin is never reused blindly.
pub const PIN_ABI_VERSION: u32 = 1;

/// Names of the eBPF programs (ELF symbol names, at most 15 bytes each).
pub mod prog {
    /// TC ingress of a pod's host-side veth: packets leaving the container.
    pub const FROM_CONTAINER: &str = "from_container";
    /// TC egress of a pod's host-side veth: packets entering the container.
    pub const TO_CONTAINER: &str = "to_container";
    /// Every program, in load order.
    pub const ALL: [&str; 2] = [FROM_CONTAINER, TO_CONTAINER];
}

/// Names of the maps (at most 15 bytes each); each is pinned under `maps/`.
pub mod map {
    /// Pod IP -> [`EndpointInfo`](crate::EndpointInfo).
    pub const ENDPOINTS: &str = "endpoints";
    /// Host veth ifindex -> per-CPU [`EndpointStats`](crate::EndpointStats).
    pub const EP_STATS: &str = "ep_stats";
    /// Per-CPU array of node-wide counters indexed by [`Counter`](crate::Counter).
    pub const STATS: &str = "stats";
    /// [`PortKey`](crate::PortKey) -> [`PortTarget`](crate::PortTarget): hostPort mappings.
    pub const PORTMAP: &str = "portmap";
    /// Every map.
    pub const ALL: [&str; 4] = [ENDPOINTS, EP_STATS, STATS, PORTMAP];
}

/// Default capacity of [`map::ENDPOINTS`] (pod addresses per node).
pub const ENDPOINTS_MAX: u32 = 65536;
/// Default capacity of [`map::PORTMAP`] (hostPort mappings per node).
pub const PORTMAP_MAX: u32 = 65536;
/// Default capacity of [`map::EP_STATS`] (pod interfaces per node).
pub const EP_STATS_MAX: u32 = 32768;

/// Address family tag in [`IpKey::family`], as in `AF_INET`.
pub const FAMILY_V4: u8 = 2;
/// Address family tag in [`IpKey::family`], as in `AF_INET6`.
pub const FAMILY_V6: u8 = 10;

/// An IPv4 or IPv6 address as a map key. IPv4 uses `addr[0..4]`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IpKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
    /// Address bytes in network order.
    pub addr: [u8; 16],
}

impl IpKey {
    /// Key for an IPv4 address given in network byte order.
    #[inline(always)]
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self {
            family: FAMILY_V4,
            pad: [0; 3],
            addr,
        }
    }

    /// Key for an IPv6 address given in network byte order.
    #[inline(always)]
    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            family: FAMILY_V6,
            pad: [0; 3],
            addr,
        }
    }
}

/// IP protocol numbers used in [`PortKey::proto`].
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// A hostPort: (protocol, family, node address or any, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PortKey {
    /// IP protocol ([`proto`]).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Host port, network byte order (as it sits in the packet).
    pub host_port: u16,
    /// Node address the mapping is limited to; all zero = every node address.
    pub host_ip: [u8; 16],
}

/// Where a hostPort leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortTarget {
    /// Pod address (IPv4 in the first 4 bytes).
    pub pod_ip: [u8; 16],
    /// Container port, network byte order.
    pub container_port: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
    /// [`owner_id`] of the attachment that holds the mapping.
    pub owner: u64,
}

/// The endpoint owns this address (set on every entry the loader writes).
pub const EP_FLAG_ACTIVE: u32 = 1;

/// What the node knows about one pod address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Ifindex of the pod's host-side veth (in the node namespace).
    pub ifindex: u32,
    /// `EP_FLAG_*` bits.
    pub flags: u32,
    /// Owner: [`owner_id`] of (container ID, ifname). Lets GC and DEL check
    /// that an entry still belongs to the attachment they are removing.
    pub owner: u64,
    /// MAC address of the pod's interface.
    pub mac: [u8; 6],
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Per-endpoint traffic counters (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// Packets the container sent (host veth ingress).
    pub from_packets: u64,
    /// Bytes the container sent.
    pub from_bytes: u64,
    /// Packets delivered to the container (host veth egress).
    pub to_packets: u64,
    /// Bytes delivered to the container.
    pub to_bytes: u64,
    /// Packets from the container dropped because their source was not its own.
    pub drop_spoofed: u64,
}

/// Node-wide counters, indices into [`map::STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packet from a container passed.
    FromContainerPass = 0,
    /// Packet to a container passed.
    ToContainerPass = 1,
    /// Dropped: source IP not owned by the sending veth.
    DropSpoofedIp = 2,
    /// Dropped: source MAC not the endpoint's.
    DropSpoofedMac = 3,
    /// Dropped: IP header truncated or malformed.
    DropMalformed = 4,
}

impl Counter {
    /// Number of counters (size of [`map::STATS`]).
    pub const COUNT: u32 = 5;
    /// Every counter with its name, in index order (for `cni-ebpf inspect`).
    pub const ALL: [(Counter, &'static str); Self::COUNT as usize] = [
        (Counter::FromContainerPass, "from_container_pass"),
        (Counter::ToContainerPass, "to_container_pass"),
        (Counter::DropSpoofedIp, "drop_spoofed_ip"),
        (Counter::DropSpoofedMac, "drop_spoofed_mac"),
        (Counter::DropMalformed, "drop_malformed"),
    ];
}

/// Owner tag of an attachment: FNV-1a 64 of `container_id`, a zero byte, `ifname`.
/// Stable across versions (it is stored in pinned maps).
pub fn owner_id(container_id: &[u8], ifname: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.write(container_id);
    h.write(&[0]);
    h.write(ifname);
    h.finish()
}

/// FNV-1a, 64 bit: tiny, stable, good enough for owner tags and object hashes.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Fnv1a {
    /// A new hasher.
    pub const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// The hash so far.
    pub const fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

const _: () = assert!(core::mem::size_of::<IpKey>() == 20);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 24);
const _: () = assert!(core::mem::size_of::<EndpointStats>() == 40);
const _: () = assert!(core::mem::size_of::<PortKey>() == 20);
const _: () = assert!(core::mem::size_of::<PortTarget>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are repr(C), integer-only, with explicit zeroed padding,
    // so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::IpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortTarget {}
}
