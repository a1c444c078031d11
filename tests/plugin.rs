//! End-to-end tests of the plugin as a runtime calls it, with real packets
//! in namespaces the tests create.

mod harness;

use std::{net::IpAddr, time::Duration};

use harness::{frames::*, *};
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Asserts that the pod namespace has nothing but its loopback.
#[track_caller]
fn assert_pod_untouched(ns: &str) {
    let links = links_when_gone(ns, |l| l != "lo");
    assert_eq!(links, ["lo"], "pod should only have lo");
}

/// Asserts that nothing of (network) is left: no veths, no state, no
/// reservations, no endpoint entries, no link pins.
fn assert_clean(t: &Topo) {
    let ours = |l: &str| l.starts_with("veth") || l.starts_with(TOMBSTONE_PREFIX);
    let links: Vec<String> = links_when_gone(&t.node, ours)
        .into_iter()
        .filter(|l| ours(l))
        .collect();
    assert!(links.is_empty(), "veths left in node: {links:?}");
    let state: Vec<String> = t
        .files("state/testnet")
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .collect();
    assert!(state.is_empty(), "state records left: {state:?}");
    let ipam: Vec<String> = t
        .files("ipam/testnet")
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
        .collect();
    assert!(ipam.is_empty(), "IP reservations left: {ipam:?}");
    if t.dir.join(t.abi_dir()).join("maps/endpoints").exists() {
        let eps = t.inspect()["endpoints"].as_array().unwrap().clone();
        assert!(eps.is_empty(), "endpoint entries left: {eps:?}");
        let ifaces = t.inspect()["interfaces"].as_array().unwrap().clone();
        assert!(ifaces.is_empty(), "interface entries left: {ifaces:?}");
        let ports = t.inspect()["portmaps"].as_array().unwrap().clone();
        assert!(ports.is_empty(), "hostPort mappings left: {ports:?}");
        let pins = t.endpoint_link_pins();
        assert!(pins.is_empty(), "link pins left: {pins:?}");
    }
}

/// VERSION, and DEL with arguments it does not use; the battery of bad
/// inputs is in tests/badinput.rs.
#[test]
fn version_and_del_ignore_what_they_do_not_use() {
    let t = Topo::new("bad");
    let pod = t.pod("p");
    let conf = t.conf(json!({}));
    // VERSION.
    let v = t
        .exec(
            BIN,
            &Call {
                cmd: "VERSION",
                ..Default::default()
            },
            br#"{"cniVersion":"0.4.0"}"#,
        )
        .ok();
    let j = v.json.unwrap();
    assert_eq!(j["cniVersion"], "0.4.0");
    assert_eq!(
        j["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    // DEL never fails on capability arguments it does not use.
    let bad_rc = t.conf(json!({"runtimeConfig": {"portMappings": [{"hostPort": 9000, "containerPort": 80, "protocol": "sctp"}]}}));
    t.del(&bad_rc, "c1", Some(&pod), "eth0");
    // Missing variables are named.
    let out = t.exec(
        BIN,
        &Call {
            cmd: "ADD",
            ..Default::default()
        },
        conf.to_string().as_bytes(),
    );
    assert_eq!(out.err_code(), 4);
    assert!(
        out.msg().contains("CNI_CONTAINERID") && out.msg().contains("CNI_IFNAME"),
        "{}",
        out.msg()
    );
    assert_clean(&t);
    // And the pod is untouched.
    assert_pod_untouched(&pod);
}

#[test]
fn bridge_mode_pods_reachable_and_del_is_complete() {
    let t = Topo::new("br");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    let conf = t.conf(json!({"cniVersion": "1.1.0", "mtu": 1400}));
    let r1 = t.cni("ADD", &conf, "pod1", Some(&p1), "eth0").ok();
    let r2 = t.cni("ADD", &conf, "pod2", Some(&p2), "eth0").ok();
    eprintln!(
        "ADD took {:?} (first, loads programs) and {:?}",
        r1.took, r2.took
    );
    let (r1, r2) = (r1.json.unwrap(), r2.json.unwrap());
    // Result shaped like the bridge plugin's.
    let ifs = r1["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{r1}");
    assert_eq!(ifs[0]["name"], "cni0");
    assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth"));
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], format!("/run/netns/{p1}"));
    assert_eq!(ifs[2]["mtu"], 1400);
    assert_eq!(r1["ips"][0]["interface"], 2);
    assert_eq!(r1["ips"][0]["gateway"], "10.1.0.1");
    assert_eq!(r1["cniVersion"], "1.1.0");

    let (a1, a2) = (result_ip(&r1, false), result_ip(&r2, false));
    let (b1, b2) = (result_ip(&r1, true), result_ip(&r2, true));
    assert_ne!(a1, a2);
    let mtu = ip_n(&p1, &["-o", "link", "show", "eth0"]);
    assert!(mtu.contains("mtu 1400"), "{mtu}");
    let _s1 = TcpServer::start(&p1, "::", 8080, "pod1");
    let _s2 = TcpServer::start(&p2, "::", 8080, "pod2");
    // From outside the node, through it, to each pod: the pod sees the client's own address.
    assert_reply(&t.ext, a1, 8080, &format!("pod1 ::ffff:{EXT_IP}"));
    assert_reply(&t.ext, a2, 8080, &format!("pod2 ::ffff:{EXT_IP}"));
    assert_reply(&t.ext, b1, 8080, &format!("pod1 {EXT_IP6}"));
    // Pod to pod across the bridge keeps the pod source.
    assert_reply(&p1, a2, 8080, &format!("pod2 ::ffff:{a1}"));
    assert_reply(&p2, b1, 8080, &format!("pod1 {b2}"));
    // Counters moved (checked here: a retried ADD below makes a new veth
    // whose counters start from zero).
    let insp = t.inspect();
    let ep = insp["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ips"][0] == a1.to_string())
        .unwrap()
        .clone();
    assert!(
        ep["counters"]["fromPackets"].as_u64().unwrap() > 0
            && ep["counters"]["toPackets"].as_u64().unwrap() > 0,
        "{ep}"
    );

    // CHECK passes.
    let prev = json!({"prevResult": r1.clone()});
    let cc = merged(&conf, prev);
    t.cni("CHECK", &cc, "pod1", Some(&p1), "eth0").ok();
    // ... and notices programs removed behind its back.
    let host1 = r1["interfaces"][1]["name"].as_str().unwrap().to_string();
    // A TCX link goes with its pin; a cls_bpf filter is deleted with tc.
    let link_pin = t
        .dir
        .join(t.abi_dir())
        .join("links")
        .join(format!("{host1}_ingress"));
    if link_pin.exists() {
        std::fs::remove_file(&link_pin).unwrap();
    } else {
        sh(&[
            "ip", "netns", "exec", &t.node, "tc", "filter", "del", "dev", &host1, "ingress",
        ]);
    }
    let out = t.cni("CHECK", &cc, "pod1", Some(&p1), "eth0");
    assert_eq!(out.err_code(), 104, "{}", out.stdout);
    assert!(out.msg().contains("not attached"), "{}", out.msg());
    // A retried ADD of the same container repairs it (and keeps the address).
    let again = t.add(&conf, "pod1", Some(&p1), "eth0");
    assert_eq!(result_ip(&again, false), a1);
    let r1 = again;
    let cc = merged(&conf, json!({"prevResult": r1.clone()}));
    t.cni("CHECK", &cc, "pod1", Some(&p1), "eth0").ok();
    // Traffic both ways through the re-created veth (what the pod sends on
    // its own at link-up may precede the attachment: a TCX attach waits
    // for an RCU grace period).
    sh_in(&p1, &["ping", "-c", "1", "-W", "2", "10.1.0.1"]);

    // bpftool shows named fields of the pinned maps.
    assert_bpftool_fields(
        &t,
        "endpoints",
        &["ifindex", "owner", "mac", "family", "addr"],
    );
    let progs = sh(&["ip", "netns", "exec", &t.node, "bpftool", "net", "show"]);
    eprintln!("{progs}");

    // DEL three times each; everything goes.
    for _ in 0..3 {
        t.del(&conf, "pod1", Some(&p1), "eth0");
    }
    assert!(
        tcp_get(&t.ext, a1, 8080).is_err(),
        "pod1 still reachable after DEL"
    );
    // DEL of pod1 must not break pod2.
    assert_reply(&t.ext, a2, 8080, &format!("pod2 ::ffff:{EXT_IP}"));
    let d = t.cni("DEL", &conf, "pod2", Some(&p2), "eth0").ok();
    eprintln!("DEL took {:?}", d.took);
    t.del(&conf, "pod2", Some(&p2), "eth0");
    assert_clean(&t);
    assert_pod_untouched(&p1);
}

