//! Packet tests through `BPF_PROG_TEST_RUN`: crafted frames run through the
//! pinned programs (with the maps an ADD filled), and every rewritten byte
//! checked, including L3 and L4 checksums computed here independently (veth
//! checksum offload would hide checksum bugs from real traffic).

mod harness;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use harness::*;
use serde_json::json;

/// One's-complement sum of `data` (16-bit big-endian words) added to `acc`.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data`.
fn csum(data: &[u8]) -> u16 {
    fold(sum(data, 0))
}

/// Checksum of an L4 segment with its pseudo-header.
fn l4_csum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> u16 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(seg.len() as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => unreachable!(),
    }
    fold(sum(seg, sum(&p, 0)))
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// An L4 segment: TCP SYN or UDP with 4 payload bytes, checksum filled
/// (`udp_zero`: UDP without checksum).
fn segment(proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, udp_zero: bool) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    let csum_at = if proto == TCP {
        s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        16
    } else {
        s.extend_from_slice(&[0, 12, 0, 0]);
        6
    };
    s.extend_from_slice(b"ping");
    if !(proto == UDP && udp_zero) {
        let c = l4_csum(src, dst, proto, &s);
        s[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    s
}

/// An IPv4 header (checksum filled) + payload.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[proto, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

fn frame(l3: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(if l3[0] >> 4 == 4 {
        &[0x08, 0x00]
    } else {
        &[0x86, 0xdd]
    });
    f.extend_from_slice(l3);
    f
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Runs the pinned program `prog` on `frame` in the node namespace, as if on
/// the device `ifname`; returns the verdict and the frame it left.
fn run(t: &Topo, prog: &str, ifname: &str, frame: Vec<u8>) -> (u32, Vec<u8>) {
    let progs = t.dir.join(t.abi_dir()).join("progs");
    let dir = std::fs::read_dir(&progs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let path = dir.join(prog);
    let ifindex: u32 = ip_n(&t.node, &["-o", "link", "show", ifname])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    in_ns(&t.node, move || {
        let p = SchedClassifier::from_pin(&path).unwrap();
        // struct __sk_buff up to `ifindex` (offset 40).
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 64];
        let opts = TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        };
        let r = p.test_run(opts).unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    })
    .join()
    .unwrap()
}

/// Checks the IPv4 header checksum of `f` (an Ethernet frame).
fn assert_ipv4_csum(f: &[u8]) {
    assert_eq!(csum(&f[14..34]), 0, "IPv4 header checksum of {f:02x?}");
}

/// Checks the L4 checksum of the IPv4 or IPv6 frame `f` against its addresses.
fn assert_l4_csum(f: &[u8]) {
    let (src, dst, proto, seg): (IpAddr, IpAddr, u8, &[u8]) = if f[12] == 0x08 {
        let s: [u8; 4] = f[26..30].try_into().unwrap();
        let d: [u8; 4] = f[30..34].try_into().unwrap();
        (s.into(), d.into(), f[23], &f[34..])
    } else {
        let s: [u8; 16] = f[22..38].try_into().unwrap();
        let d: [u8; 16] = f[38..54].try_into().unwrap();
        (s.into(), d.into(), f[20], &f[54..])
    };
    assert_eq!(l4_csum(src, dst, proto, seg), 0, "L4 checksum of {f:02x?}");
}

#[test]
fn rewrites_and_checksums() {
    let t = Topo::new("pkt");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({"ipMasq": true, "runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
        {"hostPort": 9132, "containerPort": 9132, "protocol": "sctp"},
    ]}}));
    let res = t.add(&conf, "pod1", Some(&p1), "eth0");
    let (IpAddr::V4(pod4), IpAddr::V6(pod6)) = (result_ip(&res, false), result_ip(&res, true))
    else {
        unreachable!()
    };
    let (node4, ext4, node6, ext6) = (v4(NODE_IP), v4(EXT_IP), v6(NODE_IP6), v6(EXT_IP6));

    // hostPort DNAT, IPv4 TCP: destination and port rewritten, both checksums right.
    let seg = segment(TCP, ext4.into(), node4.into(), 40000, 8080, false);
    let (verdict, out) = run(
        &t,
        "from_netdev",
        "up0",
        frame(&ipv4(ext4, node4, TCP, &seg)),
    );
    assert_eq!(verdict, 0, "TC_ACT_OK");
    assert_eq!(&out[26..30], &ext4.octets(), "source kept");
    assert_eq!(&out[30..34], &pod4.octets(), "destination is the pod");
    assert_eq!(&out[34..38], &[0x9c, 0x40, 0, 80], "ports 40000 -> 80");
    assert_ipv4_csum(&out);
    assert_l4_csum(&out);

    // hostPort DNAT, IPv6 UDP.
    let seg = segment(UDP, ext6.into(), node6.into(), 40001, 8053, false);
    let (_, out) = run(
        &t,
        "from_netdev",
        "up0",
        frame(&ipv6(ext6, node6, UDP, &seg)),
    );
    assert_eq!(&out[38..54], &pod6.octets());
    assert_eq!(&out[54..58], &[0x9c, 0x41, 0, 53]);
    assert_l4_csum(&out);

    // The reply of the IPv4 flow leaves as nodeIP:hostPort.
    let seg = segment(TCP, pod4.into(), ext4.into(), 80, 40000, false);
    let (_, out) = run(&t, "to_netdev", "up0", frame(&ipv4(pod4, ext4, TCP, &seg)));
    assert_eq!(&out[26..30], &node4.octets());
    assert_eq!(
        &out[34..38],
        &[0x1f, 0x90, 0x9c, 0x40],
        "ports 8080 -> 40000"
    );
    assert_ipv4_csum(&out);
    assert_l4_csum(&out);

    // The pod's port unreachable about the IPv4 flow: outer source and the
    // quoted destination translated back; outer IP, quoted IP and ICMP
    // checksums right.
    let quoted = ipv4(
        ext4,
        pod4,
        TCP,
        &segment(TCP, ext4.into(), pod4.into(), 40000, 80, false)[..8],
    );
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let (_, out) = run(
        &t,
        "to_netdev",
        "up0",
        frame(&ipv4(pod4, ext4, ICMP, &icmp)),
    );
    assert_eq!(&out[26..30], &node4.octets(), "outer source is the node");
    assert_ipv4_csum(&out);
    assert_eq!(csum(&out[34..]), 0, "ICMP checksum");
    let inner = &out[42..];
    assert_eq!(&inner[12..16], &ext4.octets());
    assert_eq!(
        &inner[16..20],
        &node4.octets(),
        "quoted destination is the node"
    );
    assert_eq!(
        &inner[20..24],
        &[0x9c, 0x40, 0x1f, 0x90],
        "quoted ports 40000 -> 8080"
    );
    assert_eq!(csum(&inner[..20]), 0, "quoted IPv4 header checksum");

    // Masquerade, IPv4 UDP without checksum: source becomes nodeIP and a
    // port from the range; the zero checksum stays zero.
    let seg = segment(UDP, pod4.into(), ext4.into(), 5000, 53, true);
    let (_, out) = run(&t, "to_netdev", "up0", frame(&ipv4(pod4, ext4, UDP, &seg)));
    assert_eq!(&out[26..30], &node4.octets());
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!((61000..=65535).contains(&sport), "{sport}");
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum 0 stays 0");
    assert_ipv4_csum(&out);

    // Masquerade, ICMP echo: the identifier is the port; ICMP checksum right.
    let mut echo = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4];
    let c = csum(&echo);
    echo[2..4].copy_from_slice(&c.to_be_bytes());
    let (_, out) = run(
        &t,
        "to_netdev",
        "up0",
        frame(&ipv4(pod4, ext4, ICMP, &echo)),
    );
    assert_eq!(&out[26..30], &node4.octets());
    let id = u16::from_be_bytes([out[38], out[39]]);
    assert!((61000..=65535).contains(&id), "{id}");
    assert_eq!(csum(&out[34..]), 0, "ICMP checksum");
    assert_ipv4_csum(&out);
    // Its reply goes back to the pod with the original identifier.
    let mut reply = vec![0, 0, 0, 0, out[38], out[39], 0, 1, 1, 2, 3, 4];
    let c = csum(&reply);
    reply[2..4].copy_from_slice(&c.to_be_bytes());
    let (_, back) = run(
        &t,
        "from_netdev",
        "up0",
        frame(&ipv4(ext4, node4, ICMP, &reply)),
    );
    assert_eq!(&back[30..34], &pod4.octets());
    assert_eq!(&back[38..40], &[0x12, 0x34]);
    assert_eq!(csum(&back[34..]), 0, "ICMP checksum");

    // Masquerade, IPv6 TCP.
    let seg = segment(TCP, pod6.into(), ext6.into(), 5001, 443, false);
    let (_, out) = run(&t, "to_netdev", "up0", frame(&ipv6(pod6, ext6, TCP, &seg)));
    assert_eq!(&out[22..38], &node6.octets());
    assert_l4_csum(&out);

    // SCTP hostPort (== containerPort): only the address changes; its
    // CRC32c does not cover the IP header, so the SCTP bytes stay as sent.
    let sctp: Vec<u8> = [
        &9132u16.to_be_bytes()[..],
        &9132u16.to_be_bytes(),
        &[0, 0, 0, 7, 0xde, 0xad, 0xbe, 0xef],
        &[1, 0, 0, 4],
    ]
    .concat();
    let (_, out) = run(
        &t,
        "from_netdev",
        "up0",
        frame(&ipv4(ext4, node4, 132, &sctp)),
    );
    assert_eq!(&out[30..34], &pod4.octets());
    assert_eq!(&out[34..], &sctp[..]);
    assert_ipv4_csum(&out);

    // A packet to another destination with the hostPort is not touched.
    let other = v4("198.51.100.7");
    let seg = segment(TCP, ext4.into(), other.into(), 40002, 8080, false);
    let f = frame(&ipv4(ext4, other, TCP, &seg));
    let (_, out) = run(&t, "from_netdev", "up0", f.clone());
    assert_eq!(out, f);

    // A forged source from the pod's veth is dropped (TC_ACT_SHOT).
    let host = res["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().starts_with("veth"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let seg = segment(UDP, ext4.into(), ext4.into(), 1, 2, false);
    let (verdict, _) = run(
        &t,
        "from_container",
        &host,
        frame(&ipv4(v4("10.1.0.99"), ext4, UDP, &seg)),
    );
    assert_eq!(verdict, 2, "TC_ACT_SHOT");
    t.del(&conf, "pod1", Some(&p1), "eth0");
}

