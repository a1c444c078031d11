//! The plugin under a real containerd (1.6, CRI plugin), driven the way
//! kubelet drives it: each test builds a node (a [`Topo`]), starts a
//! containerd in the node's network namespace with its own config, root,
//! state and sockets, the plugin (the debug build, behind a recording
//! wrapper) in its CNI `bin_dir` and one conflist in its `conf_dir`, imports
//! a locally built busybox image, and makes kubelet's CRI calls over the
//! unix socket (Version, RunPodSandbox with port mappings and pod metadata,
//! CreateContainer/StartContainer, PodSandboxStatus, StopPodSandbox twice,
//! RemovePodSandbox). Behaviour is proven with real packets: hostPorts from
//! the external namespace and from the node itself, masqueraded egress,
//! pod-to-pod; and nothing of a pod is left after its removal.
//! When a test fails it prints every plugin call containerd made (CNI_*
//! environment, stdin, stdout, status) and the tail of containerd's log.

mod harness;
#[path = "harness/runtime.rs"]
mod runtime;

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use harness::*;
use k8s_cri::v1::Protocol;
use runtime::*;
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// The timing test runs alone (its figures would otherwise measure the
/// other tests' containerds); every other test shares.
static EXCLUSIVE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

/// The network name of both conflists (IPAM and state dirs are per name).
const NET: &str = "k8s-pod-network";

/// cni-ebpf alone, as README's example (bridge, host-local, ipMasq).
fn main_conflist(t: &Topo) -> Value {
    let mut p = t.conf(json!({
        "ipMasq": true,
        "nonMasqueradeCIDRs": ["10.0.0.0/8", "fd00::/8"],
        "mtu": 1500,
        "capabilities": {"portMappings": true, "ips": true, "mac": true},
    }));
    let o = p.as_object_mut().unwrap();
    o.remove("cniVersion");
    o.remove("name");
    json!({"cniVersion": "1.0.0", "name": NET, "plugins": [p]})
}

fn bridge_plugin(t: &Topo) -> Value {
    json!({
        "type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
        "ipMasq": true, "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]],
                 "dataDir": t.dir.join("ipam")},
    })
}

/// The reference bridge + host-local, then cni-ebpf in portmap's place.
fn chained_conflist(t: &Topo) -> Value {
    let mut ours = json!({
        "type": "cni-ebpf", "capabilities": {"portMappings": true},
        "pinPath": t.pin(), "stateDir": t.dir.join("state"), "logFile": t.dir.join("cni.log"),
        "cgroupPath": t.cgroup,
    });
    force_attach_mode(&mut ours);
    json!({"cniVersion": "1.0.0", "name": NET, "plugins": [bridge_plugin(t), ours]})
}

/// The reference chain: bridge + host-local + portmap (iptables).
fn reference_conflist(t: &Topo) -> Value {
    json!({"cniVersion": "1.0.0", "name": NET, "plugins": [
        bridge_plugin(t),
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
    ]})
}