#[test]
fn routed_mode_pods_reachable() {
    let t = Topo::new("rt");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    // Routed mode also runs with TCX links (pinned), the bridge test with the default netlink filters.
    let conf = t.conf(json!({"mode": "routed", "attachMode": "tcx", "ipam": {"ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00:2::/64"}]]}}));
    let r1 = t.add(&conf, "pod1", Some(&p1), "eth0");
    let r2 = t.add(&conf, "pod2", Some(&p2), "eth0");
    assert_eq!(
        r1["interfaces"].as_array().unwrap().len(),
        2,
        "routed mode has no bridge: {r1}"
    );
    assert!(
        r1["ips"][0]["address"].as_str().unwrap().ends_with("/32"),
        "{r1}"
    );
    assert!(!t.node_links().contains(&"cni0".to_string()));
    let (a1, a2, b1) = (
        result_ip(&r1, false),
        result_ip(&r2, false),
        result_ip(&r1, true),
    );
    let _s1 = TcpServer::start(&p1, "::", 8080, "pod1");
    let _s2 = TcpServer::start(&p2, "::", 8080, "pod2");
    assert_reply(&t.ext, a1, 8080, &format!("pod1 ::ffff:{EXT_IP}"));
    assert_reply(&t.ext, b1, 8080, &format!("pod1 {EXT_IP6}"));
    assert_reply(&p2, a1, 8080, &format!("pod1 ::ffff:{a2}"));
    assert_eq!(t.endpoint_link_pins().len(), 4, "two TCX link pins per pod");
    let cc = merged(&conf, json!({"prevResult": r1}));
    t.cni("CHECK", &cc, "pod1", Some(&p1), "eth0").ok();
    t.del(&conf, "pod1", Some(&p1), "eth0");
    t.del(&conf, "pod2", Some(&p2), "eth0");
    assert_clean(&t);
}

#[test]
fn del_works_without_netns_state_or_prev_result() {
    let t = Topo::new("dn");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({}));
    t.cni("ADD", &conf, "pod1", Some(&p1), "eth0").ok();
    t.del_ns(&p1);
    // The netns is gone, and DEL gets no CNI_NETNS at all.
    t.del(&conf, "pod1", None, "eth0");
    t.del(&conf, "pod1", None, "eth0");
    assert_clean(&t);
    // A DEL for a container never seen, with a netns path that does not exist.
    t.del(&conf, "never-added", Some("no-such-ns"), "eth0");
    // State lost but the kernel side still there: DEL finds it by derived names and owner.
    let p2 = t.pod("p2");
    t.cni("ADD", &conf, "pod2", Some(&p2), "eth0").ok();
    std::fs::remove_dir_all(t.dir.join("state/testnet")).unwrap();
    t.del(&conf, "pod2", Some(&p2), "eth0");
    assert_clean(&t);
    // The same with the prevResult libcni passes on DEL: still main mode, still complete.
    let r3 = t.add(&conf, "pod3", Some(&p2), "eth0");
    std::fs::remove_dir_all(t.dir.join("state/testnet")).unwrap();
    let with_prev = merged(&conf, json!({"prevResult": r3}));
    t.del(&with_prev, "pod3", Some(&p2), "eth0");
    assert_clean(&t);
}

#[test]
fn failed_add_rolls_back_everything() {
    let t = Topo::new("rb");
    let p1 = t.pod("p1");
    // The route's gateway is not on any link: the pod-side step fails after
    // IPAM, the veth pair and the bridge were done.
    let conf = t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.3.0.0/24"}]], "routes": [{"dst": "192.168.77.0/24", "gw": "10.99.0.1"}]}}));
    let out = t.cni("ADD", &conf, "pod1", Some(&p1), "eth0");
    assert!(out.err_code() >= 100, "{}", out.stdout);
    assert_clean(&t);
    assert_pod_untouched(&p1);
    // The same container then succeeds with a good config; the released
    // address is not handed out again at once (round robin, as host-local).
    let good = t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.3.0.0/24"}]]}}));
    let r = t.add(&good, "pod1", Some(&p1), "eth0");
    assert_eq!(result_ip(&r, false), ip("10.3.0.3"));
    // ADD into a netns where the interface already exists is an error, and changes nothing.
    let again = t.cni("ADD", &good, "pod9", Some(&p1), "eth0");
    assert_eq!(again.err_code(), 4, "{}", again.stdout);
    assert!(again.msg().contains("already exists"), "{}", again.msg());
    t.del(&good, "pod1", Some(&p1), "eth0");
    assert_clean(&t);
    // A retried ADD (same container) converges instead of failing.
    let r1 = t.add(&good, "pod1", Some(&p1), "eth0");
    let r2 = t.add(&good, "pod1", Some(&p1), "eth0");
    assert_eq!(
        result_ip(&r2, false),
        result_ip(&r1, false),
        "a retried ADD keeps its address"
    );
    assert_eq!(t.inspect()["endpoints"].as_array().unwrap().len(), 1);
    t.del(&good, "pod1", Some(&p1), "eth0");
    assert_clean(&t);
}

