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
pub const PIN_ABI_VERSION: u32 = 3;

/// Names of the eBPF programs (ELF symbol names, at most 15 bytes each).
pub mod prog {
    /// TC ingress of a pod's host-side veth: packets leaving the container.
    pub const FROM_CONTAINER: &str = "from_container";
    /// TC egress of a pod's host-side veth: packets entering the container.
    pub const TO_CONTAINER: &str = "to_container";
    /// TC ingress of a node uplink: packets arriving at the node.
    pub const FROM_NETDEV: &str = "from_netdev";
    /// TC egress of a node uplink: packets leaving the node.
    pub const TO_NETDEV: &str = "to_netdev";
    /// Every TC program, in load order.
    pub const TC: [&str; 4] = [FROM_CONTAINER, TO_CONTAINER, FROM_NETDEV, TO_NETDEV];
    /// cgroup `connect4` hook (node-local hostPort access).
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    /// cgroup `connect6` hook.
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    /// cgroup `sendmsg4` hook (unconnected UDP).
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    /// cgroup `sendmsg6` hook.
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    /// cgroup `recvmsg4` hook (UDP replies show the address the socket used).
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    /// cgroup `recvmsg6` hook.
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    /// cgroup `getpeername4` hook.
    pub const SOCK_PEER4: &str = "sock_peer4";
    /// cgroup `getpeername6` hook.
    pub const SOCK_PEER6: &str = "sock_peer6";
    /// Every socket hook.
    pub const SOCK: [&str; 8] = [
        SOCK_CONNECT4,
        SOCK_CONNECT6,
        SOCK_SENDMSG4,
        SOCK_SENDMSG6,
        SOCK_RECVMSG4,
        SOCK_RECVMSG6,
        SOCK_PEER4,
        SOCK_PEER6,
    ];
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
    /// [`NatKey`](crate::NatKey) -> [`NatValue`](crate::NatValue): the
    /// translations of flows pods start (masquerade, both directions;
    /// hairpin replies), LRU.
    pub const NAT: &str = "nat";
    /// Same layout: the state that packets from outside create (hostPort
    /// replies, pass-through entries of inbound UDP flows), in an LRU of its
    /// own, so that a flood from outside evicts only its own kind and never
    /// a pod's masqueraded flow (`natMapEntries` sizes both).
    pub const NAT_IN: &str = "nat_in";
    /// Same layout, not LRU: masqueraded flows that are established (their
    /// first reply came back) move here from `nat`, within a per-pod quota
    /// ([`map::NAT_QUOTA`]), so no flood of anyone else's evicts them; they
    /// leave when their flow is over (port reuse), their pod is gone, or GC.
    pub const NAT_EST: &str = "nat_est";
    /// Owner ([`owner_id`](crate::owner_id)) -> `u32`: how many `nat_est`
    /// entries the attachment holds (approximate: updated without atomics;
    /// GC recounts).
    pub const NAT_QUOTA: &str = "nat_quota";
    /// [`ShareKey`](crate::ShareKey) -> `u32`: how many masquerade ports
    /// to one destination an attachment holds (LRU; approximate: updated
    /// without atomics, GC recounts the live ones). A new flow beyond
    /// [`nat_pod_share`](crate::nat_pod_share) of the range is refused.
    pub const NAT_SHARE: &str = "nat_share";
    /// Node address ([`IpKey`](crate::IpKey)) -> `u32` flags: what counts as
    /// "the node" for a hostPort without hostIP.
    pub const NODE_ADDRS: &str = "node_addrs";
    /// Uplink ifindex -> [`UplinkInfo`](crate::UplinkInfo).
    pub const UPLINKS: &str = "uplinks";
    /// LPM trie of destinations never masqueraded ([`NoMasqKey`](crate::NoMasqKey) -> `u32`).
    pub const NO_MASQ: &str = "no_masq";
    /// One-entry array: [`Config`](crate::Config).
    pub const CONFIG: &str = "config";
    /// [`SockRevKey`](crate::SockRevKey) -> [`SockRevValue`](crate::SockRevValue):
    /// what a node-local socket originally asked for (LRU).
    pub const SOCK_REV: &str = "sock_rev";
    /// Host veth ifindex -> [`EndpointIface`](crate::EndpointIface): the
    /// only source MAC its pod may use.
    pub const EP_IFACES: &str = "ep_ifaces";
    /// Ring buffer of [`Event`](crate::Event)s for `cni-ebpf monitor`.
    pub const EVENTS: &str = "events";
    /// One-entry array: the [`monitor`](crate::monitor) level the programs
    /// report events at (0 = none: no ring buffer writes at all).
    pub const MONITOR: &str = "monitor";
    /// Every map.
    pub const ALL: [&str; 17] = [
        ENDPOINTS, EP_STATS, STATS, PORTMAP, NAT, NAT_IN, NAT_EST, NAT_QUOTA, NAT_SHARE,
        NODE_ADDRS, UPLINKS, NO_MASQ, CONFIG, SOCK_REV, EP_IFACES, EVENTS, MONITOR,
    ];
}

