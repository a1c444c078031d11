//! Property tests of the built-in host-local allocator against a model:
//! random sequences of allocations and releases over small ranges (so that
//! they run dry) on a real on-disk store in a scratch directory. Needs no
//! privileges.
//!
//! Properties: an address is never held by two attachments; an allocation
//! fails (code 100) exactly when the range has no free address; a release
//! frees exactly the attachment's address and nothing else; allocation is
//! round robin: the next free address after the last one reserved, wrapping
//! inside the range, never the gateway.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use cni_ebpf::ipam::host_local::{all_reservations, allocate, release, Attempt, HostLocalConfig};
use proptest::prelude::*;
use serde_json::json;

const NET: &str = "props";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cni-ebpf-ipam-props-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// ADD of attachment `k` (skipped by the model while `k` holds an address).
    Alloc(u8),
    /// DEL of attachment `k` (also when it holds nothing: DEL is idempotent).
    Release(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..24).prop_map(Op::Alloc),
        2 => (0u8..24).prop_map(Op::Release),
    ]
}

fn v4(base: u32, off: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base + off))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_the_model(
        prefix in 27u8..=30,
        start_off in 0u32..4,
        end_cut in 0u32..3,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let dir = Scratch::new();
        let size = 1u32 << (32 - prefix);
        let base = u32::from(Ipv4Addr::new(10, 77, 0, 0));
        // Usable: network+1 ..= broadcast-1; narrowed by rangeStart/rangeEnd.
        let first = 1 + start_off.min(size.saturating_sub(3));
        let last = (size - 2).saturating_sub(end_cut).max(first);
        let gateway = v4(base, 1);
        let cfg = HostLocalConfig::parse(&json!({
            "type": "host-local",
            "ranges": [[{
                "subnet": format!("10.77.0.0/{prefix}"),
                "rangeStart": v4(base, first).to_string(),
                "rangeEnd": v4(base, last).to_string(),
                "gateway": gateway.to_string(),
            }]],
            "dataDir": dir.0,
        }))
        .expect("valid config");
        let pool: Vec<IpAddr> = (first..=last).map(|o| v4(base, o)).filter(|a| *a != gateway).collect();

        let mut held: BTreeMap<u8, IpAddr> = BTreeMap::new();
        let mut cursor: Option<IpAddr> = None;
        for op in ops {
            match op {
                Op::Alloc(k) => {
                    if held.contains_key(&k) {
                        continue;
                    }
                    // The model: the first free address in pool order after
                    // the cursor (from the start without one), wrapping.
                    let from = cursor
                        .and_then(|c| pool.iter().position(|a| *a == c))
                        .map_or(0, |i| i + 1);
                    let expected = (0..pool.len())
                        .map(|i| pool[(from + i) % pool.len()])
                        .find(|a| !held.values().any(|h| h == a));
                    let got = allocate(&cfg, NET, &format!("c{k}"), "eth0", &[], Attempt::First);
                    match (expected, got) {
                        (Some(want), Ok(ips)) => {
                            prop_assert_eq!(ips.len(), 1);
                            let a = ips[0].address.addr();
                            prop_assert_eq!(a, want, "round robin after {:?}", cursor);
                            prop_assert_eq!(ips[0].gateway, Some(gateway));
                            held.insert(k, a);
                            cursor = Some(a);
                        }
                        (None, Err(e)) => prop_assert_eq!(e.code, 100, "{}", e.msg),
                        (want, got) => prop_assert!(false, "model {:?}, allocator {:?}", want, got),
                    }
                }
                Op::Release(k) => {
                    release(&cfg, NET, &format!("c{k}"), "eth0").expect("release");
                    held.remove(&k);
                }
            }
            // The store holds exactly what the model holds: nothing twice,
            // nothing freed that was not released, nothing kept that was.
            let mut on_disk: Vec<(IpAddr, String)> = all_reservations(&dir.0, NET)
                .expect("list")
                .into_iter()
                .map(|(ip, id, ifname)| {
                    assert_eq!(ifname, "eth0");
                    (ip, id)
                })
                .collect();
            on_disk.sort();
            let mut model: Vec<(IpAddr, String)> = held.iter().map(|(k, a)| (*a, format!("c{k}"))).collect();
            model.sort();
            prop_assert_eq!(on_disk, model);
        }
    }
}