/// Retries `f` for up to 5 s (a container's server binds moments after
/// StartContainer returns).
fn eventually(what: &str, f: impl Fn() -> Result<String, String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[track_caller]
fn assert_line(what: &str, got: String, want: &str) {
    assert_eq!(got, want, "{what}");
}

/// Nothing of any pod is left: no veths, state records, IP reservations,
/// map entries or link pins (the node-wide ones stay).
#[track_caller]
fn assert_clean(t: &Topo) {
    let ours = |l: &str| l.starts_with("veth") || l.starts_with(TOMBSTONE_PREFIX);
    let links: Vec<String> = links_when_gone(&t.node, ours)
        .into_iter()
        .filter(|l| ours(l))
        .collect();
    assert!(links.is_empty(), "veths left in node: {links:?}");
    let state: Vec<String> = t
        .files(&format!("state/{NET}"))
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .collect();
    assert!(state.is_empty(), "state records left: {state:?}");
    let ipam: Vec<String> = t
        .files(&format!("ipam/{NET}"))
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
        .collect();
    assert!(ipam.is_empty(), "IP reservations left: {ipam:?}");
    if t.dir.join(t.abi_dir()).join("maps/endpoints").exists() {
        let insp = t.inspect();
        for key in ["endpoints", "interfaces", "portmaps", "nat"] {
            let v = insp[key].as_array().unwrap();
            // Conntrack-like translations age out; the others must be gone.
            if key != "nat" {
                assert!(v.is_empty(), "{key} entries left: {v:?}");
            }
        }
        let pins = t.endpoint_link_pins();
        assert!(pins.is_empty(), "link pins left: {pins:?}");
    }
}

/// A [`Snapshot`] of the node, once settled with no pod left (veths gone,
/// the port-less bridge without carrier: the kernel drops it, and its
/// routes, a moment after the last port left), without containerd's own
/// files.
fn snapshot(t: &Topo) -> Snapshot {
    let ours = |l: &str| l.starts_with("veth") || l.starts_with(TOMBSTONE_PREFIX);
    links_when_gone(&t.node, ours);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ip_n(&t.node, &["link", "show", "cni0"]).contains("NO-CARRIER")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = Snapshot::take(t, &[]);
    if let Some(files) = s.sections.get_mut("files") {
        // host-local's cursor moves on with every pod.
        files.retain(|f| !f.starts_with("ctd") && !f.contains("/last_reserved_ip."));
    }
    // Translations of the test's own connections age out on their own.
    s.sections.remove("map nat");
    s
}

/// The calls of one sandbox, one line each: `plugin COMMAND netns=… prev=…`.
fn call_pattern(calls: &[PluginCall], cid: &str) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.cid() == cid)
        .map(|c| {
            let netns = c.env.get("CNI_NETNS").map(String::as_str).unwrap_or("");
            format!(
                "{} {} netns={} prevResult={} rc={}",
                c.plugin,
                c.cmd(),
                if netns.is_empty() { "\"\"" } else { "set" },
                c.stdin.get("prevResult").is_some(),
                c.rc
            )
        })
        .collect()
}

/// The ADD result cni-ebpf printed for sandbox `cid` (main mode) or the
/// chain's final result (chained: cni-ebpf passes prevResult on).
fn add_result(calls: &[PluginCall], cid: &str) -> Value {
    let c = calls
        .iter()
        .rev()
        .find(|c| c.cid() == cid && c.cmd() == "ADD" && c.plugin == "cni-ebpf" && c.rc == 0)
        .unwrap_or_else(|| panic!("no successful cni-ebpf ADD recorded for {cid}"));
    serde_json::from_str(c.stdout.trim()).unwrap()
}

