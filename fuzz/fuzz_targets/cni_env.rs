//! The plugin's environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`) as `CniEnv::from_lookup` reads it:
//! the input is split at NUL bytes into the six values (a missing one is
//! unset, as a runtime may leave it). Every rejection is code 4, and what is
//! accepted satisfies the rules the rest of the plugin relies on.
#![no_main]

use cni_ebpf::cni::{env::CniArgs, CniEnv};
use cni_ebpf_fuzz::assert_spec_error;
use libfuzzer_sys::fuzz_target;

const VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let values: Vec<&str> = text.split('\0').collect();
    let get = |k: &str| {
        let i = VARS.iter().position(|v| *v == k)?;
        values.get(i).map(|s| s.to_string())
    };
    match CniEnv::from_lookup(get) {
        Err(e) => assert_spec_error(&e, &[4], &values),
        Ok(env) => {
            let id = &env.container_id;
            assert!(id.len() <= 512 && !id.contains(['/', ' ', '\0']), "{values:?}");
            assert!(!id.split('/').any(|c| c == ".."), "{values:?}");
            let ifname = &env.ifname;
            if !ifname.is_empty() {
                assert!(ifname.len() <= 15, "{values:?}");
                assert!(ifname != "." && ifname != "..", "{values:?}");
                assert!(
                    !ifname.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()),
                    "{values:?}"
                );
            }
            if let Some(n) = &env.netns {
                assert!(n.is_absolute(), "{values:?}");
            }
        }
    }
    // CNI_ARGS on its own.
    if let Err(e) = CniArgs::parse(text) {
        assert_spec_error(&e, &[4], &text);
    }
});
