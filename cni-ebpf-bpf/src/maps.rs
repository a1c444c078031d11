//! Map definitions. Names, keys and values come from `cni_ebpf_common`. They
//! are BTF-defined maps (`.maps` section) so the kernel knows the key and value
//! types and `bpftool map dump` prints named fields. The loader pins every map
//! by explicit path, so no pinning flag is set here.

use aya_ebpf::{
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use cni_ebpf_common::{
    Config, Counter, EndpointIface, EndpointInfo, EndpointStats, IpKey, NatKey, NatScratch,
    NatValue, NoMasqKey, PortKey, PortTarget, ShareKey, SockRevKey, SockRevValue, UplinkInfo,
    ENDPOINTS_MAX, EP_IFACES_MAX, EP_STATS_MAX, NAT_MAX, NODE_ADDRS_MAX, NO_MASQ_MAX,
    NO_MASQ_PREFIX_BASE, PORTMAP_MAX, SOCK_REV_MAX, UPLINKS_MAX,
};

/// Pod IP -> endpoint (see `cni_ebpf_common::map::ENDPOINTS`).
#[btf_map]
pub static endpoints: HashMap<IpKey, EndpointInfo, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// Host veth ifindex -> the pod interface's MAC (see `cni_ebpf_common::map::EP_IFACES`).
#[btf_map]
pub static ep_ifaces: HashMap<u32, EndpointIface, { EP_IFACES_MAX as usize }> = HashMap::new();

/// Host veth ifindex -> counters (see `cni_ebpf_common::map::EP_STATS`).
#[btf_map]
pub static ep_stats: PerCpuHashMap<u32, EndpointStats, { EP_STATS_MAX as usize }> =
    PerCpuHashMap::new();

/// hostPort mappings (see `cni_ebpf_common::map::PORTMAP`); the loader owns
/// the entries, the NAT programs read them.
#[btf_map]
pub static portmap: HashMap<PortKey, PortTarget, { PORTMAP_MAX as usize }> = HashMap::new();

/// Translations of live flows (see `cni_ebpf_common::map::NAT`).
#[btf_map]
pub static nat: LruHashMap<NatKey, NatValue, { NAT_MAX as usize }> = LruHashMap::new();

/// What packets from outside create (see `cni_ebpf_common::map::NAT_IN`).
#[btf_map]
pub static nat_in: LruHashMap<NatKey, NatValue, { NAT_MAX as usize }> = LruHashMap::new();

/// Established masqueraded flows (see `cni_ebpf_common::map::NAT_EST`).
#[btf_map]
pub static nat_est: HashMap<NatKey, NatValue, { NAT_MAX as usize }> = HashMap::new();

/// `nat_est` entries per owner (see `cni_ebpf_common::map::NAT_QUOTA`).
#[btf_map]
pub static nat_quota: HashMap<u64, u32, { EP_IFACES_MAX as usize }> = HashMap::new();

/// Masquerade ports per owner and destination (see `cni_ebpf_common::map::NAT_SHARE`).
#[btf_map]
pub static nat_share: LruHashMap<ShareKey, u32, { NAT_MAX as usize }> = LruHashMap::new();

/// The node's own addresses (hostPort without hostIP matches these).
#[btf_map]
pub static node_addrs: HashMap<IpKey, u32, { NODE_ADDRS_MAX as usize }> = HashMap::new();

/// Uplink ifindex -> masquerade addresses.
#[btf_map]
pub static uplinks: HashMap<u32, UplinkInfo, { UPLINKS_MAX as usize }> = HashMap::new();

/// Destinations never masqueraded.
#[btf_map]
pub static no_masq: LpmTrie<NoMasqKey, u32, { NO_MASQ_MAX as usize }> = LpmTrie::new();

/// Node-wide settings (one entry).
#[btf_map]
pub static config: Array<Config, 1> = Array::new();

/// Node-local sockets redirected to a pod: what they originally asked for.
#[btf_map]
pub static sock_rev: LruHashMap<SockRevKey, SockRevValue, { SOCK_REV_MAX as usize }> =
    LruHashMap::new();

/// Scratch space of the masquerade port allocation (per CPU, not pinned).
#[btf_map]
pub static scratch: PerCpuArray<NatScratch, 1> = PerCpuArray::new();

/// Node-wide counters indexed by `Counter`.
#[btf_map]
pub static stats: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Adds one to a node-wide counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = stats.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// The node-wide settings (zeroes until the loader writes them).
#[inline(always)]
pub fn settings() -> Config {
    config.get(0).copied().unwrap_or_default()
}

/// True if `daddr` is exempt from masquerade by the configured list.
#[inline(always)]
pub fn no_masq_hit(family: u8, addr: &[u8; 16]) -> bool {
    let key = Key::new(
        NO_MASQ_PREFIX_BASE + 128,
        NoMasqKey {
            family,
            pad: [0; 3],
            addr: *addr,
        },
    );
    no_masq.get(&key).is_some()
}
