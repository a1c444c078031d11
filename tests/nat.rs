//! End-to-end tests of the NAT data plane: real packets between namespaces
//! this test creates, through the real binary's programs; every assertion is
//! on what a server received and from which address.

mod harness;

use std::net::{IpAddr, SocketAddr};

use harness::*;
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A pod address as a dual-stack server prints an IPv4 peer.
fn v4mapped(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => format!("::ffff:{a}"),
        IpAddr::V6(_) => a.to_string(),
    }
}

fn mappings(m: Value) -> Value {
    json!({"runtimeConfig": {"portMappings": m}})
}

/// Live `nat` entries (as inspect shows them) whose owner is `cid`'s.
fn nat_entries(t: &Topo) -> Vec<Value> {
    t.inspect()["nat"].as_array().cloned().unwrap_or_default()
}

#[test]
fn host_ports_from_outside() {
    let t = Topo::new("hpo");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    // pod1: tcp 8080 -> 80 and udp 8053 -> 53 on every node address;
    // pod2: udp 8080 (same port, other protocol) and tcp 9090 on 192.0.2.1 only.
    let c1 = t.conf(mappings(json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
    ])));
    let c2 = t.conf(mappings(json!([
        {"hostPort": 8080, "containerPort": 53, "protocol": "udp"},
        {"hostPort": 9090, "containerPort": 90, "protocol": "tcp", "hostIP": NODE_IP},
    ])));
    let r1 = t.add(&c1, "pod1", Some(&p1), "eth0");
    t.add(&c2, "pod2", Some(&p2), "eth0");
    let (a1, b1) = (result_ip(&r1, false), result_ip(&r1, true));
    // A second node address: hostIP-less mappings answer there too,
    // hostIP-bound ones do not.
    ip_n(&t.node, &["addr", "add", "198.51.100.1/32", "dev", "up0"]);
    ip_n(&t.ext, &["route", "add", "198.51.100.1/32", "via", NODE_IP]);
    // ADD refreshes the node's addresses.
    let p3 = t.pod("p3");
    t.add(&t.conf(json!({})), "pod3", Some(&p3), "eth0");

    let _t1 = TcpServer::start(&p1, "::", 80, "pod1");
    let _u1 = UdpEcho::start(&p1, sa(ip("::"), 53), "pod1");
    let _u2 = UdpEcho::start(&p2, sa(ip("::"), 53), "pod2");
    let _t2 = TcpServer::start(&p2, "::", 90, "pod2");

    // TCP over IPv4 and IPv6: the pod sees the real client.
    assert_reply(&t.ext, ip(NODE_IP), 8080, &format!("pod1 ::ffff:{EXT_IP}"));
    assert_reply(&t.ext, ip(NODE_IP6), 8080, &format!("pod1 {EXT_IP6}"));
    assert_reply(
        &t.ext,
        ip("198.51.100.1"),
        8080,
        &format!("pod1 ::ffff:{EXT_IP}"),
    );
    // UDP: the answer comes back from nodeIP:hostPort.
    for (node, ext) in [(NODE_IP, EXT_IP), (NODE_IP6, EXT_IP6)] {
        let (text, from) = udp_ask(&t.ext, 0, sa(ip(node), 8053)).unwrap();
        assert!(
            text.starts_with(&format!(
                "pod1 {}",
                if node.contains(':') {
                    format!("[{ext}]")
                } else {
                    format!("[::ffff:{ext}]")
                }
            )),
            "{text}"
        );
        assert_eq!(from, sa(ip(node), 8053));
    }
    // The same client port, first through the hostPort, then straight to
    // the pod: the second flow's answers must not be translated as the
    // first's were.
    let (_, from) = udp_ask(&t.ext, 40100, sa(ip(NODE_IP), 8053)).unwrap();
    assert_eq!(from, sa(ip(NODE_IP), 8053));
    let (_, from) = udp_ask(&t.ext, 40100, sa(a1, 53)).unwrap();
    assert_eq!(from, sa(a1, 53));
    // Same port, other protocol, other pod.
    let (text, from) = udp_ask(&t.ext, 0, sa(ip(NODE_IP), 8080)).unwrap();
    assert!(text.starts_with("pod2 "), "{text}");
    assert_eq!(from, sa(ip(NODE_IP), 8080));
    // hostIP: only that address.
    assert_reply(&t.ext, ip(NODE_IP), 9090, &format!("pod2 ::ffff:{EXT_IP}"));
    assert!(tcp_get(&t.ext, ip("198.51.100.1"), 9090).is_err());
    // Only node addresses are intercepted: the pod's own address with the
    // hostPort is routed to the pod untouched (nothing listens on 8080 there).
    assert!(tcp_get(&t.ext, a1, 8080).is_err());
    assert!(tcp_get(&t.ext, b1, 8080).is_err());
    assert_reply(&t.ext, a1, 80, &format!("pod1 ::ffff:{EXT_IP}"));

    // Translations are visible, with the owner's container.
    let live = nat_entries(&t);
    assert!(
        live.iter()
            .any(|e| e["kind"] == "hostport-reply" && e["containerID"] == "pod1"),
        "{live:?}"
    );
    let counters = t.inspect()["counters"]["node"].clone();
    assert!(counters["nat_hostport"].as_u64().unwrap() > 0, "{counters}");

    // DEL: the mappings and translations of pod1 are gone; pod2's stay.
    t.del(&c1, "pod1", Some(&p1), "eth0");
    assert!(tcp_get(&t.ext, ip(NODE_IP), 8080).is_err());
    assert!(udp_ask(&t.ext, 0, sa(ip(NODE_IP), 8053)).is_err());
    let ports = t.inspect()["portmaps"].as_array().unwrap().clone();
    assert_eq!(
        ports.len(),
        3,
        "udp 8080 in both families, tcp 9090: {ports:?}"
    );
    assert!(
        ports.iter().all(|p| p["podIP"] != a1.to_string()),
        "{ports:?}"
    );
    let live = nat_entries(&t);
    assert!(live.iter().all(|e| e["containerID"] != "pod1"), "{live:?}");
    assert_reply(&t.ext, ip(NODE_IP), 9090, &format!("pod2 ::ffff:{EXT_IP}"));
    t.del(&c2, "pod2", Some(&p2), "eth0");
    t.del(&t.conf(json!({})), "pod3", Some(&p3), "eth0");
}