/// Size in bytes of [`map::EVENTS`] (a power of two, as ring buffers must be).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Levels of [`map::MONITOR`]: what the programs report while a monitor runs.
pub mod monitor {
    /// Nothing (no monitor running).
    pub const OFF: u32 = 0;
    /// Dropped packets, with their reason.
    pub const DROPS: u32 = 1;
    /// Drops and every new translated flow.
    pub const FLOWS: u32 = 2;
}

/// [`Event::kind`] values.
pub mod event_kind {
    /// A packet was dropped; [`Event::head`](crate::Event::head) holds its first bytes.
    pub const DROP: u8 = 1;
    /// A new translation; [`Event::flow`](crate::Event::flow) and the `to_*`
    /// fields hold the flow before and after.
    pub const FLOW: u8 = 2;
}

/// Bytes of a dropped packet an [`Event`] carries, from its Ethernet header.
pub const EVENT_HEAD: usize = 64;

/// One data-path event in [`map::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` when it happened.
    pub ktime: u64,
    /// The [`Counter`] it was counted under (the reason).
    pub reason: u32,
    /// Interface: the host veth of the pod involved, or the uplink.
    pub ifindex: u32,
    /// Packet length.
    pub len: u32,
    /// [`event_kind`].
    pub kind: u8,
    /// Valid bytes in `head` (drops).
    pub head_len: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// Flows: the flow as it arrived.
    pub flow: NatKey,
    /// Flows: the new source address.
    pub to_saddr: [u8; 16],
    /// Flows: the new destination address.
    pub to_daddr: [u8; 16],
    /// Flows: the new source port (network order).
    pub to_sport: u16,
    /// Flows: the new destination port (network order).
    pub to_dport: u16,
    /// Explicit padding, always zero.
    pub pad2: u32,
    /// Drops: the first `head_len` bytes of the packet.
    pub head: [u8; EVENT_HEAD],
}

/// Default capacity of [`map::ENDPOINTS`] (pod addresses per node).
pub const ENDPOINTS_MAX: u32 = 65536;
/// Default capacity of [`map::PORTMAP`] (hostPort mappings per node).
pub const PORTMAP_MAX: u32 = 65536;
/// Default capacity of [`map::EP_STATS`] (pod interfaces per node).
pub const EP_STATS_MAX: u32 = 32768;
/// Capacity of [`map::EP_IFACES`] (pod interfaces per node).
pub const EP_IFACES_MAX: u32 = 32768;
/// Default capacity of [`map::NAT`]: two entries per translated flow
/// (`natMapEntries` in the network config overrides it when the map is created).
pub const NAT_MAX: u32 = 262144;
/// Capacity of [`map::NODE_ADDRS`].
pub const NODE_ADDRS_MAX: u32 = 1024;
/// Capacity of [`map::UPLINKS`].
pub const UPLINKS_MAX: u32 = 64;
/// Capacity of [`map::NO_MASQ`].
pub const NO_MASQ_MAX: u32 = 1024;
/// Capacity of [`map::SOCK_REV`].
pub const SOCK_REV_MAX: u32 = 65536;

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
/// Traffic from this address that leaves through an uplink is masqueraded
/// (`ipMasq`), unless its destination is exempt.
pub const EP_FLAG_MASQ: u32 = 2;

/// Per-CPU scratch space of the masquerade port allocation (entry 0 of the
/// unpinned `scratch` map): the keys and value it builds do not fit the
/// 512-byte stack of the call chain. Never read by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NatScratch {
    /// Reply key being claimed.
    pub rk: NatKey,
    /// Its value.
    pub rv: NatValue,
    /// Forward key of the flow that holds a port (reuse check).
    pub fk: NatKey,
    /// Owner whose ports alone may be taken over (0: any): the pod is at
    /// its share of the ports to the destination.
    pub only: u64,
    /// Owner of the flow whose port was taken over (0: the port was free).
    pub prev: u64,
    /// A free port was seen but not taken (the share is used up).
    pub refused: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// Key of [`map::NAT_SHARE`]: one attachment's masqueraded flows to one
/// destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ShareKey {
    /// Owner ([`owner_id`]) of the pod's attachment.
    pub owner: u64,
    /// Destination address (IPv4 in the first 4 bytes).
    pub daddr: [u8; 16],
    /// Destination port (network order; echo id 0 for ICMP).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 4],
}

/// How many masquerade ports of a range of `span` ports one pod may hold
/// to one destination: an eighth of the range, but at least 64 (at most
/// half of a range smaller than 128), so one pod never takes every port
/// to a destination from the others.
#[inline(always)]
pub const fn nat_pod_share(span: u32) -> u32 {
    let floor = if span / 2 < 64 { span / 2 } else { 64 };
    let eighth = span / 8;
    let s = if eighth > floor { eighth } else { floor };
    if s == 0 {
        1
    } else {
        s
    }
}

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
    /// Prefix length of the pod's subnet (destinations inside it are never
    /// masqueraded, as with `bridge`'s `ipMasq`).
    pub prefix_len: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
}

/// What the node knows about one pod interface (by host veth ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointIface {
    /// MAC address of the pod's interface: every frame the pod sends must
    /// carry it as source (and ARP as sender hardware address). All zero:
    /// unknown (chained after a plugin that reported none), not checked.
    pub mac: [u8; 6],
    /// `IFACE_FLAG_*` bits.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
    /// [`owner_id`] of the attachment.
    pub owner: u64,
}

/// The pod may send router advertisements, ICMP/ICMPv6 redirects and
/// DHCP/DHCPv6 server messages (`allowRouterMessages`): it is a router or a
/// DHCP server. Without it these are dropped as `drop_router_msg`.
pub const IFACE_FLAG_ROUTER: u8 = 1;

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
    /// Packets from the container dropped because they were not its own
    /// (source IP or MAC, ARP sender, neighbour advertisement target) or
    /// VLAN-tagged; the node counters say which.
    pub drop_spoofed: u64,
    /// Packets of this endpoint whose addresses or ports were translated
    /// (hostPort, hairpin, masquerade, either direction).
    pub translated: u64,
    /// Packets of this endpoint dropped by NAT (no free masquerade port, or
    /// the pod's share of the ports to that destination used up).
    pub drop_nat: u64,
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
    /// hostPort DNAT of a packet arriving on an uplink.
    NatHostPort = 5,
    /// hostPort DNAT of a pod's packet to a node address (hairpin).
    NatHairpin = 6,
    /// Masquerade SNAT of a packet leaving through an uplink.
    NatMasq = 7,
    /// Reply of a translated flow translated back.
    NatReply = 8,
    /// ICMP error about a translated flow translated (outer and inner header).
    NatIcmpError = 9,
    /// A new masqueraded flow (port allocated).
    NatMasqNew = 10,
    /// Dropped: no free masquerade port for a new flow.
    DropNatNoPort = 11,
    /// A translation whose endpoint is gone or changed owner was discarded.
    NatStale = 12,
    /// A node-local socket's connect/sendmsg was redirected to a pod.
    SockTranslated = 13,
    /// Dropped: ARP from a container whose sender IP or MAC is not its own.
    DropSpoofedArp = 14,
    /// Dropped: IPv6 neighbour advertisement from a container for a target
    /// address that is not its own.
    DropSpoofedNd = 15,
    /// Dropped: an 802.1Q or 802.1ad tagged frame from a container.
    DropVlan = 16,
    /// Not delivered to a container: a frame the bridge flooded to every
    /// port that is not meant for this pod (unicast to another MAC, ARP or
    /// neighbour solicitation for another address, router solicitations and
    /// MLD reports of other pods). Counted, never reported as an event.
    ToContainerFiltered = 17,
    /// Dropped: a packet from outside straight to a pod's address and port
    /// that a live masqueraded flow of the pod holds (it would have deleted
    /// or replaced that flow's translation).
    DropNatConflict = 18,
    /// Dropped: a router advertisement, an ICMP or ICMPv6 redirect, or a
    /// DHCP/DHCPv6 server message from a pod that is not allowed to be a
    /// router or DHCP server (`allowRouterMessages`).
    DropRouterMsg = 19,
    /// Dropped: an ICMP error about a translated flow that does not come
    /// from the flow's peer side (another pod's forgery quoting a victim's
    /// flow, or one addressed to someone other than the flow).
    DropIcmpForeign = 20,
    /// A masqueraded flow became established and moved to `nat_est`.
    NatEstablished = 21,
    /// An established flow stayed in the LRU `nat`: its pod's quota of
    /// `nat_est` is used up, or `nat_est` is full.
    NatEstRefused = 22,
    /// Dropped: a new masqueraded flow of a pod that already holds its
    /// share ([`nat_pod_share`]) of the masquerade ports to that
    /// destination (address, port, protocol).
    DropNatPodShare = 23,
}