/// A mapping bound to 127.0.0.1 or ::1 serves the node only: no packet from
/// outside or from a pod is translated to it, and loopback destinations are
/// never translated for packets at all (CVE-2020-8558), whatever the
/// mapping's hostIP. The node itself reaches it through the socket hooks
/// (tests/nat.rs).
#[test]
fn loopback_mappings_are_never_reached_by_packets() {
    let t = Topo::new("lo");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 8081, "containerPort": 81, "protocol": "tcp", "hostIP": "::1"},
        {"hostPort": 9090, "containerPort": 90, "protocol": "tcp"},
    ]}}));
    let res = t.add(&conf, "pod1", Some(&p1), "eth0");
    let IpAddr::V4(pod4) = result_ip(&res, false) else {
        unreachable!()
    };
    let (node4, ext4, node6, ext6) = (v4(NODE_IP), v4(EXT_IP), v6(NODE_IP6), v6(EXT_IP6));
    let lo4 = v4("127.0.0.1");
    let lo6 = v6("::1");
    let untouched = |prog: &str, dev: &str, f: Vec<u8>, what: &str| {
        let (_, out) = run(&t, prog, dev, f.clone());
        assert_eq!(out, f, "{what}: must be left as it is");
    };
    // From outside: to the loopback-bound ports by loopback or node address,
    // and to a hostIP-any port by loopback.
    for (dst, port) in [(lo4, 8080), (node4, 8080), (lo4, 9090)] {
        let seg = segment(TCP, ext4.into(), dst.into(), 40000, port, false);
        let f = frame(&ipv4(ext4, dst, TCP, &seg));
        untouched("from_netdev", "up0", f, &format!("outside -> {dst}:{port}"));
    }
    for (dst, port) in [(lo6, 8081), (node6, 8081), (lo6, 9090)] {
        let seg = segment(TCP, ext6.into(), dst.into(), 40000, port, false);
        let f = frame(&ipv6(ext6, dst, TCP, &seg));
        untouched(
            "from_netdev",
            "up0",
            f,
            &format!("outside -> [{dst}]:{port}"),
        );
    }
    // From the pod (its own MAC and address, so anti-spoofing lets it by).
    let host = res["interfaces"][1]["name"].as_str().unwrap().to_string();
    let mac: Vec<u8> = res["interfaces"][2]["mac"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    for (dst, port) in [(lo4, 8080), (node4, 8080), (lo4, 9090)] {
        let seg = segment(TCP, pod4.into(), dst.into(), 40000, port, false);
        let mut f = frame(&ipv4(pod4, dst, TCP, &seg));
        f[6..12].copy_from_slice(&mac);
        untouched("from_container", &host, f, &format!("pod -> {dst}:{port}"));
    }
    // The control: the hostIP-any port by node address is translated.
    let seg = segment(TCP, ext4.into(), node4.into(), 40000, 9090, false);
    let (_, out) = run(
        &t,
        "from_netdev",
        "up0",
        frame(&ipv4(ext4, node4, TCP, &seg)),
    );
    assert_eq!(&out[30..34], &pod4.octets(), "control: translated");
    t.del(&conf, "pod1", Some(&p1), "eth0");
}