#[test]
fn hairpin_and_node_local_access() {
    let t = Topo::new("hpl");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    let c1 = t.conf(mappings(json!([
        {"hostPort": 8080, "containerPort": 80},
        {"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
    ])));
    let r1 = t.add(&c1, "pod1", Some(&p1), "eth0");
    let r2 = t.add(&t.conf(json!({})), "pod2", Some(&p2), "eth0");
    let (a2, b2) = (result_ip(&r2, false), result_ip(&r2, true));
    let gw = r1["ips"][0]["gateway"].as_str().unwrap().to_string();
    let _s = TcpServer::start(&p1, "::", 80, "pod1");

    // Hairpin from another pod: the server sees that pod and can answer it.
    assert_reply(&p2, ip(NODE_IP), 8080, &format!("pod1 ::ffff:{a2}"));
    assert_reply(&p2, ip(NODE_IP6), 8080, &format!("pod1 {b2}"));
    // The gateway address on the bridge is a node address too.
    assert_reply(&p2, ip(&gw), 8080, &format!("pod1 ::ffff:{a2}"));
    // Hairpin to itself: the source becomes the node address it dialled.
    assert_reply(&p1, ip(NODE_IP), 8080, &format!("pod1 ::ffff:{NODE_IP}"));
    assert_reply(&p1, ip(NODE_IP6), 8080, &format!("pod1 {NODE_IP6}"));
    // Whatever bridge-nf-call-iptables says (if br_netfilter is loaded).
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        sh_in(
            &t.node,
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        );
        assert_reply(&p2, ip(NODE_IP), 8080, &format!("pod1 ::ffff:{a2}"));
    }

    // From the node itself, through the socket hooks of its cgroup.
    for dst in ["127.0.0.1", "::1", NODE_IP, NODE_IP6] {
        let got = node_tcp_get(&t, true, ip(dst), 8080)
            .unwrap_or_else(|e| panic!("node -> {dst}:8080: {e}"));
        assert!(got.starts_with("pod1 "), "node -> {dst}: {got}");
    }
    // UDP from the node: the pod answers the node's gateway address.
    let _u = UdpEcho::start(&p1, sa(ip("::"), 53), "pod1");
    for dst in ["127.0.0.1", "::1"] {
        let got = node_udp_ask(&t, ip(dst), 8053)
            .unwrap_or_else(|e| panic!("node -> udp {dst}:8053: {e}"));
        assert!(got.starts_with("pod1 "), "{got}");
    }
    // A process outside that cgroup is not affected (and loopback is not
    // reachable without the hooks: no route_localnet).
    assert!(node_tcp_get(&t, false, ip("127.0.0.1"), 8080).is_err());
    let rl = sh_in(
        &t.node,
        &["sysctl", "-n", "net.ipv4.conf.all.route_localnet"],
    );
    assert_eq!(rl.trim(), "0");
    let counters = t.inspect()["counters"]["node"].clone();
    assert!(counters["nat_hairpin"].as_u64().unwrap() > 0, "{counters}");
    assert!(
        counters["sock_translated"].as_u64().unwrap() > 0,
        "{counters}"
    );
    t.del(&c1, "pod1", Some(&p1), "eth0");
    assert!(tcp_get(&p2, ip(NODE_IP), 8080).is_err());
    assert!(node_tcp_get(&t, true, ip("127.0.0.1"), 8080).is_err());
    t.del(&t.conf(json!({})), "pod2", Some(&p2), "eth0");
}