impl Counter {
    /// Number of counters (size of [`map::STATS`]).
    pub const COUNT: u32 = 24;
    /// Every counter with its name, in index order (for `cni-ebpf inspect`).
    pub const ALL: [(Counter, &'static str); Self::COUNT as usize] = [
        (Counter::FromContainerPass, "from_container_pass"),
        (Counter::ToContainerPass, "to_container_pass"),
        (Counter::DropSpoofedIp, "drop_spoofed_ip"),
        (Counter::DropSpoofedMac, "drop_spoofed_mac"),
        (Counter::DropMalformed, "drop_malformed"),
        (Counter::NatHostPort, "nat_hostport"),
        (Counter::NatHairpin, "nat_hairpin"),
        (Counter::NatMasq, "nat_masq"),
        (Counter::NatReply, "nat_reply"),
        (Counter::NatIcmpError, "nat_icmp_error"),
        (Counter::NatMasqNew, "nat_masq_new"),
        (Counter::DropNatNoPort, "drop_nat_no_port"),
        (Counter::NatStale, "nat_stale"),
        (Counter::SockTranslated, "sock_translated"),
        (Counter::DropSpoofedArp, "drop_spoofed_arp"),
        (Counter::DropSpoofedNd, "drop_spoofed_nd"),
        (Counter::DropVlan, "drop_vlan"),
        (Counter::ToContainerFiltered, "to_container_filtered"),
        (Counter::DropNatConflict, "drop_nat_conflict"),
        (Counter::DropRouterMsg, "drop_router_msg"),
        (Counter::DropIcmpForeign, "drop_icmp_foreign"),
        (Counter::NatEstablished, "nat_established"),
        (Counter::NatEstRefused, "nat_est_refused"),
        (Counter::DropNatPodShare, "drop_nat_pod_share"),
    ];
}

/// Where a [`NatKey`] applies: the host veth programs (hairpin) or the uplink
/// programs (hostPort from outside, masquerade). Part of the key, so each hook
/// sees only its own translations.
pub mod scope {
    /// Host veth ingress (`from_container`).
    pub const POD: u8 = 1;
    /// Uplink ingress and egress.
    pub const NETDEV: u8 = 2;
}

/// What made a [`NatValue`].
pub mod nat_kind {
    /// Reply of a hostPort flow from outside (pod -> client, back to nodeIP:hostPort).
    pub const HOSTPORT_REPLY: u8 = 1;
    /// Reply of a hairpin flow (pod -> pod via nodeIP:hostPort).
    pub const HAIRPIN_REPLY: u8 = 2;
    /// Masqueraded flow, pod -> outside.
    pub const MASQ: u8 = 3;
    /// Reply of a masqueraded flow, outside -> node port, back to the pod.
    pub const MASQ_REPLY: u8 = 4;
    /// Reply of a flow that came in from outside straight to a masquerading
    /// pod (UDP): left as it is, never masqueraded.
    pub const PASS: u8 = 5;
}

/// A flow as one hook sees it: the key of [`map::NAT`]. Ports are in network
/// order; ICMP echo uses the identifier as source port of requests and as
/// destination port of replies (the other port is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatKey {
    /// Source address (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`scope`].
    pub scope: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
}

/// The translated flow a [`NatKey`] becomes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatValue {
    /// New source address.
    pub saddr: [u8; 16],
    /// New destination address.
    pub daddr: [u8; 16],
    /// New source port.
    pub sport: u16,
    /// New destination port.
    pub dport: u16,
    /// [`nat_kind`].
    pub kind: u8,
    /// [`nat_flag`] bits: TCP FIN or RST seen in this entry's direction.
    pub flags: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// [`owner_id`] of the pod the flow belongs to. The programs discard the
    /// entry when the pod's address no longer has this owner, so a reused
    /// address never inherits a translation (DEL needs no scan).
    pub owner: u64,
    /// Last packet through this entry (`bpf_ktime_get_ns`, refreshed at most
    /// every [`NAT_STAMP_NS`]): a masquerade port whose flow is idle or
    /// closed can be given to a new flow.
    pub stamp: u64,
}

