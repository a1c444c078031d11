//! The network config on stdin, as `NetConf::parse` gets it for each command,
//! and the IPAM section it carries. Half of the inputs are raw bytes; the
//! other half splice a fuzzed JSON value into one field of a valid config
//! (`prevResult`, `runtimeConfig`, `ipam`, ...), so the fuzzer reaches the
//! nested decoders without first having to invent a whole valid config.
#![no_main]

use cni_ebpf::{config::NetConf, ipam::Ipam};
use cni_ebpf_fuzz::assert_spec_error;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const COMMANDS: [&str; 6] = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"];
const FIELDS: [&str; 10] = [
    "prevResult",
    "runtimeConfig",
    "ipam",
    "dns",
    "cni.dev/valid-attachments",
    "cniVersion",
    "uplinks",
    "nonMasqueradeCIDRs",
    "snatPortRange",
    "mtu",
];

fn base() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "fuzz",
        "type": "cni-ebpf",
        "pinPath": "/run/cni-ebpf-fuzz/bpf",
        "stateDir": "/run/cni-ebpf-fuzz/state",
        "logFile": "",
        "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]],
                 "dataDir": "/run/cni-ebpf-fuzz/ipam"},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let command = COMMANDS[usize::from(sel >> 4) % COMMANDS.len()];
    let raw: Vec<u8> = if sel & 1 == 0 {
        rest.to_vec()
    } else {
        let Ok(v) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        let mut conf = base();
        conf[FIELDS[usize::from(sel >> 1) % FIELDS.len()]] = v;
        serde_json::to_vec(&conf).unwrap()
    };
    match NetConf::parse(&raw, command) {
        // 1 version, 2 unsupported field, 6 decode, 7 invalid config.
        Err(e) => assert_spec_error(&e, &[1, 2, 6, 7], &String::from_utf8_lossy(&raw)),
        Ok(conf) => {
            if let Err(e) = Ipam::from_conf(&conf) {
                assert_spec_error(&e, &[7], &String::from_utf8_lossy(&raw));
            }
        }
    }
});
