//! Two nodes of a flannel host-gw cluster on one machine: each node's pod
//! subnet comes from its own flannel `subnet.env`, the nodes route each
//! other's pod subnet over a shared underlay, pods on both are made by the
//! real binary, and every assertion is on the address a server saw or the
//! address an answer came from.

mod harness;

use std::net::{IpAddr, SocketAddr};

use harness::*;
use serde_json::{json, Value};

const NETWORK: &str = "10.244.0.0/16";
const SUBNETS: [&str; 2] = ["10.244.1.0/24", "10.244.2.0/24"];

/// Node `i`'s config: flannel's file (written into the node's private dir)
/// instead of ranges, a hostPort 8080/tcp and 8053/udp on the pod.
fn node_conf(c: &Cluster, i: usize) -> Value {
    let n = &c.nodes[i];
    let file = n.dir.join("subnet.env");
    let gw = SUBNETS[i].replace(".0/24", ".1/24");
    std::fs::write(
        &file,
        format!("FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={gw}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
    )
    .unwrap();
    n.conf(json!({
        "subnetFile": file,
        "ipam": {"ranges": null},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
        ]},
    }))
}

#[test]
fn flannel_host_gw_two_nodes() {
    let c = Cluster::new("two", &SUBNETS);
    let pods: Vec<String> = c.nodes.iter().map(|n| n.pod("pod")).collect();
    let mut pod_ips = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let res = n.add(
            &node_conf(&c, i),
            &format!("pod{i}"),
            Some(&pods[i]),
            "eth0",
        );
        let ip = result_ip(&res, false);
        // The subnet, gateway and MTU are flannel's.
        let subnet: ipnet::Ipv4Net = SUBNETS[i].parse().unwrap();
        assert!(
            matches!(ip, IpAddr::V4(a) if subnet.contains(&a)),
            "node {i} pod got {ip}, not in {subnet}: {res}"
        );
        assert_eq!(
            res["ips"][0]["gateway"],
            subnet.hosts().next().unwrap().to_string()
        );
        let link = ip_n(&pods[i], &["link", "show", "eth0"]);
        assert!(link.contains("mtu 1450"), "{link}");
        let routes = ip_n(&pods[i], &["route", "show"]);
        assert!(
            routes.contains(&format!("{NETWORK} via {}", subnet.hosts().next().unwrap())),
            "pod routes lack the flannel network: {routes}"
        );
        pod_ips.push(ip);
    }
    let _servers: Vec<_> = pods
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            [
                Box::new(TcpServer::start(p, "0.0.0.0", 80, &format!("pod{i}")))
                    as Box<dyn std::any::Any>,
                Box::new(UdpEcho::start(
                    p,
                    SocketAddr::new("0.0.0.0".parse().unwrap(), 53),
                    &format!("pod{i}"),
                )),
            ]
        })
        .collect();
    let _ext_server = TcpServer::start(&c.ext, "0.0.0.0", 7000, "ext");

    for (i, j) in [(0, 1), (1, 0)] {
        // Pod to pod across nodes: the server sees the client pod's address.
        assert_reply(&pods[i], pod_ips[j], 80, &format!("pod{j} {}", pod_ips[i]));
        // Leaving the flannel network: masqueraded to the node's address.
        assert_reply(&pods[i], c.ext_ip(), 7000, &format!("ext {}", c.node_ip(i)));
        // A hostPort from outside: the pod sees the real client, the answer
        // comes from nodeIP:hostPort.
        assert_reply(
            &c.ext,
            c.node_ip(j),
            8080,
            &format!("pod{j} {}", c.ext_ip()),
        );
        let (text, from) = udp_ask(&c.ext, 0, SocketAddr::new(c.node_ip(j), 8053)).unwrap();
        assert_eq!(from, SocketAddr::new(c.node_ip(j), 8053), "{text}");
        assert!(
            text.starts_with(&format!("pod{j} {}:", c.ext_ip())),
            "{text}"
        );
        // A hostPort of the other node from a pod: the node address is
        // outside the flannel network, so the client pod is masqueraded to
        // its own node's address (as flanneld's --ip-masq rules do), and the
        // answer comes back from nodeIP:hostPort.
        assert_reply(
            &pods[i],
            c.node_ip(j),
            8080,
            &format!("pod{j} {}", c.node_ip(i)),
        );
        let (text, from) = udp_ask(&pods[i], 0, SocketAddr::new(c.node_ip(j), 8053)).unwrap();
        assert_eq!(from, SocketAddr::new(c.node_ip(j), 8053), "{text}");
        assert!(
            text.starts_with(&format!("pod{j} {}:", c.node_ip(i))),
            "{text}"
        );
    }

    for (i, n) in c.nodes.iter().enumerate() {
        n.del(
            &node_conf(&c, i),
            &format!("pod{i}"),
            Some(&pods[i]),
            "eth0",
        );
        assert!(n
            .files("ipam/testnet")
            .iter()
            .all(|f| !f.starts_with("10.")));
    }
}