/// Both modes: hostPorts (TCP, UDP, IPv4, IPv6, with and without hostIP)
/// from outside and from the node itself, masqueraded egress, pod-to-pod,
/// a refused conflicting hostPort, and kubelet's teardown sequence.
fn hostport_suite(tag: &str, conflist: fn(&Topo) -> Value) {
    let _g = shared();
    let t = Topo::new(tag);
    let ctd = Containerd::start(
        &t,
        Net {
            conflist: conflist(&t),
            record: true,
        },
    );
    let mut cri = ctd.cri();
    let (rt, ver, api) = cri.version().unwrap();
    eprintln!("CRI Version: {rt} {ver} (CRI API {api})");
    let _ext4 = TcpServer::start(&t.ext, EXT_IP, 9000, "ext");
    let _ext6 = TcpServer::start(&t.ext, EXT_IP6, 9000, "ext6");

    let a = PodSpec::new("a")
        .port(Protocol::Tcp, SRV_PORT, 30080, "")
        .port(Protocol::Udp, SRV_PORT, 30081, "")
        .port(Protocol::Tcp, SRV_PORT, 30082, NODE_IP)
        .port(Protocol::Tcp, SRV_PORT, 30086, NODE_IP6);
    let cfg_a = a.config(&ctd.cgroup_base);
    let t0 = Instant::now();
    let pa = cri.run_pod(&cfg_a).unwrap();
    eprintln!("RunPodSandbox with 4 hostPorts: {:?}", t0.elapsed());
    cri.start_server(&pa, &cfg_a, "srv-a").unwrap();
    let b = PodSpec::new("b");
    let cfg_b = b.config(&ctd.cgroup_base);
    let pb = cri.run_pod(&cfg_b).unwrap();
    cri.start_server(&pb, &cfg_b, "srv-b").unwrap();

    // PodSandboxStatus reports the addresses the plugin gave.
    let calls = ctd.calls();
    let (state, ips_a, netns_a) = cri.pod_status(&pa).unwrap();
    assert_eq!(state, 0, "sandbox a not ready");
    let res_a = add_result(&calls, &pa);
    let (a4, a6) = (result_ip(&res_a, false), result_ip(&res_a, true));
    let mut want = vec![a4, a6];
    let mut got = ips_a.clone();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "PodSandboxStatus IPs vs the plugin's result {res_a}"
    );
    assert!(a4.to_string().starts_with("10.1.0."), "{a4}");
    assert!(a6.to_string().starts_with("fd00:1::"), "{a6}");
    let netns_a = netns_a.expect("no netns path in the verbose status");
    let (_, ips_b, netns_b) = cri.pod_status(&pb).unwrap();
    let b4 = *ips_b.iter().find(|i| i.is_ipv4()).unwrap();
    let b6 = *ips_b.iter().find(|i| i.is_ipv6()).unwrap();
    let netns_b = netns_b.unwrap();
    // CNI_ARGS as kubelet's pods get them.
    let add = calls
        .iter()
        .find(|c| c.cid() == pa && c.cmd() == "ADD" && c.plugin == "cni-ebpf")
        .unwrap();
    let args = add.env.get("CNI_ARGS").cloned().unwrap_or_default();
    for kv in [
        "K8S_POD_NAMESPACE=default".to_string(),
        "K8S_POD_NAME=a".to_string(),
        format!("K8S_POD_UID={}", a.uid),
        format!("K8S_POD_INFRA_CONTAINER_ID={pa}"),
    ] {
        assert!(
            args.split(';').any(|x| x == kv),
            "CNI_ARGS {args:?} lacks {kv}"
        );
    }

    // hostPorts from outside, both families, TCP and UDP, with hostIP.
    let from_ext4 = format!("srv-a {EXT_IP}");
    let from_ext6 = format!("srv-a {EXT_IP6}");
    for (port, dst, want) in [
        (30080, ip(NODE_IP), &from_ext4),
        (30080, ip(NODE_IP6), &from_ext6),
        (30082, ip(NODE_IP), &from_ext4),
        (30086, ip(NODE_IP6), &from_ext6),
    ] {
        let got = eventually(&format!("ext -> {dst}:{port}"), || {
            tcp_get(&t.ext, dst, port)
        });
        assert_line(&format!("ext -> {dst}:{port} (TCP)"), got, want);
    }
    for (dst, want) in [(ip(NODE_IP), &from_ext4), (ip(NODE_IP6), &from_ext6)] {
        let got = udp_ask(&t.ext, 0, sa(dst, 30081)).map(|(s, _)| s);
        assert_line(
            &format!("ext -> {dst}:30081 (UDP)"),
            got.unwrap_or_else(|e| panic!("UDP {dst}:30081: {e}")),
            want,
        );
    }
    // The hostIP mapping is on that address only.
    assert!(
        tcp_get(&t.ext, ip(NODE_IP6), 30082).is_err(),
        "hostPort 30082 (hostIP {NODE_IP}) answered on {NODE_IP6}"
    );
    // Node-local, through the socket hooks (a process in the node's cgroup).
    for dst in ["127.0.0.1", "::1", NODE_IP] {
        let got = node_tcp_get(&t, true, ip(dst), 30080)
            .unwrap_or_else(|e| panic!("node -> {dst}:30080: {e}"));
        assert!(got.starts_with("srv-a "), "node -> {dst}:30080: {got}");
    }
    for dst in ["127.0.0.1", "::1"] {
        let got = node_udp_ask(&t, ip(dst), 30081)
            .unwrap_or_else(|e| panic!("node -> {dst}:30081 (UDP): {e}"));
        assert!(
            got.starts_with("srv-a "),
            "node -> {dst}:30081 (UDP): {got}"
        );
    }
    // Egress masqueraded to the node's address; pod-to-pod not.
    assert_line(
        "pod a -> ext (IPv4)",
        tcp_line(&netns_a, sa(ip(EXT_IP), 9000)).unwrap(),
        &format!("ext {NODE_IP}"),
    );
    assert_line(
        "pod a -> ext (IPv6)",
        tcp_line(&netns_a, sa(ip(EXT_IP6), 9000)).unwrap(),
        &format!("ext6 {NODE_IP6}"),
    );
    assert_line(
        "pod a -> pod b (IPv4)",
        eventually("pod a -> pod b", || tcp_line(&netns_a, sa(b4, SRV_PORT))),
        &format!("srv-b {a4}"),
    );
    assert_line(
        "pod a -> pod b (IPv6)",
        tcp_line(&netns_a, sa(b6, SRV_PORT)).unwrap(),
        &format!("srv-b {a6}"),
    );
    assert_line(
        "pod b -> pod a (UDP)",
        udp_line(&netns_b, sa(a4, SRV_PORT)).unwrap(),
        &format!("srv-a {b4}"),
    );

    // A second sandbox asking for a held hostPort is refused, naming the holder.
    let c = PodSpec::new("c").port(Protocol::Tcp, SRV_PORT, 30080, "");
    let err = cri
        .run_pod(&c.config(&ctd.cgroup_base))
        .expect_err("a second sandbox got hostPort 30080");
    eprintln!("conflicting RunPodSandbox: {}", err.message());
    assert!(
        err.message().contains(&pa),
        "the refusal does not name the holder {pa}: {}",
        err.message()
    );
    // The holder is still served.
    assert_line(
        "ext -> hostPort after the refusal",
        tcp_get(&t.ext, ip(NODE_IP), 30080).unwrap(),
        &from_ext4,
    );

    // kubelet's teardown: StopPodSandbox (twice: after a kubelet restart it
    // stops again), RemovePodSandbox.
    for p in [&pa, &pb] {
        cri.stop_pod(p).unwrap();
        cri.stop_pod(p).unwrap();
        cri.remove_pod(p).unwrap();
    }
    assert!(
        tcp_get(&t.ext, ip(NODE_IP), 30080).is_err(),
        "hostPort 30080 still answers after RemovePodSandbox"
    );
    let calls = ctd.calls();
    let failed = calls
        .iter()
        .find(|x| x.cmd() == "ADD" && x.rc != 0)
        .expect("the conflicting ADD was not recorded");
    let cid_c = failed.cid().to_string();
    eprintln!(
        "call pattern of sandbox a:\n  {}",
        call_pattern(&calls, &pa).join("\n  ")
    );
    eprintln!(
        "call pattern of the refused sandbox c:\n  {}",
        call_pattern(&calls, &cid_c).join("\n  ")
    );
    // kubelet's teardown reached the plugin as containerd 1.6 sends it: a
    // DEL with the netns and the cached result, then DELs without either.
    let dels_a: Vec<(bool, bool)> = calls
        .iter()
        .filter(|x| x.cid() == pa && x.plugin == "cni-ebpf" && x.cmd() == "DEL")
        .map(|x| {
            (
                x.env.get("CNI_NETNS").is_some_and(|n| !n.is_empty()),
                x.stdin.get("prevResult").is_some(),
            )
        })
        .collect();
    assert!(
        dels_a.contains(&(true, true)) && dels_a.contains(&(false, false)),
        "DELs of {pa} (netns set, prevResult): {dels_a:?}"
    );
    let bad: Vec<String> = calls
        .iter()
        .filter(|x| x.rc != 0 && x.cid() != cid_c)
        .map(PluginCall::line)
        .collect();
    assert!(bad.is_empty(), "failed plugin calls:\n{}", bad.join("\n"));
    let dels_c = calls
        .iter()
        .filter(|x| x.cid() == cid_c && x.cmd() == "DEL" && x.plugin == "cni-ebpf")
        .count();
    assert!(dels_c >= 1, "the failed ADD got no DEL");
    assert_clean(&t);
}

