//! What every fuzz target checks about a rejection: it is a CNI error with
//! one of the codes the parser may give, a message, and it serialises to the
//! spec's error JSON.

use cni_ebpf::cni::CniError;

/// Panics (a fuzzer finding) unless `e` is a well-formed spec error whose
/// code is in `allowed`.
pub fn assert_spec_error(e: &CniError, allowed: &[u32], input: &dyn std::fmt::Debug) {
    assert!(
        allowed.contains(&e.code),
        "code {} not in {allowed:?} for {input:?}: {e:?}",
        e.code
    );
    assert!(!e.msg.trim().is_empty(), "empty msg for {input:?}: {e:?}");
    let j = e.to_json("1.1.0");
    assert_eq!(j["code"].as_u64(), Some(u64::from(e.code)), "{j}");
    assert_eq!(j["msg"].as_str(), Some(e.msg.as_str()), "{j}");
    assert_eq!(j["cniVersion"].as_str(), Some("1.1.0"), "{j}");
    // stdout carries exactly one JSON document: it must serialise.
    serde_json::to_string(&j).expect("error JSON serialises");
}
