//! The `ipam` section of the built-in host-local IPAM
//! (`HostLocalConfig::parse`): any JSON value is rejected with code 7 or
//! yields ranges whose bounds lie inside their subnet, in order, with a
//! gateway.
#![no_main]

use cni_ebpf::ipam::host_local::HostLocalConfig;
use cni_ebpf_fuzz::assert_spec_error;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match HostLocalConfig::parse(&v) {
        Err(e) => assert_spec_error(&e, &[7], &v),
        Ok(c) => {
            assert!(c.data_dir.is_absolute(), "{v}");
            for set in &c.range_sets {
                assert!(!set.is_empty(), "empty range set from {v}");
                for r in set {
                    assert!(r.contains(r.range_start), "{r:?} from {v}");
                    assert!(r.contains(r.range_end), "{r:?} from {v}");
                    assert!(r.range_start <= r.range_end, "{r:?} from {v}");
                    // As in the current reference, a gateway outside the
                    // subnet is accepted (point-to-point setups use one).
                    assert!(r.gateway.is_some(), "no gateway default in {r:?} from {v}");
                }
            }
        }
    }
});