#[test]
fn main_mode_under_containerd() {
    hostport_suite("ctm", main_conflist);
}

#[test]
fn chained_mode_under_containerd() {
    hostport_suite("ctc", chained_conflist);
}

/// containerd SIGKILLed with a pod running: the pod keeps being served
/// (the data path needs no daemon), and once containerd is back the pod is
/// stopped and removed cleanly.
#[test]
fn containerd_killed_and_restarted() {
    let _g = shared();
    let t = Topo::new("ctk");
    let mut ctd = Containerd::start(
        &t,
        Net {
            conflist: main_conflist(&t),
            record: true,
        },
    );
    let mut cri = ctd.cri();
    // A first pod's lifecycle creates the node-wide state (bridge, pins).
    let w = PodSpec::new("warm");
    let pw = cri.run_pod(&w.config(&ctd.cgroup_base)).unwrap();
    cri.stop_pod(&pw).unwrap();
    cri.remove_pod(&pw).unwrap();
    let before = snapshot(&t);

    let p = PodSpec::new("k").port(Protocol::Tcp, SRV_PORT, 30090, "");
    let cfg = p.config(&ctd.cgroup_base);
    let pk = cri.run_pod(&cfg).unwrap();
    cri.start_server(&pk, &cfg, "srv-k").unwrap();
    let want = format!("srv-k {EXT_IP}");
    assert_line(
        "before the kill",
        eventually("ext -> 30090", || tcp_get(&t.ext, ip(NODE_IP), 30090)),
        &want,
    );
    drop(cri);
    let pid = ctd.pid().unwrap();
    ctd.kill9();
    eprintln!("containerd {pid} killed (SIGKILL)");
    assert_line(
        "containerd dead",
        tcp_get(&t.ext, ip(NODE_IP), 30090).unwrap(),
        &want,
    );
    let local = node_tcp_get(&t, true, ip("127.0.0.1"), 30090).unwrap();
    assert!(
        local.starts_with("srv-k "),
        "containerd dead, node-local: {local}"
    );
    ctd.restart();
    let mut cri = ctd.cri();
    let (state, ips, _) = cri.pod_status(&pk).unwrap();
    assert_eq!(state, 0, "sandbox not ready after the restart");
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert_line(
        "after the restart",
        tcp_get(&t.ext, ip(NODE_IP), 30090).unwrap(),
        &want,
    );
    cri.stop_pod(&pk).unwrap();
    cri.stop_pod(&pk).unwrap();
    cri.remove_pod(&pk).unwrap();
    assert!(tcp_get(&t.ext, ip(NODE_IP), 30090).is_err());
    let bad: Vec<String> = ctd
        .calls()
        .iter()
        .filter(|x| x.rc != 0)
        .map(PluginCall::line)
        .collect();
    assert!(bad.is_empty(), "failed plugin calls:\n{}", bad.join("\n"));
    assert_clean(&t);
    before.assert_same(&snapshot(&t), "after kill -9, restart, stop and remove");
}