#[test]
fn a_full_bridge_is_refused_in_words_and_rolled_back() {
    // A Linux bridge takes at most 1023 ports (BR_MAX_PORTS); the next
    // enslave fails with EXFULL ("Exchange full"), which says nothing to a
    // user. Fill the bridge with bare veth ports (cheaper than 1023 pods;
    // this kernel has no dummy driver).
    let t = Topo::new("full");
    let p1 = t.pod("p1");
    ip_n(&t.node, &["link", "add", "cni0", "type", "bridge"]);
    let batch: String = (0..1023)
        .map(|i| format!("link add d{i} master cni0 type veth peer name e{i}\n"))
        .collect();
    let mut child = std::process::Command::new("ip")
        .args(["-n", &t.node, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "1023 veth bridge ports");
    let conf = t.conf(json!({}));
    let out = t.cni("ADD", &conf, "pod1", Some(&p1), "eth0");
    assert!(out.err_code() >= 100, "{}", out.stdout);
    let msg = out.msg();
    for want in ["cni0", "1023 ports", "routed"] {
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    assert!(!msg.contains("Exchange full"), "{msg}");
    assert_clean(&t);
    assert_pod_untouched(&p1);
    // One port freed: the same pod now gets its network.
    ip_n(&t.node, &["link", "del", "d0"]);
    t.add(&conf, "pod1", Some(&p1), "eth0");
    t.del(&conf, "pod1", Some(&p1), "eth0");
    assert_clean(&t);
}

#[test]
fn parallel_adds_get_distinct_addresses() {
    let t = std::sync::Arc::new(Topo::new("par"));
    let conf = t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.4.0.0/24"}]]}}));
    let pods: Vec<String> = (0..32).map(|i| t.pod(&format!("q{i}"))).collect();
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (t, conf, p) = (t.clone(), conf.clone(), p.clone());
            std::thread::spawn(move || {
                let r = t.cni("ADD", &conf, &format!("c{i}"), Some(&p), "eth0").ok();
                result_ip(r.json.as_ref().unwrap(), false)
            })
        })
        .collect();
    let mut ips: Vec<IpAddr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 32, "addresses were handed out twice: {ips:?}");
    assert_eq!(t.inspect()["endpoints"].as_array().unwrap().len(), 32);
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (t, conf, p) = (t.clone(), conf.clone(), p.clone());
            std::thread::spawn(move || {
                t.del(&conf, &format!("c{i}"), Some(&p), "eth0");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_clean(&t);
}

#[test]
fn shares_a_data_dir_with_the_reference_host_local() {
    let t = std::sync::Arc::new(Topo::new("hl"));
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.5.0.0/24"}]], "dataDir": t.dir.join("ipam")});
    let conf = t.conf(json!({"ipam": ipam.clone()}));
    let ref_conf = json!({"cniVersion": "1.0.0", "name": "testnet", "ipam": ipam});
    // Pod i/2 gets one interface from each implementation.
    let pods: Vec<String> = (0..8).map(|i| t.pod(&format!("h{i}"))).collect();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (t, conf, ref_conf, p) = (
                t.clone(),
                conf.clone(),
                ref_conf.clone(),
                pods[i / 2].clone(),
            );
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    let r = t
                        .cni("ADD", &conf, &format!("ours{i}"), Some(&p), "eth0")
                        .ok();
                    result_ip(r.json.as_ref().unwrap(), false)
                } else {
                    let call = Call {
                        cmd: "ADD",
                        cid: &format!("ref{i}"),
                        netns: Some(format!("/run/netns/{p}")),
                        ifname: "eth1",
                        ..Default::default()
                    };
                    let r = t
                        .exec(
                            &format!("{REF_CNI}/host-local"),
                            &call,
                            ref_conf.to_string().as_bytes(),
                        )
                        .ok();
                    result_ip(r.json.as_ref().unwrap(), false)
                }
            })
        })
        .collect();
    let mut ips: Vec<IpAddr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(
        ips.len(),
        16,
        "double allocation between the two implementations: {ips:?}"
    );
    // The reference releases its own; ours releases ours; nothing is left.
    for i in 0..16 {
        let p = &pods[i / 2];
        if i % 2 == 0 {
            t.del(&conf, &format!("ours{i}"), Some(p), "eth0");
        } else {
            let call = Call {
                cmd: "DEL",
                cid: &format!("ref{i}"),
                netns: Some(format!("/run/netns/{p}")),
                ifname: "eth1",
                ..Default::default()
            };
            t.exec(
                &format!("{REF_CNI}/host-local"),
                &call,
                ref_conf.to_string().as_bytes(),
            )
            .ok();
        }
    }
    assert_clean(&t);
}

#[test]
fn anti_spoofing_drops_forged_sources() {
    let t = Topo::new("sp");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.6.0.0/24"}]]}}));
    let r = t.add(&conf, "pod1", Some(&p1), "eth0");
    let own = result_ip(&r, false);
    // The pod gives itself a second address that IPAM never assigned.
    ip_n(&p1, &["addr", "add", "10.6.0.200/24", "dev", "eth0"]);
    let dst: std::net::SocketAddr = format!("{EXT_IP}:9999").parse().unwrap();
    let rx = udp_recv(
        &t.ext,
        "0.0.0.0:9999".parse().unwrap(),
        Duration::from_millis(700),
    );
    udp_send(&p1, Some(ip("10.6.0.200")), dst, "forged");
    assert_eq!(rx.join().unwrap(), None, "a forged source left the pod");
    let rx = udp_recv(
        &t.ext,
        "0.0.0.0:9999".parse().unwrap(),
        Duration::from_secs(3),
    );
    udp_send(&p1, Some(own), dst, "honest");
    assert_eq!(rx.join().unwrap(), Some(("honest".to_string(), own)));
    let insp = t.inspect();
    assert!(
        insp["counters"]["node"]["drop_spoofed_ip"]
            .as_u64()
            .unwrap()
            >= 1,
        "{insp}"
    );
    let ep = insp["endpoints"].as_array().unwrap()[0].clone();
    assert!(ep["counters"]["dropSpoofed"].as_u64().unwrap() >= 1, "{ep}");
    t.del(&conf, "pod1", Some(&p1), "eth0");
    assert_clean(&t);
}