#[test]
fn masquerade_leaving_the_node() {
    let t = Topo::new("msq");
    // The outside knows no route to the pods: only masqueraded traffic can
    // be answered.
    ip_n(&t.ext, &["route", "del", "10.0.0.0/8"]);
    ip_n(&t.ext, &["-6", "route", "del", "fd00::/8"]);
    // A "second node" behind the uplink with a pod subnet the outside routes
    // (as flannel host-gw would): cluster traffic is not masqueraded.
    let remote = t.pod("remote");
    ip_n(
        &t.ext,
        &[
            "link", "add", "r0", "type", "veth", "peer", "name", "eth0", "netns", &remote,
        ],
    );
    ip_n(&t.ext, &["addr", "add", "10.9.0.1/24", "dev", "r0"]);
    ip_n(&t.ext, &["link", "set", "r0", "up"]);
    ip_n(&remote, &["addr", "add", "10.9.0.5/24", "dev", "eth0"]);
    ip_n(&remote, &["link", "set", "eth0", "up"]);
    ip_n(&remote, &["route", "add", "default", "via", "10.9.0.1"]);
    sh_in(&t.ext, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // ext routes the node's pod subnet back only for this check's sake:
    // the remote pod must see the pod's own address.
    ip_n(&t.ext, &["route", "add", "10.1.0.0/24", "via", NODE_IP]);

    let conf = t.conf(json!({"ipMasq": true, "nonMasqueradeCIDRs": ["10.9.0.0/16"]}));
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    let r1 = t.add(&conf, "pod1", Some(&p1), "eth0");
    let r2 = t.add(&conf, "pod2", Some(&p2), "eth0");
    let (a1, a2) = (result_ip(&r1, false), result_ip(&r2, false));

    // TCP, both families: the server sees the node.
    let _s = TcpServer::start(&t.ext, "::", 7000, "ext");
    assert_reply(&p1, ip(EXT_IP), 7000, &format!("ext ::ffff:{NODE_IP}"));
    assert_reply(&p1, ip(EXT_IP6), 7000, &format!("ext {NODE_IP6}"));
    // UDP from the same source port in two pods: two translations, each
    // answer reaches its own pod.
    let _u = UdpEcho::start(&t.ext, sa(ip("::"), 7001), "ext");
    let (t1, from1) = udp_ask(&p1, 5000, sa(ip(EXT_IP), 7001)).unwrap();
    let (t2, from2) = udp_ask(&p2, 5000, sa(ip(EXT_IP), 7001)).unwrap();
    assert_eq!(from1, sa(ip(EXT_IP), 7001));
    assert_eq!(from2, sa(ip(EXT_IP), 7001));
    let port = |t: &str| -> (String, u16) {
        let peer: SocketAddr = t.split(' ').nth(1).unwrap().parse().unwrap();
        (v4mapped(peer.ip()), peer.port())
    };
    let (s1, s2) = (port(&t1), port(&t2));
    assert_eq!(s1.0, format!("::ffff:{NODE_IP}"));
    assert_eq!(s2.0, format!("::ffff:{NODE_IP}"));
    assert_ne!(s1.1, s2.1, "distinct masquerade ports: {t1} / {t2}");
    for p in [s1.1, s2.1] {
        assert!((61000..=65535).contains(&p), "port {p} from the SNAT range");
    }
    // ICMP echo, both families.
    sh_in(&p1, &["ping", "-c1", "-W2", EXT_IP]);
    sh_in(&p1, &["ping", "-6", "-c1", "-W2", EXT_IP6]);
    // The range is reserved against the node's own sockets.
    let reserved = sh_in(
        &t.node,
        &["sysctl", "-n", "net.ipv4.ip_local_reserved_ports"],
    );
    assert!(reserved.contains("61000-65535"), "{reserved}");
    // Cluster traffic keeps the pod address; pod to pod on the node too.
    let _r = TcpServer::start(&remote, "0.0.0.0", 7002, "remote");
    assert_reply(&p1, ip("10.9.0.5"), 7002, &format!("remote {a1}"));
    let _p2s = TcpServer::start(&p2, "0.0.0.0", 7003, "pod2");
    assert_reply(&p1, a2, 7003, &format!("pod2 {a1}"));
    let counters = t.inspect()["counters"]["node"].clone();
    assert!(
        counters["nat_masq_new"].as_u64().unwrap() >= 4,
        "{counters}"
    );

    // Without ipMasq nothing is translated: the server sees the pod.
    let p3 = t.pod("p3");
    let c3 = t.conf(json!({}));
    let a3 = result_ip(&t.add(&c3, "pod3", Some(&p3), "eth0"), false);
    assert_reply(&p3, ip(EXT_IP), 7000, &format!("ext ::ffff:{a3}"));
    for (c, id, p) in [
        (&conf, "pod1", &p1),
        (&conf, "pod2", &p2),
        (&c3, "pod3", &p3),
    ] {
        t.del(c, id, Some(p), "eth0");
    }
}

#[test]
fn icmp_errors_and_udp_flows_that_predate_the_mapping() {
    let t = Topo::new("icm");
    let p1 = t.pod("p1");
    let conf = t.conf(mappings(
        json!([{"hostPort": 8053, "containerPort": 53, "protocol": "udp"}]),
    ));
    // A client already sending to the hostPort before the pod exists, until
    // the pod got a datagram (the first ADD can take seconds on a loaded
    // machine: it loads the programs; at most 20 s).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (ext, done) = (t.ext.clone(), done.clone());
        in_ns(&ext, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..1000 {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let _ = s.send_to(b"early", (NODE_IP, 8053));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    t.add(&conf, "pod1", Some(&p1), "eth0");
    let got = udp_recv(
        &p1,
        sa(ip("0.0.0.0"), 53),
        std::time::Duration::from_secs(2),
    )
    .join()
    .unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().unwrap();
    let (text, from) = got.expect("the early flow reaches the pod once mapped");
    assert_eq!((text.as_str(), from), ("early", ip(EXT_IP)));

    // Nothing listens on 53 now: the pod's port unreachable must reach the
    // client with the quoted header translated back, or the client's
    // connected socket would never see it.
    for node in [NODE_IP, NODE_IP6] {
        let err = in_ns(&t.ext, move || {
            let any = if node.contains(':') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let s = std::net::UdpSocket::bind(any).unwrap();
            s.connect(sa(ip(node), 8053)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 64];
            let mut last = None;
            for _ in 0..3 {
                let _ = s.send(b"x");
                match s.recv(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                    other => last = Some(format!("{other:?}")),
                }
            }
            Err(last)
        })
        .join()
        .unwrap();
        assert_eq!(err, Ok(()), "ICMP port unreachable via {node}");
    }
    let counters = t.inspect()["counters"]["node"].clone();
    assert!(
        counters["nat_icmp_error"].as_u64().unwrap() >= 2,
        "{counters}"
    );
    t.del(&conf, "pod1", Some(&p1), "eth0");
}

/// The reachability of a hostPort from every vantage point, with the
/// interfaces made by the reference `bridge` and the hostPort served by
/// `plugin` (`portmap` or `cni-ebpf`) chained after it.
fn reachability(plugin: &str) -> Vec<(&'static str, Result<String, String>)> {
    let t = Topo::new(if plugin == "portmap" { "mref" } else { "mour" });
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]], "dataDir": t.dir.join("ipam")});
    let list = |m: Value| {
        let mut second = json!({"type": plugin, "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": m}});
        if plugin == "cni-ebpf" {
            merge(
                &mut second,
                json!({"pinPath": t.pin(), "stateDir": t.dir.join("state"),
                "logFile": t.dir.join("cni.log"), "cgroupPath": t.cgroup}),
            );
        }
        json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
             "hairpinMode": true, "ipam": ipam},
            second,
        ]})
    };
    let l1 = list(json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
    let l2 = list(json!([]));
    let r1 = t
        .conflist("ADD", &l1, "pod1", &p1, "eth0", None)
        .unwrap_or_else(|e| panic!("{plugin}: {e:?}"))
        .unwrap();
    let r2 = t
        .conflist("ADD", &l2, "pod2", &p2, "eth0", None)
        .unwrap_or_else(|e| panic!("{plugin}: {e:?}"))
        .unwrap();
    let a1 = result_ip(&r1, false);
    let _s = TcpServer::start(&p1, "0.0.0.0", 80, "pod1");
    let node = ip(NODE_IP);
    let out = vec![
        ("external -> nodeIP:hostPort", tcp_get(&t.ext, node, 8080)),
        (
            "node -> nodeIP:hostPort",
            node_tcp_get(&t, true, node, 8080),
        ),
        (
            "other pod -> nodeIP:hostPort (hairpin)",
            tcp_get(&p2, node, 8080),
        ),
        (
            "same pod -> nodeIP:hostPort (hairpin)",
            tcp_get(&p1, node, 8080),
        ),
        ("other pod -> podIP:containerPort", tcp_get(&p2, a1, 80)),
        (
            "external -> podIP:hostPort (not a node address)",
            tcp_get(&t.ext, a1, 8080),
        ),
    ];
    t.conflist("DEL", &l1, "pod1", &p1, "eth0", Some(&r1))
        .unwrap_or_else(|e| panic!("{e:?}"));
    t.conflist("DEL", &l2, "pod2", &p2, "eth0", Some(&r2))
        .unwrap_or_else(|e| panic!("{e:?}"));
    out
}