/// [`NatValue::flags`] bits.
pub mod nat_flag {
    /// A TCP FIN passed in this direction.
    pub const FIN: u8 = 1;
    /// A TCP RST passed in this direction.
    pub const RST: u8 = 2;
    /// This direction's FIN came before the other's: its sender closed
    /// first and holds TIME_WAIT afterwards.
    pub const FIN_FIRST: u8 = 4;
}

/// Granularity of [`NatValue::stamp`] updates (250 ms).
pub const NAT_STAMP_NS: u64 = 250_000_000;
/// A closed TCP flow's masquerade port is reused after this long when the
/// pod closed first (1 s: its last ACK has long passed, and the TIME_WAIT
/// state is the pod's own, on its own port).
pub const NAT_CLOSED_REUSE_NS: u64 = 1_000_000_000;
/// ... and after this long when the outside closed first: the remote end
/// holds TIME_WAIT (60 s on Linux) for the translated tuple, and a new SYN
/// on it would be refused by PAWS (random timestamp offsets per connection).
pub const NAT_TIME_WAIT_NS: u64 = 65_000_000_000;
/// An idle UDP or ICMP flow's masquerade port is reused after 30 s (as
/// conntrack's UDP timeout).
pub const NAT_IDLE_DGRAM_NS: u64 = 30_000_000_000;
/// An idle TCP flow without FIN/RST keeps its port for 2 h (conntrack's
/// established timeout is 5 days; entries are LRU anyway).
pub const NAT_IDLE_TCP_NS: u64 = 7_200_000_000_000;

/// What the programs need to know about an uplink.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UplinkInfo {
    /// Masquerade source for IPv4 (all zero: no IPv4 masquerade here).
    pub addr4: [u8; 4],
    /// Explicit padding, always zero.
    pub pad: [u8; 4],
    /// Masquerade source for IPv6.
    pub addr6: [u8; 16],
}

/// Key of [`map::NO_MASQ`]: the data of an LPM key whose prefix length
/// counts the family and padding bytes ([`NO_MASQ_PREFIX_BASE`] + CIDR prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NoMasqKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
    /// Address bytes (IPv4 in the first 4).
    pub addr: [u8; 16],
}

/// Bits of a [`NoMasqKey`] before the address: an LPM prefix length is this
/// plus the CIDR prefix length.
pub const NO_MASQ_PREFIX_BASE: u32 = 32;

/// Node-wide settings, entry 0 of [`map::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// First masquerade port (host order).
    pub snat_min: u16,
    /// Last masquerade port (host order).
    pub snat_max: u16,
    /// How many `nat_est` entries one attachment may hold (0: none).
    pub est_quota: u32,
    /// Network namespace cookie of the node: the socket hooks act only there.
    pub netns_cookie: u64,
}

/// Key of [`map::SOCK_REV`]: a node-local socket and the pod address it was
/// redirected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Pod address.
    pub addr: [u8; 16],
    /// Container port (network order).
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 5],
}

/// The address the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue {
    /// Original destination address.
    pub addr: [u8; 16],
    /// Original destination port (network order).
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
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
const _: () = assert!(core::mem::size_of::<EndpointStats>() == 56);
const _: () = assert!(core::mem::size_of::<EndpointIface>() == 16);
const _: () = assert!(core::mem::size_of::<NatKey>() == 40);
const _: () = assert!(core::mem::size_of::<NatValue>() == 56);
const _: () = assert!(core::mem::size_of::<UplinkInfo>() == 24);
const _: () = assert!(core::mem::size_of::<NatScratch>() == 160);
const _: () = assert!(core::mem::size_of::<ShareKey>() == 32);
const _: () = assert!(core::mem::size_of::<NoMasqKey>() == 20);
const _: () = assert!(core::mem::size_of::<Config>() == 16);
const _: () = assert!(core::mem::size_of::<Event>() == 168);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);
const _: () = assert!(core::mem::size_of::<PortKey>() == 20);
const _: () = assert!(core::mem::size_of::<PortTarget>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are repr(C), integer-only, with explicit zeroed padding,
    // so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::IpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointIface {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ShareKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UplinkInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NoMasqKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevValue {}
}
