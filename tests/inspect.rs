//! `cni-ebpf inspect` views and filters, on attachments made by real ADDs
//! (with Kubernetes' CNI_ARGS) and real traffic, and while ADD/DEL run.

mod harness;

use std::net::IpAddr;

use harness::*;
use serde_json::{json, Value};

const WEB: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const DNS: &str = "b7c8d9e0f1a20314253647586970a1b2";

/// ADD as kubelet does it: pod namespace and name in CNI_ARGS.
fn add_pod(t: &Topo, conf: &Value, cid: &str, ns: &str, pod: (&str, &str)) -> Value {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={cid}",
        pod.0, pod.1
    );
    let call = Call {
        cmd: "ADD",
        cid,
        netns: Some(format!("/run/netns/{ns}")),
        ifname: "eth0",
        args: Some(&args),
        ..Default::default()
    };
    t.exec(BIN, &call, conf.to_string().as_bytes())
        .ok()
        .json
        .unwrap()
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .clone()
}

fn ids(rows: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| r["containerID"].as_str().unwrap().to_string())
        .collect();
    v.dedup();
    v
}

#[test]
fn views_and_filters() {
    let t = Topo::new("insp");
    let (pw, pd) = (t.pod("web"), t.pod("dns"));
    let web_conf = t.conf(json!({"ipMasq": true, "runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}));
    let dns_conf = t.conf(json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": NODE_IP}]}}));
    let rw = add_pod(&t, &web_conf, WEB, &pw, ("default", "web"));
    let rd = add_pod(&t, &dns_conf, DNS, &pd, ("kube-system", "coredns"));
    let (w4, w6) = (result_ip(&rw, false), result_ip(&rw, true));
    let _srv = TcpServer::start(&pw, "::", 80, "web");
    assert_reply(
        &t.ext,
        NODE_IP.parse().unwrap(),
        8080,
        &format!("web ::ffff:{EXT_IP}"),
    );

    // endpoints: one row per attachment, addresses gathered, pod names kept.
    let eps = arr(&t.inspect_json(&["endpoints"]));
    assert_eq!(ids(&eps), [WEB, DNS], "{eps:?}");
    let web = &eps[0];
    assert_eq!(web["podNamespace"], "default");
    assert_eq!(web["podName"], "web");
    assert_eq!(web["ifname"], "eth0");
    assert_eq!(web["network"], "testnet");
    assert_eq!(web["ips"], json!([w4.to_string(), w6.to_string()]));
    assert_eq!(web["hostVeth"], rw["interfaces"][1]["name"], "{rw}");
    assert_eq!(web["mac"], rw["interfaces"][2]["mac"], "{rw}");
    assert_eq!(web["masquerade"], true);
    assert_eq!(
        web["hostPorts"],
        json!([{"protocol": "tcp", "hostIP": "", "hostPort": 8080, "containerPort": 80}])
    );
    assert!(
        web["counters"]["fromPackets"].as_u64().unwrap() > 0,
        "{web}"
    );
    assert_eq!(eps[1]["podName"], "coredns");
    assert_eq!(eps[1]["masquerade"], false);
    assert_eq!(eps[1]["hostPorts"][0]["hostIP"], NODE_IP);

    // Filters: container ID prefix, pod, nothing matching.
    let only = |args: &[&str]| ids(&arr(&t.inspect_json(args)));
    assert_eq!(only(&["endpoints", "--container", &WEB[..6]]), [WEB]);
    assert_eq!(only(&["endpoints", "--container", DNS]), [DNS]);
    assert_eq!(only(&["endpoints", "--pod", "kube-system/coredns"]), [DNS]);
    assert!(only(&["endpoints", "--pod", "default/coredns"]).is_empty());
    assert!(only(&["endpoints", "--container", "ffff"]).is_empty());

    // portmaps: tcp 8080 for both of web's families, udp 5353 on the hostIP.
    let ports = arr(&t.inspect_json(&["portmaps"]));
    assert_eq!(ports.len(), 3, "{ports:?}");
    let web_ports: Vec<&Value> = ports.iter().filter(|p| p["containerID"] == WEB).collect();
    assert_eq!(web_ports.len(), 2);
    assert!(web_ports.iter().all(|p| p["protocol"] == "tcp"
        && p["hostPort"] == 8080
        && p["containerPort"] == 80
        && p["hostIP"] == ""
        && p["podName"] == "web"));
    let mut pod_ips: Vec<&str> = web_ports
        .iter()
        .map(|p| p["podIP"].as_str().unwrap())
        .collect();
    pod_ips.sort();
    assert_eq!(pod_ips, [w4.to_string(), w6.to_string()]);
    assert_eq!(only(&["portmaps", "--pod", "kube-system/coredns"]), [DNS]);
    let dns_port = &arr(&t.inspect_json(&["portmaps", "--container", DNS]))[0];
    assert_eq!(
        (
            &dns_port["protocol"],
            &dns_port["hostIP"],
            &dns_port["podIP"]
        ),
        (
            &json!("udp"),
            &json!(NODE_IP),
            &json!(result_ip(&rd, false).to_string())
        )
    );

    // nat: the hostPort connection's reply translation, owned by web.
    let nat = arr(&t.inspect_json(&["nat"]));
    let reply = nat
        .iter()
        .find(|n| n["kind"] == "hostport-reply")
        .unwrap_or_else(|| panic!("{nat:?}"));
    assert_eq!(reply["containerID"], WEB);
    assert_eq!(reply["podName"], "web");
    assert_eq!(reply["proto"], "tcp");
    assert!(
        reply["to"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{NODE_IP}:8080 -> {EXT_IP}:")),
        "{reply}"
    );
    assert!(arr(&t.inspect_json(&["nat", "--container", DNS])).is_empty());

    // counters: node-wide by reason, per pod.
    let c = t.inspect_json(&["counters"]);
    assert!(c["node"]["nat_hostport"].as_u64().unwrap() > 0, "{c}");
    assert!(c["node"]["drop_spoofed_ip"].is_u64(), "{c}");
    let per = arr(&c["endpoints"]);
    assert_eq!(ids(&per), [WEB, DNS]);
    assert!(per[0]["translated"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(per[0]["hostVeth"], web["hostVeth"]);
    let c = t.inspect_json(&["counters", "--pod", "default/web"]);
    assert_eq!(ids(&arr(&c["endpoints"])), [WEB]);

    // links: both hooks of each host veth (cls_bpf, named, with program
    // IDs), the uplink's, and the socket hooks' cgroup link pins.
    let links = arr(&t.inspect_json(&["links"]));
    let of = |iface: &Value| -> Vec<(String, String, String)> {
        links
            .iter()
            .filter(|l| &l["interface"] == iface)
            .map(|l| {
                (
                    l["hook"].as_str().unwrap().into(),
                    l["program"].as_str().unwrap().into(),
                    l["attach"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let cls = |h: &str, p: &str| (h.to_string(), p.to_string(), "cls_bpf".to_string());
    assert_eq!(
        of(&web["hostVeth"]),
        [
            cls("egress", "to_container"),
            cls("ingress", "from_container")
        ],
        "{links:?}"
    );
    assert_eq!(
        of(&json!("up0")),
        [cls("egress", "to_netdev"), cls("ingress", "from_netdev")]
    );
    assert!(links
        .iter()
        .filter(|l| l["attach"] == "cls_bpf")
        .all(|l| l["progId"].as_u64().unwrap() > 0 && l["ifindex"].as_u64().unwrap() > 0));
    let cgroup: Vec<&Value> = links.iter().filter(|l| l["attach"] == "cgroup").collect();
    assert_eq!(cgroup.len(), 8, "{links:?}");
    assert!(cgroup.iter().any(|l| l["hook"] == "connect4"));
    let mine = arr(&t.inspect_json(&["links", "--container", WEB]));
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine
        .iter()
        .all(|l| l["podName"] == "web" && l["interface"] == web["hostVeth"]));

    // No view: the four views under their names.
    let all = t.inspect();
    assert_eq!(
        all.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["counters", "endpoints", "interfaces", "nat", "portmaps"]
    );
    // (Counters keep moving: IPv6 neighbour discovery, multicast.)
    let no_counters = |v: &Value| -> Vec<Value> {
        arr(v)
            .into_iter()
            .map(|mut e| {
                e.as_object_mut().unwrap().remove("counters");
                e
            })
            .collect()
    };
    assert_eq!(
        no_counters(&all["endpoints"]),
        no_counters(&t.inspect_json(&["endpoints"]))
    );

    // Tables: one line per row under a header.
    let text = t.inspect_text(&["endpoints"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("CONTAINER") && lines[0].contains("HOSTPORTS"),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&WEB[..12])
            && lines[1].contains("default/web")
            && lines[1].contains("8080/tcp->80"),
        "{text}"
    );
    assert!(
        lines[2].contains(&format!("{NODE_IP}:5353/udp->53")),
        "{text}"
    );
    let text = t.inspect_text(&["--pod", "default/web"]);
    assert!(
        text.contains("hostport-reply") && text.contains("nat_hostport") && !text.contains(DNS),
        "{text}"
    );

    // A record written before pod names were kept still reads (and DELs).
    let rec_path = t.dir.join(format!("state/testnet/{DNS}:eth0.json"));
    let mut rec: Value = serde_json::from_str(&read(&rec_path)).unwrap();
    let obj = rec.as_object_mut().unwrap();
    assert_eq!(obj.remove("podNamespace"), Some(json!("kube-system")));
    obj.remove("podName");
    std::fs::write(&rec_path, rec.to_string()).unwrap();
    let eps = arr(&t.inspect_json(&["endpoints", "--container", DNS]));
    assert_eq!((&eps[0]["podName"], eps.len()), (&json!(""), 1));
    t.del(&dns_conf, DNS, Some(&pd), "eth0");
    t.del(&web_conf, WEB, Some(&pw), "eth0");
    let all = t.inspect();
    assert!(
        arr(&all["endpoints"]).is_empty() && arr(&all["portmaps"]).is_empty(),
        "{all}"
    );
}

#[test]
fn works_while_add_and_del_run() {
    let t = std::sync::Arc::new(Topo::new("insc"));
    let conf = t.conf(json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 9000, "containerPort": 90, "protocol": "tcp"}]}}));
    // The data path exists before the churn starts.
    let p0 = t.pod("p0");
    add_pod(&t, &conf, "steady", &p0, ("ns", "steady"));
    let pods: Vec<String> = (0..3).map(|i| t.pod(&format!("c{i}"))).collect();
    let churn = {
        let (t, conf) = (t.clone(), t.conf(json!({})));
        std::thread::spawn(move || {
            for round in 0..4 {
                for (i, p) in pods.iter().enumerate() {
                    add_pod(&t, &conf, &format!("churn{i}"), p, ("ns", &format!("c{i}")));
                }
                for (i, p) in pods.iter().enumerate() {
                    t.del(&conf, &format!("churn{i}"), Some(p), "eth0");
                }
                let _ = round;
            }
        })
    };
    let (mut runs, mut slowest) = (0, std::time::Duration::ZERO);
    let started = std::time::Instant::now();
    while !churn.is_finished() {
        for view in ["endpoints", "portmaps", "nat", "counters", "links"] {
            // Each call must succeed and print valid JSON (sh and
            // inspect_json panic otherwise); the steady pod is always there.
            let t0 = std::time::Instant::now();
            let v = t.inspect_json(&[view, "--pod", "ns/steady"]);
            slowest = slowest.max(t0.elapsed());
            match view {
                "endpoints" | "portmaps" | "links" => {
                    assert!(!arr(&v).is_empty(), "{view}: {v}")
                }
                "counters" => assert_eq!(arr(&v["endpoints"]).len(), 1, "{v}"),
                _ => {}
            }
        }
        runs += 1;
    }
    churn.join().unwrap();
    assert!(runs > 0);
    eprintln!(
        "{runs} rounds of the five views during 12 ADDs and 12 DELs ({:?}), slowest call {slowest:?}",
        started.elapsed()
    );
    let eps = arr(&t.inspect_json(&["endpoints"]));
    assert_eq!(ids(&eps), ["steady"], "{eps:?}");
    let ip: IpAddr = eps[0]["ips"][0].as_str().unwrap().parse().unwrap();
    assert!(ip.is_ipv4());
    t.del(&conf, "steady", Some(&p0), "eth0");
}