#[test]
fn chained_after_bridge_matches_the_reference_portmap() {
    let reference = reachability("portmap");
    let ours = reachability("cni-ebpf");
    for ((what, r), (_, o)) in reference.iter().zip(&ours) {
        eprintln!("{what:<50} portmap: {r:?}\n{:<50} cni-ebpf: {o:?}", "");
        assert_eq!(
            r.is_ok(),
            o.is_ok(),
            "{what}: portmap {r:?}, cni-ebpf {o:?}"
        );
    }
    // The rows that must work do.
    for (what, o) in ours.iter().take(5) {
        assert!(o.is_ok(), "{what}: {o:?}");
    }
}

#[test]
fn a_reused_address_inherits_no_translation() {
    let t = Topo::new("reu");
    let (pa, pb) = (t.pod("pa"), t.pod("pb"));
    let ca = t.conf(mappings(
        json!([{"hostPort": 8053, "containerPort": 53, "protocol": "udp"}]),
    ));
    let a = result_ip(&t.add(&ca, "podA", Some(&pa), "eth0"), false);
    let _ua = UdpEcho::start(&pa, sa(ip("0.0.0.0"), 53), "podA");
    // An external client talks to pod A through the hostPort from port 40000.
    let (_, from) = udp_ask(&t.ext, 40000, sa(ip(NODE_IP), 8053)).unwrap();
    assert_eq!(from, sa(ip(NODE_IP), 8053));
    assert!(nat_entries(&t).iter().any(|e| e["containerID"] == "podA"));
    drop(_ua);
    t.del(&ca, "podA", Some(&pa), "eth0");

    // Pod B gets the same address, without any hostPort, and sends from
    // port 53 to that client: it must leave as itself, not as nodeIP:8053.
    let cb = t.conf(json!({"runtimeConfig": {"ips": [format!("{a}/24")]}}));
    let b = result_ip(&t.add(&cb, "podB", Some(&pb), "eth0"), false);
    assert_eq!(a, b, "the address is reused");
    let _ue = UdpEcho::start(&t.ext, sa(ip("0.0.0.0"), 40000), "ext");
    let (text, _) = udp_ask(&pb, 53, sa(ip(EXT_IP), 40000)).unwrap();
    assert_eq!(text, format!("ext {b}:53"));
    assert!(nat_entries(&t).iter().all(|e| e["containerID"] != "podA"));
    let counters = t.inspect()["counters"]["node"].clone();
    assert!(counters["nat_stale"].as_u64().unwrap() >= 1, "{counters}");
    t.del(&cb, "podB", Some(&pb), "eth0");
}