/// 16 sandboxes with a hostPort and a server each, run and then stopped and
/// removed by 16 threads at once (kubelet's pod workers).
#[test]
fn sixteen_sandboxes_in_parallel() {
    const N: u16 = 16;
    let _g = shared();
    let t = Topo::new("ctp");
    let ctd = Containerd::start(
        &t,
        Net {
            conflist: main_conflist(&t),
            record: true,
        },
    );
    let mut cri = ctd.cri();
    let w = PodSpec::new("warm");
    let pw = cri.run_pod(&w.config(&ctd.cgroup_base)).unwrap();
    cri.stop_pod(&pw).unwrap();
    cri.remove_pod(&pw).unwrap();
    let before = snapshot(&t);

    let t0 = Instant::now();
    let pods: Vec<(String, PodSpec)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..N)
            .map(|i| {
                let ctd = &ctd;
                s.spawn(move || {
                    let mut cri = ctd.cri();
                    let p =
                        PodSpec::new(&format!("p{i}")).port(Protocol::Tcp, SRV_PORT, 31000 + i, "");
                    let cfg = p.config(&ctd.cgroup_base);
                    let id = cri
                        .run_pod(&cfg)
                        .unwrap_or_else(|e| panic!("RunPodSandbox p{i}: {e}"));
                    cri.start_server(&id, &cfg, &format!("srv-p{i}"))
                        .unwrap_or_else(|e| panic!("start server p{i}: {e}"));
                    (id, p)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "{N} sandboxes + servers started in parallel in {:?}",
        t0.elapsed()
    );
    let mut seen = std::collections::HashSet::new();
    for (i, (id, _)) in pods.iter().enumerate() {
        let port = 31000 + i as u16;
        assert_line(
            &format!("ext -> hostPort {port}"),
            eventually(&format!("ext -> {port}"), || {
                tcp_get(&t.ext, ip(NODE_IP), port)
            }),
            &format!("srv-p{i} {EXT_IP}"),
        );
        let (_, ips, _) = cri.pod_status(id).unwrap();
        for a in &ips {
            assert!(seen.insert(*a), "address {a} given twice");
        }
    }
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (id, _) in &pods {
            let ctd = &ctd;
            s.spawn(move || {
                let mut cri = ctd.cri();
                cri.stop_pod(id).unwrap();
                cri.stop_pod(id).unwrap();
                cri.remove_pod(id).unwrap();
            });
        }
    });
    eprintln!(
        "{N} sandboxes stopped and removed in parallel in {:?}",
        t0.elapsed()
    );
    let bad: Vec<String> = ctd
        .calls()
        .iter()
        .filter(|x| x.rc != 0)
        .map(PluginCall::line)
        .collect();
    assert!(bad.is_empty(), "failed plugin calls:\n{}", bad.join("\n"));
    assert_clean(&t);
    before.assert_same(&snapshot(&t), "after 16 parallel sandboxes");
}