#[test]
fn chained_after_reference_bridge_and_before_reference_tuning() {
    let t = Topo::new("ch");
    let p1 = t.pod("p1");
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.7.0.0/24"}]], "dataDir": t.dir.join("ipam")});
    // Reference bridge + host-local, then us in portmap's place.
    let list = json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
        {"type": "bridge", "bridge": "cni1", "isGateway": true, "isDefaultGateway": true, "ipam": ipam},
        {"type": "cni-ebpf", "pinPath": t.pin(), "stateDir": t.dir.join("state"), "logFile": t.dir.join("cni.log"),
         "cgroupPath": t.cgroup, "capabilities": {"portMappings": true}, "runtimeConfig": {"portMappings": [{"hostPort": 8081, "containerPort": 8080, "protocol": "tcp"}]}}
    ]});
    let res = t
        .conflist("ADD", &list, "pod1", &p1, "eth0", None)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .unwrap();
    // Our result is the bridge's, passed on.
    assert_eq!(res["interfaces"][0]["name"], "cni1", "{res}");
    let a = result_ip(&res, false);
    let eps = t.inspect()["endpoints"].as_array().unwrap().clone();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0]["ips"], json!([a.to_string()]));
    let rec = read(&t.dir.join("state/testnet/pod1:eth0.json"));
    assert!(rec.contains("8081"), "port mappings kept in state: {rec}");
    let _s = TcpServer::start(&p1, "0.0.0.0", 8080, "pod1");
    assert_reply(&t.ext, a, 8080, &format!("pod1 {EXT_IP}"));
    // CHECK through the chain.
    t.conflist("CHECK", &list, "pod1", &p1, "eth0", Some(&res))
        .unwrap_or_else(|e| panic!("{e:?}"));
    t.conflist("DEL", &list, "pod1", &p1, "eth0", Some(&res))
        .unwrap_or_else(|e| panic!("{e:?}"));
    t.conflist("DEL", &list, "pod1", &p1, "eth0", None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_clean(&t);

    // Us as the main plugin, then the reference tuning plugin reading our prevResult.
    let p2 = t.pod("p2");
    let list2 = json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
        t.conf(json!({"cniVersion": null, "name": null, "ipam": {"ranges": [[{"subnet": "10.8.0.0/24"}]]}})),
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}}
    ]});
    let res = t
        .conflist("ADD", &list2, "pod2", &p2, "eth0", None)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .unwrap();
    assert_eq!(result_ip(&res, false), ip("10.8.0.2"), "{res}");
    let v = sh_in(&p2, &["sysctl", "-n", "net.ipv4.conf.eth0.accept_local"]);
    assert_eq!(v.trim(), "1");
    t.conflist("DEL", &list2, "pod2", &p2, "eth0", Some(&res))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_clean(&t);
}

/// DEL only retires the veth pair (down, renamed: cheap) and leaves the
/// deletion, which waits for RCU grace periods, to a reaper process; GC
/// deletes what a reaper left. The names are free at once: an ADD into the
/// same namespace right after DEL (as podman's reconnect does) succeeds.
#[test]
fn del_frees_names_at_once_and_retired_veths_are_deleted() {
    let t = Topo::new("reap");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.11.0.0/24"}]]}}));
    let r1 = t.add(&conf, "pod1", Some(&p1), "eth0");
    let host = r1["interfaces"][1]["name"].as_str().unwrap().to_string();
    let a1 = result_ip(&r1, false);
    // Another pod keeps the bridge's carrier up: the node's neighbour
    // entries on it then survive pod1's DEL.
    let p2 = t.pod("p2");
    t.add(&conf, "pod2", Some(&p2), "eth0");
    {
        // The node learns pod1's MAC for a1.
        let _srv = TcpServer::start(&p1, "0.0.0.0", 7000, "first");
        assert_reply(&t.ext, a1, 7000, &format!("first {EXT_IP}"));
    }
    t.del(&conf, "pod1", Some(&p1), "eth0");
    // No sleep: the reaper may still be at work.
    assert!(!t.node_links().contains(&host), "{:?}", t.node_links());
    assert!(
        !links(&p1).contains(&"eth0".to_string()),
        "{:?}",
        links(&p1)
    );
    // The same address again, on a new veth with a new MAC: reachable at
    // once, although the node still had the old MAC cached for it.
    let again = merged(
        &conf,
        json!({"runtimeConfig": {"ips": [format!("{a1}/24")]}}),
    );
    let r2 = t.add(&again, "pod1", Some(&p1), "eth0");
    assert_eq!(result_ip(&r2, false), a1);
    let _srv = TcpServer::start(&p1, "0.0.0.0", 7000, "again");
    assert_reply(&t.ext, a1, 7000, &format!("again {EXT_IP}"));
    t.del(&conf, "pod1", Some(&p1), "eth0");
    t.del(&conf, "pod2", Some(&p2), "eth0");
    assert_clean(&t);
    assert_pod_untouched(&p1);

    // A retired pair whose reaper never ran: GC deletes it. Only veths
    // named as DEL retires them (the prefix and their own ifindex) count;
    // another kind of link with it is not ours (a veth that merely looks
    // retired: tests/hostile.rs).
    ip_n(
        &t.node,
        &[
            "link", "add", "retiring", "type", "veth", "peer", "name", "x0",
        ],
    );
    let index: u32 = ip_n(&t.node, &["-o", "link", "show", "retiring"])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let tomb = format!("{TOMBSTONE_PREFIX}{index:08x}");
    ip_n(&t.node, &["link", "set", "retiring", "name", &tomb]);
    ip_n(&t.node, &["link", "add", "cebzbr", "type", "bridge"]);
    let gc = merged(
        &conf,
        json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}),
    );
    t.gc(&gc).ok();
    let left = t.node_links();
    assert!(
        !left.contains(&tomb) && !left.contains(&"x0".to_string()),
        "{left:?}"
    );
    assert!(left.contains(&"cebzbr".to_string()), "{left:?}");
}