#[test]
fn uplinks_from_config_and_added_later() {
    let t = Topo::new("upl");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    // An empty list: no uplink programs, so no hostPort from outside.
    let c1 = t.conf(json!({"uplinks": [], "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}));
    t.add(&c1, "pod1", Some(&p1), "eth0");
    let _s = TcpServer::start(&p1, "::", 80, "pod1");
    assert!(tcp_get(&t.ext, ip(NODE_IP), 8080).is_err());
    // A later ADD naming the uplink attaches it (twice is harmless: a third
    // ADD with the same list changes nothing).
    let c2 =
        t.conf(json!({"uplinks": ["up0"], "ipMasq": true, "nonMasqueradeCIDRs": ["10.0.0.0/8"]}));
    t.add(&c2, "pod2", Some(&p2), "eth0");
    let p3 = t.pod("p3");
    t.add(&c2, "pod3", Some(&p3), "eth0");
    assert_reply(&t.ext, ip(NODE_IP), 8080, &format!("pod1 ::ffff:{EXT_IP}"));
    // One program per hook, as a cls_bpf filter or a TCX link.
    let progs = t.attached_progs("up0");
    assert_eq!(
        progs
            .iter()
            .filter(|(kind, name, _)| kind.ends_with("ingress") && name == "from_netdev")
            .count(),
        1,
        "{progs:?}"
    );
    // Every table is a pinned map with BTF: bpftool prints named fields.
    // (The hostPort flow above left its reply in `nat_in`, the map of what
    // packets from outside create.)
    assert_bpftool_fields(
        &t,
        "nat_in",
        &["saddr", "daddr", "sport", "dport", "scope", "kind", "owner"],
    );
    assert_bpftool_fields(&t, "uplinks", &["addr4", "addr6"]);
    assert_bpftool_fields(&t, "node_addrs", &["family", "addr"]);
    assert_bpftool_fields(&t, "config", &["snat_min", "snat_max", "netns_cookie"]);
    assert_bpftool_fields(&t, "no_masq", &["prefix_len", "family", "addr"]);
    for (c, id, p) in [(&c1, "pod1", &p1), (&c2, "pod2", &p2), (&c2, "pod3", &p3)] {
        t.del(c, id, Some(p), "eth0");
    }
}

/// A connection-rate server: answers each connection with one byte and lets
/// the client close first (as TCP_CRR), until stopped.
struct CrrServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl CrrServer {
    fn start(ns: &str, port: u16) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = in_ns(ns, move || {
            use std::io::{Read, Write};
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
            for c in l.incoming() {
                if s2.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut c) = c {
                    let _ = c.write_all(b"x");
                    let _ = c.read(&mut [0u8; 1]);
                }
            }
        });
        // Listening before the first client dials.
        std::thread::sleep(std::time::Duration::from_millis(100));
        Self { stop, handle }
    }

    /// Stops it: one last connection from `ns` to `at` wakes its accept.
    fn stop(self, ns: &str, at: SocketAddr) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = tcp_get(ns, at.ip(), at.port());
        self.handle.join().unwrap();
    }
}