/// Printed, not asserted: a kubelet-style RunPodSandbox with a hostPort
/// (CRI round trip: netns, loopback, the network, the pause container)
/// with cni-ebpf alone, chained, and the reference chain, in one run.
#[test]
fn run_pod_sandbox_timing() {
    const ROUNDS: usize = 7;
    let _g = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    let mut report = Vec::new();
    for (label, tag, conflist) in [
        ("cni-ebpf", "ctt", main_conflist as fn(&Topo) -> Value),
        ("bridge + cni-ebpf", "ctt", chained_conflist),
        ("bridge + portmap (reference)", "ctt", reference_conflist),
    ] {
        let t = Topo::new(tag);
        let ctd = Containerd::start(
            &t,
            Net {
                conflist: conflist(&t),
                record: false,
            },
        );
        let mut cri = ctd.cri();
        let (mut run, mut stop) = (Vec::new(), Vec::new());
        for i in 0..=ROUNDS {
            let p = PodSpec::new(&format!("t{i}")).port(Protocol::Tcp, SRV_PORT, 32000, "");
            let cfg = p.config(&ctd.cgroup_base);
            let t0 = Instant::now();
            let id = cri.run_pod(&cfg).unwrap();
            let r = t0.elapsed();
            let t0 = Instant::now();
            cri.stop_pod(&id).unwrap();
            let s = t0.elapsed();
            cri.remove_pod(&id).unwrap();
            // The first round creates the node-wide state.
            if i > 0 {
                run.push(r);
                stop.push(s);
            }
        }
        run.sort();
        stop.sort();
        report.push(format!(
            "{label:30} RunPodSandbox p50 {:>7.1} ms (min {:.1}, max {:.1}); StopPodSandbox p50 {:>6.1} ms",
            run[ROUNDS / 2].as_secs_f64() * 1e3,
            run[0].as_secs_f64() * 1e3,
            run[ROUNDS - 1].as_secs_f64() * 1e3,
            stop[ROUNDS / 2].as_secs_f64() * 1e3,
        ));
    }
    println!(
        "kubelet-style RunPodSandbox with one hostPort, {ROUNDS} rounds each:\n{}",
        report.join("\n")
    );
}