#[test]
fn check_gc_and_status() {
    let t = Topo::new("gc");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    let conf =
        t.conf(json!({"cniVersion": "1.1.0", "ipam": {"ranges": [[{"subnet": "10.9.0.0/29"}]]}}));
    // STATUS before anything: loads the programs, reports ready.
    t.exec(
        BIN,
        &Call {
            cmd: "STATUS",
            ..Default::default()
        },
        conf.to_string().as_bytes(),
    )
    .ok();
    let r1 = t.add(&conf, "pod1", Some(&p1), "eth0");
    t.cni("ADD", &conf, "pod2", Some(&p2), "eth0").ok();
    // CHECK notices a removed address.
    let a1 = result_ip(&r1, false);
    let cc = merged(&conf, json!({"prevResult": r1}));
    t.cni("CHECK", &cc, "pod1", Some(&p1), "eth0").ok();
    ip_n(&p1, &["addr", "del", &format!("{a1}/29"), "dev", "eth0"]);
    let out = t.cni("CHECK", &cc, "pod1", Some(&p1), "eth0");
    assert_eq!(out.err_code(), 104, "{}", out.stdout);
    assert!(out.msg().contains(&a1.to_string()), "{}", out.msg());
    // CHECK of an unknown container.
    assert_eq!(
        t.cni("CHECK", &cc, "nobody", Some(&p1), "eth0").err_code(),
        3
    );
    // GC keeps pod2 and removes pod1.
    let mut gc = conf.clone();
    merge(
        &mut gc,
        json!({"cni.dev/valid-attachments": [{"containerID": "pod2", "ifname": "eth0"}]}),
    );
    t.gc(&gc).ok();
    let eps = t.inspect()["endpoints"].as_array().unwrap().clone();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(
        t.files("state/testnet")
            .iter()
            .filter(|f| f.ends_with(".json"))
            .count(),
        1
    );
    // The older key is accepted too; with nothing valid, everything goes.
    let gc2 = merged(&conf, json!({"cni.dev/attachments": []}));
    t.gc(&gc2).ok();
    assert_clean(&t);
    // STATUS reports an exhausted pool: a /29 has 5 usable addresses.
    let pods: Vec<String> = (0..5).map(|i| t.pod(&format!("x{i}"))).collect();
    for (i, p) in pods.iter().enumerate() {
        t.cni("ADD", &conf, &format!("x{i}"), Some(p), "eth0").ok();
    }
    let st = t.exec(
        BIN,
        &Call {
            cmd: "STATUS",
            ..Default::default()
        },
        conf.to_string().as_bytes(),
    );
    assert_eq!(st.err_code(), 50, "{}", st.stdout);
    let p6 = t.pod("x6");
    let ex = t.cni("ADD", &conf, "x6", Some(&p6), "eth0");
    assert_eq!(ex.err_code(), 100, "{}", ex.stdout);
    assert!(
        ex.msg().contains("no IP addresses available"),
        "{}",
        ex.msg()
    );
    for (i, p) in pods.iter().enumerate() {
        t.del(&conf, &format!("x{i}"), Some(p), "eth0");
    }
    assert_clean(&t);
}

/// Keeps `Value` imported for helpers used only in some tests.
#[allow(dead_code)]
fn _unused(_: Value) {}

#[test]
fn delegated_ipam_and_requested_addresses() {
    let t = Topo::new("dl");
    let (p1, p2, p3) = (t.pod("p1"), t.pod("p2"), t.pod("p3"));
    // Debian's reference `static` IPAM plugin, found on CNI_PATH.
    let conf = t.conf(json!({"ipam": {"type": "static", "addresses": [{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}]}}));
    let r = t.add(&conf, "pod1", Some(&p1), "eth0");
    assert_eq!(result_ip(&r, false), ip("10.10.0.5"));
    let addr = ip_n(&p1, &["-o", "addr", "show", "eth0"]);
    assert!(addr.contains("10.10.0.5/24"), "{addr}");
    let cc = merged(&conf, json!({"cniVersion": "1.0.0", "prevResult": r}));
    t.cni("CHECK", &cc, "pod1", Some(&p1), "eth0").ok();
    t.del(&conf, "pod1", Some(&p1), "eth0");

    // CNI_ARGS IP= and MAC=, with K8S_* keys ignored as IgnoreUnknown allows.
    let conf = t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.11.0.0/24"}]]}}));
    let call = Call {
        cmd: "ADD",
        cid: "pod2",
        netns: Some(format!("/run/netns/{p2}")),
        ifname: "eth0",
        args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=pod2;IP=10.11.0.77;MAC=02:42:ac:11:00:77"),
        ..Default::default()
    };
    let r = t
        .exec(BIN, &call, conf.to_string().as_bytes())
        .ok()
        .json
        .unwrap();
    assert_eq!(result_ip(&r, false), ip("10.11.0.77"));
    assert_eq!(r["interfaces"][2]["mac"], "02:42:ac:11:00:77");
    let link = ip_n(&p2, &["-o", "link", "show", "eth0"]);
    assert!(link.contains("02:42:ac:11:00:77"), "{link}");
    // runtimeConfig ips/mac do the same.
    let mut rc = conf.clone();
    merge(
        &mut rc,
        json!({"runtimeConfig": {"ips": ["10.11.0.88/24"], "mac": "02:42:ac:11:00:88"}}),
    );
    let r = t.add(&rc, "pod3", Some(&p3), "eth0");
    assert_eq!(result_ip(&r, false), ip("10.11.0.88"));
    assert_eq!(r["interfaces"][2]["mac"], "02:42:ac:11:00:88");
    // A requested address already taken: clear error, nothing changed.
    let p4 = t.pod("p4");
    let taken = t.cni("ADD", &rc, "pod4", Some(&p4), "eth0");
    assert_eq!(taken.err_code(), 101, "{}", taken.stdout);
    assert!(taken.msg().contains("10.11.0.88"), "{}", taken.msg());
    t.del(&conf, "pod2", Some(&p2), "eth0");
    t.del(&rc, "pod3", Some(&p3), "eth0");
    assert_clean(&t);
}

#[test]
fn old_versions_get_old_result_shapes() {
    let t = Topo::new("ov");
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let p = t.pod(&format!("v{i}"));
        let conf = t.conf(json!({"cniVersion": v, "mtu": 1450, "ipam": {"ranges": [[{"subnet": "10.12.0.0/24"}]]}}));
        let r = t.add(&conf, &format!("c{i}"), Some(&p), "eth0");
        assert_eq!(r["cniVersion"], *v);
        let has_version_field = r["ips"][0].get("version").is_some();
        assert_eq!(has_version_field, v.starts_with("0."), "{v}: {r}");
        let has_mtu = r["interfaces"][2].get("mtu").is_some();
        assert_eq!(has_mtu, *v == "1.1.0", "{v}: {r}");
        t.del(&conf, &format!("c{i}"), Some(&p), "eth0");
    }
    assert_clean(&t);
}

