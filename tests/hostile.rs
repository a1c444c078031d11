//! Hostile pods, hostile networks and careless administrators (issue 13):
//! each attack mounted with real packets (crafted frames from a pod or from
//! the external namespace where a socket cannot make them) through the real
//! binary, asserting on what reached the victim and on the counters.

mod harness;

use std::net::IpAddr;

use harness::*;
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mappings(m: Value) -> Value {
    json!({"runtimeConfig": {"portMappings": m}})
}

/// The network config of `mode` ("bridge", "routed") merged with `extra`.
fn mode_conf(t: &Topo, mode: &str, extra: Value) -> Value {
    let mut c = t.conf(json!({}));
    if mode == "routed" {
        merge(&mut c, json!({"mode": "routed"}));
    }
    merge(&mut c, extra);
    c
}

/// A far host behind the node: a namespace on its own link from the node
/// (`198.51.100.1` node side, `far` on the far side), routed by the node.
const FAR_NET: &str = "198.51.100";

// ---------------------------------------------------------------- finding 1

/// A hostIP that is not an address of the node is refused at ADD (code 7,
/// naming the key and the value) before anything changes, in main and in
/// chained mode: an external address, another pod's address, an address
/// nobody has.
#[test]
fn host_ip_must_be_a_node_address() {
    let t = Topo::new("hip");
    let (pv, pm) = (t.pod("victim"), t.pod("mapper"));
    let conf = t.conf(json!({}));
    let victim = result_ip(&t.add(&conf, "victim", Some(&pv), "eth0"), false);
    let links_before = links(&t.node);
    let state_before = t.files("state/testnet");
    let ipam_before = t.files("ipam/testnet");
    for bad in [EXT_IP.to_string(), victim.to_string(), "203.0.113.9".into()] {
        let c = t.conf(mappings(json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": bad},
        ])));
        let out = t.cni("ADD", &c, "mapper", Some(&pm), "eth0");
        assert_eq!(out.err_code(), 7, "hostIP {bad}: {out:?}");
        let msg = out.msg();
        assert!(
            msg.contains("runtimeConfig.portMappings[1].hostIP") && msg.contains(&bad),
            "{msg}"
        );
        eprintln!("hostIP {bad}: refused, code 7: {msg}");
        // Nothing was made: no veth, no record, no address taken.
        assert_eq!(links(&t.node), links_before, "ADD left a link behind");
        assert_eq!(t.files("state/testnet"), state_before, "ADD left a record");
        assert_eq!(t.files("ipam/testnet"), ipam_before, "ADD took an address");
        let eps = t.inspect()["endpoints"].as_array().unwrap().len();
        assert_eq!(eps, 1, "only the victim is an endpoint");
        assert!(t.inspect()["portmaps"].as_array().unwrap().is_empty());
    }
    // A node address (IPv4, IPv6, loopback) is fine.
    let c = t.conf(mappings(json!([
        {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": NODE_IP},
        {"hostPort": 8082, "containerPort": 80, "protocol": "tcp", "hostIP": NODE_IP6},
        {"hostPort": 8083, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
    ])));
    t.add(&c, "mapper", Some(&pm), "eth0");
    t.del(&c, "mapper", Some(&pm), "eth0");

    // Chained after the reference bridge: the same refusal.
    let pc = t.pod("chained");
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.3.0.0/24"}]], "dataDir": t.dir.join("ipam")});
    let list = json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
        {"type": "bridge", "bridge": "cni1", "isGateway": true, "ipam": ipam},
        {"type": "cni-ebpf", "capabilities": {"portMappings": true},
         "pinPath": t.pin(), "stateDir": t.dir.join("state"),
         "logFile": t.dir.join("cni.log"), "cgroupPath": t.cgroup,
         "runtimeConfig": {"portMappings": [
            {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": EXT_IP}]}},
    ]});
    let err = t
        .conflist("ADD", &list, "chained", &pc, "eth0", None)
        .expect_err("chained ADD with a foreign hostIP succeeded");
    assert_eq!(err.err_code(), 7, "{err:?}");
    assert!(err.msg().contains(EXT_IP), "{}", err.msg());
    // The reference bridge made its interfaces: its own DEL removes them.
    let mut bridge_only = list.clone();
    bridge_only["plugins"].as_array_mut().unwrap().truncate(1);
    t.conflist("DEL", &bridge_only, "chained", &pc, "eth0", None)
        .unwrap();
    t.del(&conf, "victim", Some(&pv), "eth0");
}

/// A mapping made while its hostIP was a node address, after the address
/// moved to a host behind the node: nothing meant for that host reaches the
/// mapping pod, from any side (external client through the node, a pod,
/// a node process through the socket hooks, the mapping pod itself).
fn stale_host_ip_never_hijacks(mode: &str) {
    let t = Topo::new(if mode == "routed" { "hjr" } else { "hjb" });
    let (pm, pv) = (t.pod("mapper"), t.pod("victim"));
    let far_ip = format!("{FAR_NET}.2");
    // The address is the node's when the mapping is made.
    ip_n(
        &t.node,
        &["addr", "add", &format!("{far_ip}/32"), "dev", "up0"],
    );
    ip_n(
        &t.ext,
        &["route", "add", &format!("{FAR_NET}.0/24"), "via", NODE_IP],
    );
    let cm = mode_conf(
        &t,
        mode,
        mappings(
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": far_ip}]),
        ),
    );
    t.add(&cm, "mapper", Some(&pm), "eth0");
    let _m = TcpServer::start(&pm, "0.0.0.0", 80, "mapper");
    // The control: while it is the node's, the mapping answers there.
    let got = tcp_get(&t.ext, ip(&far_ip), 8080).unwrap();
    assert!(got.starts_with("mapper "), "{got}");

    // The address moves to a far host behind the node.
    ip_n(
        &t.node,
        &["addr", "del", &format!("{far_ip}/32"), "dev", "up0"],
    );
    let far = t.pod("far");
    ip_n(
        &t.node,
        &[
            "link", "add", "far0", "type", "veth", "peer", "name", "eth0", "netns", &far,
        ],
    );
    ip_n(
        &t.node,
        &["addr", "add", &format!("{FAR_NET}.1/24"), "dev", "far0"],
    );
    ip_n(&t.node, &["link", "set", "far0", "up"]);
    ip_n(
        &far,
        &["addr", "add", &format!("{far_ip}/24"), "dev", "eth0"],
    );
    ip_n(&far, &["link", "set", "eth0", "up"]);
    ip_n(
        &far,
        &["route", "add", "default", "via", &format!("{FAR_NET}.1")],
    );
    let _f = TcpServer::start(&far, "0.0.0.0", 8080, "far");
    // Any ADD refreshes the node's addresses.
    let cv = mode_conf(&t, mode, json!({}));
    t.add(&cv, "victim", Some(&pv), "eth0");

    let dst = ip(&far_ip);
    let cases = [
        ("external client -> far host", tcp_get(&t.ext, dst, 8080)),
        ("other pod -> far host", tcp_get(&pv, dst, 8080)),
        ("mapping pod -> far host", tcp_get(&pm, dst, 8080)),
        (
            "node process (socket hooks) -> far host",
            node_tcp_get(&t, true, dst, 8080),
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(_, r)| !r.as_deref().is_ok_and(|s| s.starts_with("far ")))
        .map(|(what, r)| format!("{what}: {r:?}"))
        .collect();
    assert!(wrong.is_empty(), "{mode}: {}", wrong.join("\n"));
    t.del(&cm, "mapper", Some(&pm), "eth0");
    t.del(&cv, "victim", Some(&pv), "eth0");
}

#[test]
fn stale_host_ip_never_hijacks_bridge() {
    stale_host_ip_never_hijacks("bridge");
}

#[test]
fn stale_host_ip_never_hijacks_routed() {
    stale_host_ip_never_hijacks("routed");
}