/// New TCP connections per second (connect, 1-byte answer, close) from the
/// external namespace to `dst:port` for `secs` seconds.
fn conn_rate(ns: &str, dst: IpAddr, port: u16, secs: f64) -> f64 {
    in_ns(ns, move || {
        use std::io::Read;
        let start = std::time::Instant::now();
        let mut n = 0u64;
        let mut b = [0u8; 1];
        while start.elapsed().as_secs_f64() < secs {
            let mut s = std::net::TcpStream::connect(sa(dst, port))
                .unwrap_or_else(|e| panic!("connect {dst}:{port} after {n}: {e}"));
            s.read_exact(&mut b).unwrap();
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .join()
    .unwrap()
}

/// Not a test of speed (never asserted): prints the new-connection rate
/// through a hostPort and straight to the pod, alternating, three rounds.
/// `cargo test --release --test nat -- --ignored --nocapture connection_rate`
#[test]
#[ignore]
fn connection_rate_through_host_port() {
    let t = Topo::new("rate");
    let p1 = t.pod("p1");
    let conf = t.conf(mappings(json!([{"hostPort": 8080, "containerPort": 80}])));
    let a = result_ip(&t.add(&conf, "pod1", Some(&p1), "eth0"), false);
    // The client closes first: let it reuse ports in TIME_WAIT. The direct
    // path uses another client address, so the pod's TIME_WAIT sockets of
    // one path never meet the other path's SYNs (their timestamps differ).
    sh_in(&t.ext, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    ip_n(
        &t.ext,
        &["addr", "add", "192.0.2.3/24", "dev", "eth0", "nodad"],
    );
    ip_n(
        &t.ext,
        &[
            "route",
            "replace",
            "10.0.0.0/8",
            "via",
            NODE_IP,
            "src",
            "192.0.2.3",
        ],
    );
    let srv = CrrServer::start(&p1, 80);
    let (mut nat, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        direct.push(conn_rate(&t.ext, a, 80, 3.0));
        nat.push(conn_rate(&t.ext, ip(NODE_IP), 8080, 3.0));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (n, d) = (med(&mut nat), med(&mut direct));
    println!("connections/s: hostPort {n:.0} (runs {nat:.0?}), pod IP {d:.0} (runs {direct:.0?}), ratio {:.3}", n / d);
    srv.stop(&t.ext, sa(a, 80));
    t.del(&conf, "pod1", Some(&p1), "eth0");
}

/// Not a test of speed (never asserted): prints the new-connection rate of a
/// masquerading pod to an external server, and the NAT counters.
/// `cargo test --release --test nat -- --ignored --nocapture masquerade_rate`
#[test]
#[ignore]
fn masquerade_rate() {
    let t = Topo::new("mrate");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({"ipMasq": true}));
    t.add(&conf, "pod1", Some(&p1), "eth0");
    let srv = CrrServer::start(&t.ext, 9000);
    for _ in 0..3 {
        let r = conn_rate(&p1, ip(EXT_IP), 9000, 2.0);
        println!("masquerade connections/s: {r:.0}");
    }
    println!("{}", t.inspect()["counters"]["node"]);
    println!(
        "{}",
        sh_in(
            &t.ext,
            &[
                "nstat",
                "-az",
                "TcpExtTW*",
                "TcpExtPAWS*",
                "TcpAttemptFails",
                "TcpExtTCPTimeouts",
                "TcpRetransSegs"
            ]
        )
    );
    println!(
        "{}",
        sh_in(
            &p1,
            &[
                "nstat",
                "-az",
                "TcpExtTCPTimeouts",
                "TcpRetransSegs",
                "TcpAttemptFails",
                "TcpOutRsts"
            ]
        )
    );
    srv.stop(&p1, sa(ip(EXT_IP), 9000));
    t.del(&conf, "pod1", Some(&p1), "eth0");
}

/// `cni-ebpf monitor` streams a new hostPort flow and a drop with its reason
/// from the pinned ring buffer, then puts the level back (no events are
/// written while no monitor runs).
#[test]
fn monitor_streams_new_flows_and_drops() {
    use std::io::{BufRead, BufReader};
    let t = Topo::new("mon");
    let p1 = t.pod("p1");
    let c1 = t.conf(mappings(json!([{"hostPort": 8080, "containerPort": 80}])));
    let r1 = t.add(&c1, "pod1", Some(&p1), "eth0");
    let a1 = result_ip(&r1, false);
    let host = r1["interfaces"][1]["name"].as_str().unwrap().to_string();
    let _s = TcpServer::start(&p1, "::", 80, "pod1");
    let level = || {
        let out = sh(&[
            "bpftool",
            "map",
            "dump",
            "pinned",
            t.dir
                .join(t.abi_dir())
                .join("maps/monitor")
                .to_str()
                .unwrap(),
            "-j",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        // The u32 value as bytes, little-endian.
        v[0]["value"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .fold(0u32, |acc, b| {
                acc << 8
                    | u32::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
            })
    };
    assert_eq!(level(), 0, "no monitor: level off");

    let mut mon = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.node))
        .arg(BIN)
        .args(["monitor", "--json", "--level", "flows", "--count", "2"])
        .arg("--pin-path")
        .arg(t.pin())
        .arg("--state-dir")
        .arg(t.dir.join("state"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the monitor has set its level, events are not written.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while level() != 2 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(level(), 2);
    assert_reply(&t.ext, ip(NODE_IP), 8080, &format!("pod1 ::ffff:{EXT_IP}"));
    ip_n(&p1, &["addr", "add", "10.0.0.200/8", "dev", "eth0"]);
    udp_send(&p1, Some(ip("10.0.0.200")), sa(ip(EXT_IP), 9999), "forged");

    let lines: Vec<Value> = BufReader::new(mon.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(mon.wait().unwrap().success());
    assert_eq!(lines.len(), 2, "{lines:?}");
    let flow = &lines[0];
    assert_eq!(flow["kind"], "flow", "{flow}");
    assert_eq!(flow["reason"], "nat_hostport", "{flow}");
    assert_eq!(flow["proto"], "tcp", "{flow}");
    assert_eq!(flow["dst"], format!("{NODE_IP}:8080"), "{flow}");
    assert_eq!(flow["toDst"], format!("{a1}:80"), "{flow}");
    assert!(
        flow["src"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{EXT_IP}:")),
        "{flow}"
    );
    assert_eq!(flow["container"], "pod1/eth0", "{flow}");
    let drop = &lines[1];
    assert_eq!(drop["kind"], "drop", "{drop}");
    assert_eq!(drop["reason"], "drop_spoofed_ip", "{drop}");
    assert_eq!(drop["ifname"], host, "{drop}");
    assert_eq!(drop["proto"], "udp", "{drop}");
    assert!(
        drop["src"].as_str().unwrap().starts_with("10.0.0.200:"),
        "{drop}"
    );
    assert_eq!(drop["dst"], format!("{EXT_IP}:9999"), "{drop}");
    assert_eq!(level(), 0, "the monitor put the level back");
    t.del(&c1, "pod1", Some(&p1), "eth0");
}

/// A mapping bound to 127.0.0.1 or ::1 is reachable from the node itself
/// only (through the socket hooks, without route_localnet), never from the
/// outside or from pods, and the hooks leave sockets of other network
/// namespaces alone even in the same cgroup.
#[test]
fn loopback_mappings_serve_the_node_only() {
    let t = Topo::new("lom");
    let (p1, p2) = (t.pod("p1"), t.pod("p2"));
    let c1 = t.conf(mappings(json!([
        {"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1"},
        {"hostPort": 8081, "containerPort": 81, "hostIP": "::1"},
    ])));
    t.add(&c1, "pod1", Some(&p1), "eth0");
    t.add(&t.conf(json!({})), "pod2", Some(&p2), "eth0");
    let _s80 = TcpServer::start(&p1, "::", 80, "pod1");
    let _s81 = TcpServer::start(&p1, "::", 81, "pod1");
    // pod2's own loopback listener on the same port: what a connect to
    // 127.0.0.1:8080 inside pod2 must reach.
    let _own = TcpServer::start(&p2, "127.0.0.1", 8080, "pod2-own");

    let got = node_tcp_get(&t, true, ip("127.0.0.1"), 8080).unwrap();
    assert!(got.starts_with("pod1 "), "{got}");
    let got = node_tcp_get(&t, true, ip("::1"), 8081).unwrap();
    assert!(got.starts_with("pod1 "), "{got}");
    // Bound to loopback: not on the node's other addresses, not from outside.
    assert!(node_tcp_get(&t, true, ip(NODE_IP), 8080).is_err());
    assert!(tcp_get(&t.ext, ip(NODE_IP), 8080).is_err());
    assert!(tcp_get(&t.ext, ip(NODE_IP6), 8081).is_err());
    // From a pod: neither by the node's address nor, inside the hooks'
    // cgroup, by its own loopback.
    assert!(tcp_get(&p2, ip(NODE_IP), 8080).is_err());
    let got = cgroup_tcp_get(&t, &p2, true, ip("127.0.0.1"), 8080).unwrap();
    assert!(got.starts_with("pod2-own "), "{got}");
    let rl = sh_in(
        &t.node,
        &["sysctl", "-n", "net.ipv4.conf.all.route_localnet"],
    );
    assert_eq!(rl.trim(), "0");
    t.del(&c1, "pod1", Some(&p1), "eth0");
    t.del(&t.conf(json!({})), "pod2", Some(&p2), "eth0");
}
