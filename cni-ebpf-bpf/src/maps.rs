//! Map definitions. Names, keys and values come from `cni_ebpf_common`. They
//! are BTF-defined maps (`.maps` section) so the kernel knows the key and value
//! types and `bpftool map dump` prints named fields. The loader pins every map
//! by explicit path, so no pinning flag is set here.

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use cni_ebpf_common::{
    Counter, EndpointInfo, EndpointStats, IpKey, PortKey, PortTarget, ENDPOINTS_MAX, EP_STATS_MAX,
    PORTMAP_MAX,
};

/// Pod IP -> endpoint (see `cni_ebpf_common::map::ENDPOINTS`).
#[btf_map]
pub static endpoints: HashMap<IpKey, EndpointInfo, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// Host veth ifindex -> counters (see `cni_ebpf_common::map::EP_STATS`).
#[btf_map]
pub static ep_stats: PerCpuHashMap<u32, EndpointStats, { EP_STATS_MAX as usize }> =
    PerCpuHashMap::new();

/// hostPort mappings (see `cni_ebpf_common::map::PORTMAP`); the loader owns
/// the entries, the NAT programs read them.
#[btf_map]
pub static portmap: HashMap<PortKey, PortTarget, { PORTMAP_MAX as usize }> = HashMap::new();

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
