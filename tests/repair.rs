//! Repair and upgrade, end to end: pods serving through hostPorts while the
//! pins are lost (the topology's bpffs unmounted) or the binary's eBPF object
//! changes; STATUS, `cni-ebpf status`, `cni-ebpf repair` and a plain ADD
//! bring every old pod back through its hostPort.

mod harness;

use std::net::IpAddr;

use harness::*;
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Pod `i`: serves TCP on port 80 behind hostPort 18000+i.
fn pod_conf(t: &Topo, i: u16) -> Value {
    t.conf(json!({
        "cniVersion": "1.1.0",
        "runtimeConfig": {"portMappings": [{"hostPort": 18000 + i, "containerPort": 80}]},
    }))
}

/// Starts pods 1..=n with servers; returns their namespaces and servers.
fn serving_pods(t: &Topo, n: u16) -> (Vec<String>, Vec<TcpServer>) {
    let mut nss = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=n {
        let ns = t.pod(&format!("p{i}"));
        t.add(&pod_conf(t, i), &format!("pod{i}"), Some(&ns), "eth0");
        servers.push(TcpServer::start(&ns, "::", 80, &format!("pod{i}")));
        nss.push(ns);
    }
    (nss, servers)
}

/// Every pod 1..=n answers from outside through its hostPort.
#[track_caller]
fn assert_all_serve(t: &Topo, n: u16) {
    for i in 1..=n {
        assert_reply(
            &t.ext,
            ip(NODE_IP),
            18000 + i,
            &format!("pod{i} ::ffff:{EXT_IP}"),
        );
    }
}

fn status(t: &Topo) -> CniOut {
    t.cni("STATUS", &pod_conf(t, 0), "", None, "")
}

/// The pod's host veth (from its state record).
fn host_veth(t: &Topo, cid: &str) -> String {
    let rec = read(&t.dir.join(format!("state/testnet/{cid}:eth0.json")));
    let v: Value = serde_json::from_str(&rec).unwrap();
    v["hostVeth"].as_str().unwrap().to_string()
}

#[test]
fn lost_pins_status_then_repair_restores_every_host_port() {
    let t = Topo::new("rpl");
    let (_nss, _servers) = serving_pods(&t, 3);
    assert_all_serve(&t, 3);
    status(&t).ok();
    let conf_file = t.conf_file("net.conf", &pod_conf(&t, 0));
    let conf_arg = conf_file.to_str().unwrap();

    t.lose_pins();
    let st = status(&t);
    assert_eq!(st.err_code(), 51, "STATUS after lost pins: {}", st.stdout);
    for want in ["pins missing", "maps/endpoints", "3 attachment(s)"] {
        assert!(
            st.msg().contains(want),
            "STATUS message lacks {want:?}: {}",
            st.msg()
        );
    }
    let (code, out) = t.cli(None, &["status", "--conf", conf_arg]);
    assert_eq!(code, 1, "cni-ebpf status after lost pins: {out}");
    assert!(
        out.contains("code 51") && out.contains("pins missing"),
        "{out}"
    );

    let (code, out) = t.cli(None, &["repair", "--conf", conf_arg]);
    assert_eq!(code, 0, "cni-ebpf repair: {out}");
    assert!(out.contains("3 restored, 0 skipped, 0 error(s)"), "{out}");
    status(&t).ok();
    let (code, out) = t.cli(None, &["status", "--conf", conf_arg]);
    assert_eq!((code, out.trim()), (0, "ready"));
    // Every endpoint and mapping is back in the new maps, and the old veths
    // run the newly loaded programs (the uplink's old filter was replaced
    // too, so without the restored entries no hostPort would answer).
    let ins = t.inspect();
    assert_eq!(ins["portMappings"].as_array().unwrap().len(), 6, "{ins}");
    assert_eq!(ins["endpoints"].as_array().unwrap().len(), 6, "{ins}");
    let new_prog = t.pinned_prog_ids("from_container");
    assert_eq!(new_prog.len(), 1, "one build pinned: {new_prog:?}");
    assert_eq!(
        t.attached_prog_id(&host_veth(&t, "pod1"), "ingress"),
        Some(new_prog[0]),
        "pod1's veth runs the reloaded from_container"
    );
    assert_all_serve(&t, 3);
    // A second repair finds everything in place and changes nothing.
    let (code, out) = t.cli(
        None,
        &[
            "repair",
            "--conf",
            conf_arg,
            "--pin-path",
            t.pin().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 restored"), "{out}");
    assert_all_serve(&t, 3);

    // Lost again: this time a plain ADD of a new pod repairs the old ones.
    t.lose_pins();
    assert_eq!(status(&t).err_code(), 51);
    let p4 = t.pod("p4");
    t.add(&pod_conf(&t, 4), "pod4", Some(&p4), "eth0");
    let _s4 = TcpServer::start(&p4, "::", 80, "pod4");
    assert_all_serve(&t, 4);
    status(&t).ok();
    let log = read(&t.dir.join("cni.log"));
    assert!(
        log.contains("repair: 3 attachment(s) restored, 0 skipped, 0 error(s)"),
        "ADD's repair not logged"
    );

    // DEL still cleans up a repaired pod completely.
    t.del(&pod_conf(&t, 1), "pod1", Some(&_nss[0]), "eth0");
    let ins = t.inspect();
    assert!(
        !ins["portMappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["hostPort"] == 18001),
        "{ins}"
    );
}

#[test]
fn repair_skips_records_whose_veth_is_gone_and_status_ignores_them() {
    let t = Topo::new("rps");
    let (nss, mut servers) = serving_pods(&t, 2);
    t.lose_pins();
    // pod2's namespace (and so its veth pair) disappears, as after a crash;
    // its server's thread holds the namespace until it stops.
    drop(servers.pop());
    t.del_ns(&nss[1]);
    let gone = host_veth(&t, "pod2");
    for _ in 0..100 {
        if !t.node_links().contains(&gone) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!t.node_links().contains(&gone), "{gone} still there");
    let st = status(&t);
    assert_eq!(st.err_code(), 51, "{}", st.stdout);
    assert!(st.msg().contains("1 attachment(s)"), "{}", st.msg());
    let conf_file = t.conf_file("net.conf", &pod_conf(&t, 0));
    let (code, out) = t.cli(None, &["repair", "--conf", conf_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 restored, 1 skipped"), "{out}");
    assert!(out.contains("host veth is gone"), "{out}");
    assert_all_serve(&t, 1);
    status(&t).ok();
}