#[test]
fn host_ports_are_owned_by_one_container() {
    let t = Topo::new("hp");
    let (p1, p2, p3) = (t.pod("p1"), t.pod("p2"), t.pod("p3"));
    let with_ports = |pm: Value| {
        t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.13.0.0/24"}], [{"subnet": "fd00:13::/64"}]]}, "runtimeConfig": {"portMappings": pm}}))
    };
    let c1 = with_ports(
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": NODE_IP}]),
    );
    let r1 = t.add(&c1, "owner1", Some(&p1), "eth0");
    let insp = t.inspect();
    let ports = insp["portmaps"].as_array().unwrap().clone();
    // tcp/8080 for both families, udp/5353 only on the IPv4 hostIP.
    assert_eq!(ports.len(), 3, "{ports:?}");
    let tcp4 = ports
        .iter()
        .find(|p| p["protocol"] == "tcp" && p["podIP"] == result_ip(&r1, false).to_string())
        .unwrap();
    assert_eq!(tcp4["hostPort"], 8080);
    assert_eq!(tcp4["containerPort"], 80);
    let udp = ports.iter().find(|p| p["protocol"] == "udp").unwrap();
    assert_eq!(udp["hostIP"], NODE_IP);
    assert_bpftool_fields(
        &t,
        "portmap",
        &["host_port", "container_port", "pod_ip", "owner"],
    );

    // Same port and protocol: refused, naming the owner, nothing changed.
    let c2 = with_ports(json!([{"hostPort": 8080, "containerPort": 8080, "protocol": "tcp"}]));
    let before = (t.node_links(), t.files("ipam/testnet"));
    let out = t.cni("ADD", &c2, "intruder", Some(&p2), "eth0");
    assert_eq!(out.err_code(), 102, "{}", out.stdout);
    assert!(
        out.msg().contains("owner1") && out.msg().contains("8080"),
        "{}",
        out.msg()
    );
    assert_eq!(
        (t.node_links(), t.files("ipam/testnet")),
        before,
        "a refused ADD changed the node"
    );
    assert_eq!(t.inspect()["portmaps"].as_array().unwrap().len(), 3);
    assert_pod_untouched(&p2);

    // The same port with another protocol, or another hostIP, is fine.
    let c3 = with_ports(
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]),
    );
    t.cni("ADD", &c3, "other", Some(&p3), "eth0").ok();
    assert_eq!(t.inspect()["portmaps"].as_array().unwrap().len(), 6);

    // DEL without runtimeConfig removes exactly the owner's mappings; then the port is free.
    t.del(&t.conf(json!({"ipam": {"ranges": [[{"subnet": "10.13.0.0/24"}], [{"subnet": "fd00:13::/64"}]]}})), "owner1", Some(&p1), "eth0");
    assert_eq!(t.inspect()["portmaps"].as_array().unwrap().len(), 3);
    t.cni("ADD", &c2, "intruder", Some(&p2), "eth0").ok();
    t.del(&c2, "intruder", Some(&p2), "eth0");
    t.del(&c3, "other", Some(&p3), "eth0");
    assert!(t.inspect()["portmaps"].as_array().unwrap().is_empty());
    assert_clean(&t);
}

/// Frames built byte by byte for the anti-spoofing test.
mod frames {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const BCAST: [u8; 6] = [0xff; 6];

    pub fn eth(src: [u8; 6], ty: u16, body: &[u8]) -> Vec<u8> {
        eth_to(BCAST, src, ty, body)
    }

    pub fn eth_to(dst: [u8; 6], src: [u8; 6], ty: u16, body: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    pub fn ipv4_udp(src: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
        let len = (20 + 8 + marker.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[255, 255, 255, 255]);
        // A valid header checksum: a bridge with br_netfilter drops bad ones.
        let sum: u32 = p
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        let csum = !((sum & 0xffff) + (sum >> 16)) as u16;
        p[10..12].copy_from_slice(&csum.to_be_bytes());
        p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
        p.extend_from_slice(&((8 + marker.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(marker);
        p
    }

    pub fn ipv6(src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 255]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(payload);
        p
    }

    pub fn udp(marker: &[u8]) -> Vec<u8> {
        let mut u = vec![0x30, 0x39, 0x30, 0x39];
        u.extend_from_slice(&((8 + marker.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(marker);
        u
    }

    /// A neighbour advertisement for `target` (RFC 4861 4.4), marker after it.
    pub fn na(target: Ipv6Addr, marker: &[u8]) -> Vec<u8> {
        let mut n = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        n.extend_from_slice(&target.octets());
        n.extend_from_slice(marker);
        n
    }

    /// A neighbour solicitation for `target` (RFC 4861 4.3), marker after it.
    pub fn ns(target: Ipv6Addr, marker: &[u8]) -> Vec<u8> {
        let mut n = vec![135, 0, 0, 0, 0, 0, 0, 0];
        n.extend_from_slice(&target.octets());
        n.extend_from_slice(marker);
        n
    }

    /// The EUI-64 link-local address the kernel forms from `mac`.
    pub fn eui64(mac: [u8; 6]) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfe, 0x80]);
        a[8..].copy_from_slice(&[
            mac[0] ^ 2,
            mac[1],
            mac[2],
            0xff,
            0xfe,
            mac[3],
            mac[4],
            mac[5],
        ]);
        a.into()
    }

    /// ARP for IPv4 over Ethernet; `op` 1 request, 2 reply; marker as padding.
    pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr, marker: &[u8]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&tpa.octets());
        a.extend_from_slice(marker);
        a
    }

    pub fn vlan(tpid: u16, src: [u8; 6], inner: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 7, 0x08, 0x00];
        body.extend_from_slice(inner);
        eth(src, tpid, &body)
    }
}

/// A pod cannot send IPv6 from another address, use another MAC, send ARP
/// (request or reply) whose sender is not its own, advertise a neighbour
/// address that is not its own, or send VLAN-tagged frames; each drop is
/// counted by reason, node-wide and on the endpoint.
#[test]
fn anti_spoofing_covers_ipv6_mac_arp_nd_and_vlan() {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let t = Topo::new("sp2");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    let conf = t.conf(json!({}));
    let r1 = t.add(&conf, "victim", Some(&p1), "eth0");
    let r2 = t.add(&conf, "attacker", Some(&p2), "eth0");
    let (m1, m2) = (pod_mac(&r1), pod_mac(&r2));
    let v4 = |r: &Value| match result_ip(r, false) {
        IpAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let v6 = |r: &Value| match result_ip(r, true) {
        IpAddr::V6(a) => a,
        _ => unreachable!(),
    };
    let (victim4, victim6, own4, own6) = (v4(&r1), v6(&r1), v4(&r2), v6(&r2));
    let ll: Ipv6Addr = "fe80::1234".parse().unwrap();
    let stranger4: Ipv4Addr = "10.1.0.250".parse().unwrap();
    use frames::*;
    // (what, frame builder input, arrives?, counter of the drop)
    let mk = |i: usize| format!("SPOOF{i:02}").into_bytes();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("own IPv4", eth(m2, 0x0800, &ipv4_udp(own4, &mk(0))), None),
        (
            "own IPv6",
            eth(m2, 0x86dd, &ipv6(own6, 17, &udp(&mk(1)))),
            None,
        ),
        (
            "IPv6 from the victim's address",
            eth(m2, 0x86dd, &ipv6(victim6, 17, &udp(&mk(2)))),
            Some("drop_spoofed_ip"),
        ),
        (
            "IPv6 from an unassigned address",
            eth(
                m2,
                0x86dd,
                &ipv6("fd00:1::99".parse().unwrap(), 17, &udp(&mk(3))),
            ),
            Some("drop_spoofed_ip"),
        ),
        (
            "own IPv4 with the victim's MAC",
            eth(m1, 0x0800, &ipv4_udp(own4, &mk(4))),
            Some("drop_spoofed_mac"),
        ),
        (
            "non-IP frame with another MAC",
            eth([2, 0, 0, 0, 0, 0x99], 0x88b5, &mk(5)),
            Some("drop_spoofed_mac"),
        ),
        (
            "IPv6 link-local with the victim's MAC",
            eth(m1, 0x86dd, &ipv6(ll, 17, &udp(&mk(6)))),
            Some("drop_spoofed_mac"),
        ),
        (
            "own ARP request",
            eth(m2, 0x0806, &arp(1, m2, own4, victim4, &mk(7))),
            None,
        ),
        (
            "ARP probe (sender 0.0.0.0)",
            eth(m2, 0x0806, &arp(1, m2, Ipv4Addr::UNSPECIFIED, own4, &mk(8))),
            None,
        ),
        (
            "ARP reply for the victim's IP",
            eth(m2, 0x0806, &arp(2, m2, victim4, own4, &mk(9))),
            Some("drop_spoofed_arp"),
        ),
        (
            "gratuitous ARP request for the victim's IP",
            eth(m2, 0x0806, &arp(1, m2, victim4, victim4, &mk(10))),
            Some("drop_spoofed_arp"),
        ),
        (
            "ARP request for an unassigned IP",
            eth(m2, 0x0806, &arp(1, m2, stranger4, victim4, &mk(11))),
            Some("drop_spoofed_arp"),
        ),
        (
            "ARP whose sender MAC is the victim's",
            eth(m2, 0x0806, &arp(2, m1, own4, victim4, &mk(12))),
            Some("drop_spoofed_arp"),
        ),
        (
            "NA for its own address",
            eth(m2, 0x86dd, &ipv6(ll, 58, &na(own6, &mk(13)))),
            None,
        ),
        (
            "NA for the victim's address",
            eth(m2, 0x86dd, &ipv6(ll, 58, &na(victim6, &mk(14)))),
            Some("drop_spoofed_nd"),
        ),
        (
            "NA for the victim's address behind a hop-by-hop header",
            eth(
                m2,
                0x86dd,
                &ipv6(
                    ll,
                    0,
                    &[&[58u8, 0, 5, 2, 0, 0, 1, 0][..], &na(victim6, &mk(15))].concat(),
                ),
            ),
            Some("drop_spoofed_nd"),
        ),
        (
            "802.1Q tagged own IPv4",
            vlan(0x8100, m2, &ipv4_udp(own4, &mk(16))),
            Some("drop_vlan"),
        ),
        (
            "802.1ad tagged own IPv4",
            vlan(0x88a8, m2, &ipv4_udp(own4, &mk(17))),
            Some("drop_vlan"),
        ),
        (
            "802.1ad + 802.1Q (QinQ)",
            vlan(
                0x88a8,
                m2,
                &[&[0u8, 9, 0x81, 0][..], &ipv4_udp(own4, &mk(18))].concat(),
            ),
            Some("drop_vlan"),
        ),
    ];
    let before = t.inspect();
    let cap = capture_markers(&t.node, "cni0", Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(100));
    send_frames(&p2, "eth0", cases.iter().map(|c| c.1.clone()).collect());
    let seen = cap.join().unwrap();
    let after = t.inspect();
    let mut failures = Vec::new();
    let mut expected: std::collections::BTreeMap<&str, u64> = Default::default();
    for (i, (what, _, drop)) in cases.iter().enumerate() {
        let marker = format!("SPOOF{i:02}");
        let arrived = seen.contains(&marker);
        if arrived != drop.is_none() {
            failures.push(format!(
                "{what}: arrived={arrived}, want {}",
                drop.is_none()
            ));
        }
        if let Some(c) = drop {
            *expected.entry(c).or_default() += 1;
        }
    }
    let delta = |k: &str| {
        after["counters"]["node"][k].as_u64().unwrap()
            - before["counters"]["node"][k].as_u64().unwrap()
    };
    for (c, n) in &expected {
        if delta(c) != *n {
            failures.push(format!("counter {c}: +{}, want +{n}", delta(c)));
        }
    }
    let ep_drops = |j: &Value| -> u64 {
        j["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["containerID"] == "attacker")
            .map(|e| e["counters"]["dropSpoofed"].as_u64().unwrap())
            .max()
            .unwrap()
    };
    let total: u64 = expected.values().sum();
    if ep_drops(&after) - ep_drops(&before) != total {
        failures.push(format!(
            "attacker endpoint dropSpoofed +{}, want +{total}",
            ep_drops(&after) - ep_drops(&before)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} crafted frames, {total} dropped by reason {expected:?}",
        cases.len()
    );
    // Honest traffic still flows both ways.
    let _srv = TcpServer::start(&p1, "::", 7000, "victim");
    assert_reply(&p2, IpAddr::V6(victim6), 7000, &format!("victim {own6}"));
    assert_reply(
        &p2,
        IpAddr::V4(victim4),
        7000,
        &format!("victim ::ffff:{own4}"),
    );
    t.del(&conf, "victim", Some(&p1), "eth0");
    t.del(&conf, "attacker", Some(&p2), "eth0");
    assert_clean(&t);
}

/// What the bridge floods to every port reaches only the pod it is for:
/// ARP and neighbour solicitations for another pod's address, router
/// solicitations, MLD reports and unicast to an unknown MAC stop at the
/// bystander's host veth (counted as `to_container_filtered`), the node
/// still sees the solicitations and reports, and broadcast and multicast
/// that is everyone's (IPv4 broadcast, IPv6 all-nodes) reaches every pod.
/// At a few hundred pods, these copies overflowed the CPU's backlog and
/// dropped real traffic with them (docs/performance.md).
#[test]
fn bridge_floods_reach_only_the_pod_they_are_for() {
    let t = Topo::new("fl");
    let (p1, p2, p3) = (t.pod("p1"), t.pod("p2"), t.pod("p3"));
    let conf = t.conf(json!({}));
    let r1 = t.add(&conf, "sender", Some(&p1), "eth0");
    let r2 = t.add(&conf, "target", Some(&p2), "eth0");
    let _r3 = t.add(&conf, "bystander", Some(&p3), "eth0");
    let (m1, m2) = (pod_mac(&r1), pod_mac(&r2));
    let IpAddr::V4(own4) = result_ip(&r1, false) else {
        unreachable!()
    };
    let (IpAddr::V4(target4), IpAddr::V6(target6)) = (result_ip(&r2, false), result_ip(&r2, true))
    else {
        unreachable!()
    };
    use frames::*;
    let ll = eui64(m1);
    let mk = |i: usize| format!("SPOOF{i:02}").into_bytes();
    // (what, frame, reaches the target pod, reaches the bystander, reaches
    // the node: None = not checked)
    type Case = (&'static str, Vec<u8>, bool, bool, Option<bool>);
    let cases: Vec<Case> = vec![
        (
            "ARP request for the target",
            eth(m1, 0x0806, &arp(1, m1, own4, target4, &mk(0))),
            true,
            false,
            Some(true),
        ),
        (
            "NS for the target's address",
            eth(m1, 0x86dd, &ipv6(ll, 58, &ns(target6, &mk(1)))),
            true,
            false,
            Some(true),
        ),
        (
            "NS for the target's link-local address",
            eth(m1, 0x86dd, &ipv6(ll, 58, &ns(eui64(m2), &mk(2)))),
            true,
            false,
            Some(true),
        ),
        (
            "router solicitation",
            eth(
                m1,
                0x86dd,
                &ipv6(
                    ll,
                    58,
                    &[&[133u8, 0, 0, 0, 0, 0, 0, 0][..], &mk(3)].concat(),
                ),
            ),
            false,
            false,
            Some(true),
        ),
        (
            "MLDv2 report behind a hop-by-hop header",
            eth(
                m1,
                0x86dd,
                &ipv6(
                    ll,
                    0,
                    &[
                        &[58u8, 0, 5, 2, 0, 0, 1, 0][..],
                        &[143, 0, 0, 0, 0, 0, 0, 0],
                        &mk(4),
                    ]
                    .concat(),
                ),
            ),
            false,
            false,
            Some(true),
        ),
        (
            "IPv6 UDP to all nodes",
            eth(m1, 0x86dd, &ipv6(ll, 17, &udp(&mk(5)))),
            true,
            true,
            Some(true),
        ),
        (
            "IPv4 broadcast UDP",
            eth(m1, 0x0800, &ipv4_udp(own4, &mk(6))),
            true,
            true,
            Some(true),
        ),
        (
            "unicast to an unknown MAC",
            eth_to([2, 0, 0, 0, 0, 0x99], m1, 0x0800, &ipv4_udp(own4, &mk(7))),
            false,
            false,
            None,
        ),
    ];
    let before = t.inspect();
    let window = Duration::from_millis(1500);
    let caps = [
        capture_markers(&p2, "eth0", window),
        capture_markers(&p3, "eth0", window),
        capture_markers(&t.node, "cni0", window),
    ];
    std::thread::sleep(Duration::from_millis(100));
    send_frames(&p1, "eth0", cases.iter().map(|c| c.1.clone()).collect());
    let [target, bystander, node] = caps.map(|c| c.join().unwrap());
    let after = t.inspect();
    let mut failures = Vec::new();
    let mut filtered = 0;
    for (i, (what, _, to_target, to_bystander, to_node)) in cases.iter().enumerate() {
        let marker = format!("SPOOF{i:02}");
        let got = |seen: &[String]| seen.contains(&marker);
        for (who, seen, want) in [
            ("target", &target, Some(*to_target)),
            ("bystander", &bystander, Some(*to_bystander)),
            ("node", &node, *to_node),
        ] {
            if want.is_some_and(|w| w != got(seen)) {
                failures.push(format!("{what}: at the {who} {}, want {want:?}", got(seen)));
            }
        }
        filtered += u64::from(!to_target) + u64::from(!to_bystander);
    }
    let delta = |k: &str| {
        after["counters"]["node"][k].as_u64().unwrap()
            - before["counters"]["node"][k].as_u64().unwrap()
    };
    // At least ours: the three pods' own start-up solicitations may be
    // filtered in the same window.
    if delta("to_container_filtered") < filtered {
        failures.push(format!(
            "to_container_filtered +{}, want at least +{filtered}",
            delta("to_container_filtered")
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The pods still resolve each other and talk, over IPv4 and IPv6.
    let _srv = TcpServer::start(&p2, "::", 7000, "target");
    assert_reply(
        &p1,
        IpAddr::V6(target6),
        7000,
        &format!("target {}", result_ip(&r1, true)),
    );
    assert_reply(
        &p1,
        IpAddr::V4(target4),
        7000,
        &format!("target ::ffff:{own4}"),
    );
    for (cid, ns) in [("sender", &p1), ("target", &p2), ("bystander", &p3)] {
        t.del(&conf, cid, Some(ns), "eth0");
    }
    assert_clean(&t);
}

/// The log lines of one call: every line of the log file with its pid.
fn summary_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" cni command="))
        .map(str::to_string)
        .collect()
}

#[test]
fn one_summary_line_per_call_and_nothing_else_on_stdout() {
    let t = Topo::new("log");
    let p1 = t.pod("p1");
    let log = t.dir.join("cni.log");
    let conf = t.conf(json!({"logLevel": "warn"}));

    let out = t.cni("ADD", &conf, "pod1", Some(&p1), "eth0").ok();
    // stdout is the result and nothing else.
    assert_eq!(out.stdout.trim().lines().count(), 1, "{}", out.stdout);
    assert!(out.json.is_some(), "{}", out.stdout);
    let bad = merged(&conf, json!({"mtu": 10}));
    let failed = t.cni("ADD", &bad, "pod2", Some(&t.pod("p2")), "eth1");
    assert_eq!(failed.err_code(), 7);
    assert_eq!(failed.stdout.trim().lines().count(), 1, "{}", failed.stdout);
    t.del(&conf, "pod1", Some(&p1), "eth0");

    let text = read(&log);
    let lines = summary_lines(&text);
    assert_eq!(lines.len(), 3, "{text}");
    let field = |line: &str, key: &str| -> String {
        let start = line
            .find(&format!(" {key}="))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            + key.len()
            + 2;
        let rest = &line[start..];
        if let Some(q) = rest.strip_prefix('"') {
            q[..q.find('"').unwrap()].to_string()
        } else {
            rest.split(' ').next().unwrap().to_string()
        }
    };
    for (line, (cmd, cid, ifname, result)) in lines.iter().zip([
        ("ADD", "pod1", "eth0", "ok"),
        ("ADD", "pod2", "eth1", "error"),
        ("DEL", "pod1", "eth0", "ok"),
    ]) {
        assert_eq!(field(line, "command"), cmd, "{line}");
        assert_eq!(field(line, "container"), cid, "{line}");
        assert_eq!(field(line, "ifname"), ifname, "{line}");
        assert_eq!(field(line, "result"), result, "{line}");
        let ms: f64 = field(line, "duration_ms").parse().unwrap();
        assert!((0.0..60_000.0).contains(&ms), "{line}");
    }
    assert!(lines[0].contains(" INFO ") && lines[1].contains(" ERROR "));
    assert_eq!(field(&lines[1], "code"), "7");
    assert_eq!(field(&lines[1], "msg"), "invalid mtu 10: want 68..65535");
    // logLevel warn: the step lines of ADD (info) are not written.
    assert!(!text.contains("ADD done"), "{text}");
    // At the default level they are.
    let p3 = t.pod("p3");
    t.add(&t.conf(json!({})), "pod3", Some(&p3), "eth0");
    let text = read(&log);
    assert!(text.contains("ADD done"), "{text}");
    assert_eq!(summary_lines(&text).len(), 4);
    t.del(&conf, "pod3", Some(&p3), "eth0");
    assert_clean(&t);
}
