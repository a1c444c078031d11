//! Unit tests of the host-local store, allocator and configuration.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::IpNet;
use serde_json::{json, Value};

use super::*;
use crate::cni::{code, CniError, IpConfig};

/// A unique scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cni-ebpf-host-local-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The conservative mode (an earlier attempt may hold addresses), which
/// most tests exercise.
fn allocate(
    cfg: &HostLocalConfig,
    network: &str,
    id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<IpConfig>, CniError> {
    super::allocate(cfg, network, id, ifname, requested, Attempt::Retry)
}

fn cfg_in(dir: &TempDir, mut ipam: Value) -> HostLocalConfig {
    ipam["dataDir"] = dir.0.to_str().unwrap().into();
    HostLocalConfig::parse(&ipam).unwrap()
}

fn alloc1(cfg: &HostLocalConfig, id: &str) -> IpAddr {
    let r = allocate(cfg, "net", id, "eth0", &[]).unwrap();
    assert_eq!(r.len(), 1);
    r[0].address.addr()
}

fn parse_err(ipam: Value) -> CniError {
    HostLocalConfig::parse(&ipam).unwrap_err()
}

// ---- configuration ----

#[test]
fn legacy_subnet_gets_reference_defaults() {
    let c =
        HostLocalConfig::parse(&json!({"type": "host-local", "subnet": "10.22.0.0/16"})).unwrap();
    assert_eq!(
        c.range_sets,
        vec![vec![Range {
            subnet: "10.22.0.0/16".parse().unwrap(),
            range_start: ip("10.22.0.1"),
            range_end: ip("10.22.255.254"),
            gateway: Some(ip("10.22.0.1")),
        }]]
    );
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert!(c.routes.is_empty());
    assert!(c.dns.is_empty());
}

#[test]
fn dual_stack_ranges_and_ipv6_defaults() {
    let c = HostLocalConfig::parse(&json!({
        "type": "host-local",
        "ranges": [
            [{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24", "gateway": "10.2.0.254"}],
            [{"subnet": "fd00::/64"}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
        "dataDir": "/tmp/x"
    }))
    .unwrap();
    assert_eq!(c.range_sets.len(), 2);
    assert_eq!(c.range_sets[0].len(), 2);
    assert_eq!(c.range_sets[0][1].gateway, Some(ip("10.2.0.254")));
    assert_eq!(c.range_sets[0][1].range_end, ip("10.2.0.254"));
    let v6 = &c.range_sets[1][0];
    assert_eq!(v6.range_start, ip("fd00::1"));
    assert_eq!(v6.range_end, ip("fd00::ffff:ffff:ffff:ffff"));
    assert_eq!(v6.gateway, Some(ip("fd00::1")));
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].gw, Some(ip("fd00::1")));
    assert_eq!(c.routes[0].gw, None);
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn legacy_subnet_comes_before_ranges() {
    let c = HostLocalConfig::parse(&json!({
        "subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.20",
        "gateway": "10.9.0.1",
        "ranges": [[{"subnet": "fd00::/120"}]]
    }))
    .unwrap();
    assert_eq!(c.range_sets.len(), 2);
    assert_eq!(c.range_sets[0][0].range_start, ip("10.9.0.10"));
    assert_eq!(c.range_sets[0][0].range_end, ip("10.9.0.20"));
    assert!(c.range_sets[1][0].subnet.addr().is_ipv6());
}

#[test]
fn null_and_empty_values_count_as_absent() {
    let c = HostLocalConfig::parse(&json!({
        "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "", "rangeStart": null}]],
        "dataDir": "", "resolvConf": "", "routes": null
    }))
    .unwrap();
    assert_eq!(c.range_sets[0][0].gateway, Some(ip("10.0.0.1")));
    assert_eq!(c.range_sets[0][0].range_start, ip("10.0.0.1"));
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
}

#[test]
fn bad_cidr_names_key_and_value() {
    let e = parse_err(json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}));
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(
        e.msg
            .starts_with(r#"invalid ipam.ranges[0][0].subnet "10.0.0.0/33": "#),
        "{}",
        e.msg
    );
    let e = parse_err(json!({"subnet": "nope"}));
    assert!(
        e.msg.starts_with(r#"invalid ipam.subnet "nope""#),
        "{}",
        e.msg
    );
    let e = parse_err(json!({"ranges": [[{"subnet": 5}]]}));
    assert!(e.msg.contains("ipam.ranges[0][0].subnet 5"), "{}", e.msg);
}

#[test]
fn range_start_and_end_must_be_inside_subnet_and_ordered() {
    let e = parse_err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}));
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(
        e.msg.contains(r#"ipam.ranges[0][0].rangeStart "10.0.1.5""#),
        "{}",
        e.msg
    );
    let e = parse_err(json!({"subnet": "10.0.0.0/24", "rangeEnd": "fd00::1"}));
    assert!(e.msg.contains(r#"ipam.rangeEnd "fd00::1""#), "{}", e.msg);
    let e = parse_err(
        json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}),
    );
    assert!(
        e.msg.contains("rangeEnd") && e.msg.contains("before"),
        "{}",
        e.msg
    );
    let e = parse_err(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.255"}));
    assert!(
        e.msg.contains("rangeStart") && e.msg.contains("after"),
        "{}",
        e.msg
    );
    let e = parse_err(json!({"subnet": "10.0.0.0/24", "rangeStart": "banana"}));
    assert!(e.msg.contains(r#"ipam.rangeStart "banana""#), "{}", e.msg);
}

#[test]
fn subnet_shape_checks() {
    for (subnet, why) in [
        ("10.0.0.0/31", "too small"),
        ("10.0.0.0/32", "too small"),
        ("fd00::/127", "too small"),
        ("10.0.0.5/24", "host bits"),
        ("::ffff:10.0.0.0/120", "IPv4-mapped"),
    ] {
        let e = parse_err(json!({"subnet": subnet}));
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains(why), "{subnet}: {}", e.msg);
    }
    let e = parse_err(json!({"subnet": "10.0.0.0/24", "gateway": "fd00::1"}));
    assert!(e.msg.contains("ipam.gateway"), "{}", e.msg);
    // /30 is the smallest usable subnet.
    HostLocalConfig::parse(&json!({"subnet": "10.0.0.0/30"})).unwrap();
}

#[test]
fn overlapping_or_mixed_ranges_rejected() {
    let e = parse_err(json!({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.30"}
    ]]}));
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(
        e.msg.contains("ipam.ranges[0]") && e.msg.contains("overlap"),
        "{}",
        e.msg
    );

    let e = parse_err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}));
    assert!(e.msg.contains("mixed address families"), "{}", e.msg);

    let e = parse_err(json!({"subnet": "10.0.0.0/16", "ranges": [[{"subnet": "10.0.5.0/24"}]]}));
    assert!(e.msg.contains("overlaps"), "{}", e.msg);

    // Non-overlapping ranges of one subnet are fine.
    HostLocalConfig::parse(&json!({"ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.30"}
    ]]}))
    .unwrap();
}

#[test]
fn structural_errors() {
    assert_eq!(
        parse_err(json!({"type": "host-local"})).code,
        code::INVALID_CONFIG
    );
    assert_eq!(parse_err(json!({"ranges": []})).code, code::INVALID_CONFIG);
    assert!(parse_err(json!({"ranges": [[]]}))
        .msg
        .contains("empty range set"));
    assert!(parse_err(json!({"ranges": {}})).msg.contains("ipam.ranges"));
    assert!(parse_err(json!({"ranges": [[{"gateway": "10.0.0.1"}]]}))
        .msg
        .contains("missing ipam.ranges[0][0].subnet"));
    assert!(parse_err(json!("x")).msg.contains("ipam"));
    assert!(parse_err(json!({"subnet": "10.0.0.0/24", "type": 3}))
        .msg
        .contains("ipam.type"));
    assert!(parse_err(json!({"subnet": "10.0.0.0/24", "dataDir": 3}))
        .msg
        .contains("ipam.dataDir"));
    let e = parse_err(json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "10.0.0.0/99"}]}));
    assert!(e.msg.contains("ipam.routes[0].dst"), "{}", e.msg);
    let e = parse_err(json!({"subnet": "10.0.0.0/24", "routes": [{"gw": "10.0.0.1"}]}));
    assert!(e.msg.contains("ipam.routes[0].dst"), "{}", e.msg);
    let e =
        parse_err(json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}));
    assert!(e.msg.contains("ipam.routes[0].gw"), "{}", e.msg);
}

#[test]
fn resolv_conf_is_parsed_like_the_reference() {
    let d = TempDir::new("resolv");
    let path = d.0.join("resolv.conf");
    fs::write(
        &path,
        "# comment\n; also comment\nnameserver 10.0.0.53\n  nameserver fd00::53  \n\
         domain example.com\nsearch a.example b.example\noptions ndots:2 edns0\n\
         nameserver\nsortlist 1.2.3.4\n",
    )
    .unwrap();
    let c = HostLocalConfig::parse(
        &json!({"subnet": "10.0.0.0/24", "resolvConf": path.to_str().unwrap()}),
    )
    .unwrap();
    assert_eq!(c.dns.nameservers, vec!["10.0.0.53", "fd00::53"]);
    assert_eq!(c.dns.domain, "example.com");
    assert_eq!(c.dns.search, vec!["a.example", "b.example"]);
    assert_eq!(c.dns.options, vec!["ndots:2", "edns0"]);

    let e = parse_err(
        json!({"subnet": "10.0.0.0/24", "resolvConf": d.0.join("missing").to_str().unwrap()}),
    );
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.contains("ipam.resolvConf"), "{}", e.msg);
}

// ---- store and allocation ----

#[test]
fn network_name_cannot_escape_data_dir() {
    let d = TempDir::new("names");
    for bad in ["", ".", "..", "a/b", "../x", "/abs"] {
        let e = CniError::from(Store::open(&d.0, bad).unwrap_err());
        assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
    }
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
    assert_eq!(
        allocate(&cfg, "..", "c", "eth0", &[]).unwrap_err().code,
        code::INVALID_CONFIG
    );
    assert_eq!(
        release(&cfg, "a/b", "c", "eth0").unwrap_err().code,
        code::INVALID_CONFIG
    );
}

#[test]
fn sequential_allocation_and_on_disk_format() {
    let d = TempDir::new("format");
    let cfg = cfg_in(&d, json!({"subnet": "10.22.0.0/16"}));
    let r = allocate(&cfg, "net", "ctr-a", "eth0", &[]).unwrap();
    assert_eq!(
        r,
        vec![IpConfig {
            address: "10.22.0.2/16".parse().unwrap(),
            gateway: Some(ip("10.22.0.1")),
            interface: None,
        }]
    );
    assert_eq!(alloc1(&cfg, "ctr-b"), ip("10.22.0.3"));
    let dir = d.0.join("net");
    // Byte-exact: id, CR LF, ifname, nothing else.
    assert_eq!(fs::read(dir.join("10.22.0.2")).unwrap(), b"ctr-a\r\neth0");
    assert_eq!(fs::read(dir.join("10.22.0.3")).unwrap(), b"ctr-b\r\neth0");
    assert_eq!(
        fs::read(dir.join("last_reserved_ip.0")).unwrap(),
        b"10.22.0.3"
    );
    assert!(dir.join("lock").is_file());
    // The gateway is never written.
    assert!(!dir.join("10.22.0.1").exists());
    // The ID is trimmed on write, as the reference does.
    allocate(&cfg, "net", "  ctr-c \n", "eth1", &[]).unwrap();
    assert_eq!(fs::read(dir.join("10.22.0.4")).unwrap(), b"ctr-c\r\neth1");
}

#[test]
fn round_robin_continues_after_release_and_wraps() {
    let d = TempDir::new("rr");
    // Allocatable: .2 .. .6 (.1 is the gateway, .7 broadcast).
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/29"}));
    for (i, want) in ["10.0.0.2", "10.0.0.3", "10.0.0.4"].iter().enumerate() {
        assert_eq!(alloc1(&cfg, &format!("c{i}")), ip(want));
    }
    // Releasing .3 does not make it the next address: round-robin goes on.
    release(&cfg, "net", "c1", "eth0").unwrap();
    assert_eq!(alloc1(&cfg, "c3"), ip("10.0.0.5"));
    assert_eq!(alloc1(&cfg, "c4"), ip("10.0.0.6"));
    // Wraps past the end, skips the gateway (.1) and the taken .2.
    assert_eq!(alloc1(&cfg, "c5"), ip("10.0.0.3"));
    assert_eq!(
        fs::read_to_string(d.0.join("net/last_reserved_ip.0")).unwrap(),
        "10.0.0.3"
    );
    let e = allocate(&cfg, "net", "c6", "eth0", &[]).unwrap_err();
    assert_eq!(e.code, code::IPAM_EXHAUSTED);
}

#[test]
fn round_robin_across_ranges_of_a_set() {
    let d = TempDir::new("rrset");
    let cfg = cfg_in(
        &d,
        json!({"ranges": [[
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
            {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.20", "rangeEnd": "10.1.0.21"}
        ]]}),
    );
    let got: Vec<IpAddr> = (0..4).map(|i| alloc1(&cfg, &format!("c{i}"))).collect();
    assert_eq!(
        got,
        vec![
            ip("10.0.0.10"),
            ip("10.0.0.11"),
            ip("10.1.0.20"),
            ip("10.1.0.21")
        ]
    );
    let r = reserved_by(&cfg, "net", "c2", "eth0").unwrap();
    assert_eq!(r, vec![ip("10.1.0.20")]);
    release(&cfg, "net", "c0", "eth0").unwrap();
    // Wraps from the last range back to the first.
    let r = allocate(&cfg, "net", "c4", "eth0", &[]).unwrap();
    assert_eq!(r[0].address, "10.0.0.10/24".parse::<IpNet>().unwrap());
    assert_eq!(r[0].gateway, Some(ip("10.0.0.1")));
}

#[test]
fn stale_or_garbage_cursor_restarts_at_set_start() {
    let d = TempDir::new("cursor");
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
    let dir = d.0.join("net");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("last_reserved_ip.0"), "192.168.1.1").unwrap();
    assert_eq!(alloc1(&cfg, "a"), ip("10.0.0.2"));
    fs::write(dir.join("last_reserved_ip.0"), "garbage").unwrap();
    assert_eq!(alloc1(&cfg, "b"), ip("10.0.0.3"));
    fs::write(dir.join("last_reserved_ip.0"), "10.0.0.100").unwrap();
    assert_eq!(alloc1(&cfg, "c"), ip("10.0.0.101"));
}

#[test]
fn gateway_is_never_allocated() {
    let d = TempDir::new("gw");
    // Gateway in the middle of the range.
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/29", "gateway": "10.0.0.4"}));
    let got: Vec<IpAddr> = (0..5).map(|i| alloc1(&cfg, &format!("c{i}"))).collect();
    assert_eq!(
        got,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"].map(ip)
    );
    assert_eq!(
        allocate(&cfg, "net", "c9", "eth0", &[]).unwrap_err().code,
        code::IPAM_EXHAUSTED
    );
    // Nor when requested.
    release(&cfg, "net", "c0", "eth0").unwrap();
    let e = allocate(&cfg, "net", "c9", "eth0", &[ip("10.0.0.4")]).unwrap_err();
    assert_eq!(e.code, code::IPAM_UNAVAILABLE);
    assert!(
        e.msg.contains("10.0.0.4") && e.msg.contains("gateway"),
        "{}",
        e.msg
    );
}

#[test]
fn slash_30_exhausts_after_one() {
    let d = TempDir::new("exhaust");
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/30"}));
    assert_eq!(alloc1(&cfg, "a"), ip("10.0.0.2"));
    let e = allocate(&cfg, "net", "b", "eth0", &[]).unwrap_err();
    assert_eq!(e.code, code::IPAM_EXHAUSTED);
    assert_eq!(
        e.msg,
        "no IP addresses available in range set 10.0.0.1-10.0.0.2"
    );
}

#[test]
fn requested_ip() {
    let d = TempDir::new("req");
    let cfg = cfg_in(
        &d,
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}),
    );
    let r = allocate(&cfg, "net", "a", "eth0", &[ip("10.0.0.50")]).unwrap();
    assert_eq!(r[0].address, "10.0.0.50/24".parse::<IpNet>().unwrap());
    assert_eq!(r[1].address, "fd00::2/64".parse::<IpNet>().unwrap());
    assert_eq!(r[1].gateway, Some(ip("fd00::1")));
    assert_eq!(fs::read(d.0.join("net/fd00::2")).unwrap(), b"a\r\neth0");
    // The reference records requested addresses as the cursor too.
    assert_eq!(
        fs::read_to_string(d.0.join("net/last_reserved_ip.0")).unwrap(),
        "10.0.0.50"
    );
    assert_eq!(alloc1_set0(&cfg, "b"), ip("10.0.0.51"));

    // Taken by someone else -> 101 naming the IP; nothing left behind.
    let e = allocate(&cfg, "net", "c", "eth0", &[ip("10.0.0.50")]).unwrap_err();
    assert_eq!(e.code, code::IPAM_UNAVAILABLE);
    assert!(e.msg.contains("10.0.0.50"), "{}", e.msg);
    assert!(reserved_by(&cfg, "net", "c", "eth0").unwrap().is_empty());

    // Outside every range set.
    let e = allocate(&cfg, "net", "c", "eth0", &[ip("192.168.0.1")]).unwrap_err();
    assert_eq!(e.code, code::IPAM_UNAVAILABLE);
    assert!(e.msg.contains("192.168.0.1"), "{}", e.msg);

    // Two in one set.
    let e = allocate(
        &cfg,
        "net",
        "c",
        "eth0",
        &[ip("10.0.0.60"), ip("10.0.0.61")],
    )
    .unwrap_err();
    assert_eq!(e.code, code::IPAM_UNAVAILABLE);

    // One per set, both honoured; IPv4-mapped form is canonicalized.
    let r = allocate(
        &cfg,
        "net",
        "c",
        "eth0",
        &[ip("fd00::99"), ip("::ffff:10.0.0.99")],
    )
    .unwrap();
    assert_eq!(r[0].address.addr(), ip("10.0.0.99"));
    assert_eq!(r[1].address.addr(), ip("fd00::99"));

    // Retrying with the same request returns the same addresses.
    let again = allocate(&cfg, "net", "c", "eth0", &[ip("10.0.0.99")]).unwrap();
    assert_eq!(again, r);
}

fn alloc1_set0(cfg: &HostLocalConfig, id: &str) -> IpAddr {
    allocate(cfg, "net", id, "eth0", &[]).unwrap()[0]
        .address
        .addr()
}

#[test]
fn retried_allocate_returns_the_same_address() {
    let d = TempDir::new("retry");
    let cfg = cfg_in(
        &d,
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/120"}]]}),
    );
    let first = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
    let again = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
    assert_eq!(first, again);
    assert_eq!(all_reservations(&d.0, "net").unwrap().len(), 2);
    // A different interface of the same container is a different owner.
    let other = allocate(&cfg, "net", "a", "eth1", &[]).unwrap();
    assert_ne!(other[0].address, first[0].address);
    assert_eq!(reserved_by(&cfg, "net", "a", "eth0").unwrap().len(), 2);
}

#[test]
fn failure_in_later_set_rolls_back_earlier_sets() {
    let d = TempDir::new("rollback");
    let cfg = cfg_in(
        &d,
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}]]}),
    );
    let a = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
    let e = allocate(&cfg, "net", "b", "eth0", &[]).unwrap_err();
    assert_eq!(e.code, code::IPAM_EXHAUSTED);
    assert!(e.msg.contains("10.1.0.1-10.1.0.2"), "{}", e.msg);
    assert!(reserved_by(&cfg, "net", "b", "eth0").unwrap().is_empty());
    // The other container's addresses are untouched.
    let held = reserved_by(&cfg, "net", "a", "eth0").unwrap();
    assert_eq!(held, vec![a[0].address.addr(), a[1].address.addr()]);
}

#[test]
fn release_is_idempotent_and_does_not_create_dirs() {
    let d = TempDir::new("release");
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
    release(&cfg, "never", "a", "eth0").unwrap();
    assert!(!d.0.join("never").exists());
    assert!(reserved_by(&cfg, "never", "a", "eth0").unwrap().is_empty());
    assert!(all_reservations(&d.0, "never").unwrap().is_empty());

    let a = alloc1(&cfg, "a");
    let b = alloc1(&cfg, "b");
    release(&cfg, "net", "a", "eth0").unwrap();
    release(&cfg, "net", "a", "eth0").unwrap();
    assert!(!d.0.join("net").join(a.to_string()).exists());
    assert!(d.0.join("net").join(b.to_string()).exists());
    // Wrong ifname releases nothing.
    release(&cfg, "net", "b", "eth1").unwrap();
    assert!(d.0.join("net").join(b.to_string()).exists());
    // Non-reservation files are left alone.
    assert!(d.0.join("net/lock").exists());
    assert!(d.0.join("net/last_reserved_ip.0").exists());
}

#[test]
fn first_attempt_skips_held_addresses_and_retry_returns_them() {
    let d = TempDir::new("attempt");
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
    let first = super::allocate(&cfg, "net", "a", "eth0", &[], Attempt::First).unwrap();
    let again = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
    assert_eq!(first, again, "a retry converges on the held address");
    // A first attempt trusts its caller that nothing is held.
    let other = super::allocate(&cfg, "net", "a", "eth0", &[], Attempt::First).unwrap();
    assert_ne!(first[0].address, other[0].address);
}

#[test]
fn release_known_removes_only_named_files_of_the_owner() {
    let d = TempDir::new("known");
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
    let a = alloc1(&cfg, "a");
    let b = alloc1(&cfg, "b");
    // b's address named for a: not a's, left alone.
    release_known(&cfg, "net", "a", "eth0", &[b]).unwrap();
    assert!(d.0.join("net").join(b.to_string()).exists());
    assert!(d.0.join("net").join(a.to_string()).exists());
    release_known(&cfg, "net", "a", "eth0", &[a, ip("10.0.0.200")]).unwrap();
    assert!(!d.0.join("net").join(a.to_string()).exists());
    // Nothing known: every file of the owner, by scanning.
    release_known(&cfg, "net", "b", "eth0", &[]).unwrap();
    assert!(!d.0.join("net").join(b.to_string()).exists());
    release_known(&cfg, "never", "b", "eth0", &[b]).unwrap();
    assert!(!d.0.join("never").exists());
}

#[test]
fn legacy_id_only_files() {
    let d = TempDir::new("legacy");
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
    let dir = d.0.join("net");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("10.0.0.7"), "old-ctr\n").unwrap();
    assert_eq!(
        reserved_by(&cfg, "net", "old-ctr", "eth0").unwrap(),
        vec![ip("10.0.0.7")]
    );
    assert_eq!(
        all_reservations(&d.0, "net").unwrap(),
        vec![(ip("10.0.0.7"), "old-ctr".to_string(), String::new())]
    );
    release(&cfg, "net", "old-ctr", "eth0").unwrap();
    assert!(!dir.join("10.0.0.7").exists());
}

#[test]
fn all_reservations_lists_everything() {
    let d = TempDir::new("all");
    let cfg = cfg_in(
        &d,
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}),
    );
    allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
    allocate(&cfg, "net", "b", "net1", &[]).unwrap();
    let all = all_reservations(&d.0, "net").unwrap();
    assert_eq!(
        all,
        vec![
            (ip("10.0.0.2"), "a".into(), "eth0".into()),
            (ip("10.0.0.3"), "b".into(), "net1".into()),
            (ip("fd00::2"), "a".into(), "eth0".into()),
            (ip("fd00::3"), "b".into(), "net1".into()),
        ]
    );
}

#[test]
fn ipv6_file_names_are_canonical() {
    // Go's net.IP.String (RFC 5952): the first longest run of zero
    // groups is compressed, a single zero group never is.
    let d = TempDir::new("v6names");
    let cfg = cfg_in(
        &d,
        json!({"ranges": [[{"subnet": "fd00:0:0:1::/64", "rangeStart": "fd00:0:0:1:0:a:0:0"}]]}),
    );
    assert_eq!(alloc1(&cfg, "a"), ip("fd00:0:0:1:0:a:0:0"));
    assert!(d.0.join("net/fd00::1:0:a:0:0").is_file());
    assert_eq!(alloc1(&cfg, "b"), ip("fd00:0:0:1:0:a:0:1"));
    assert!(d.0.join("net/fd00::1:0:a:0:1").is_file());
    assert_eq!(
        fs::read_to_string(d.0.join("net/last_reserved_ip.0")).unwrap(),
        "fd00::1:0:a:0:1"
    );
}

#[test]
fn store_holds_an_exclusive_flock_until_dropped() {
    use rustix::fs::{flock, FlockOperation};
    let d = TempDir::new("lock");
    let store = Store::open(&d.0, "net").unwrap();
    // Another open file description of the same lock file, as another
    // process (or the reference binary) would have.
    let other = File::open(d.0.join("net/lock")).unwrap();
    assert_eq!(
        flock(&other, FlockOperation::NonBlockingLockExclusive),
        Err(rustix::io::Errno::WOULDBLOCK)
    );
    // A second Store in another thread waits for the first.
    let opened = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let _s2 = Store::open(&d.0, "net").unwrap();
            opened.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!opened.load(Ordering::SeqCst));
        drop(store);
        h.join().unwrap();
    });
    assert!(opened.load(Ordering::SeqCst));
    flock(&other, FlockOperation::NonBlockingLockExclusive).unwrap();
}

#[test]
fn concurrent_allocations_are_distinct() {
    let d = TempDir::new("concurrent");
    let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
    let got: Vec<IpAddr> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let cfg = &cfg;
                s.spawn(move || alloc1(cfg, &format!("ctr-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<IpAddr> = got.iter().copied().collect();
    assert_eq!(distinct.len(), 32);
    assert_eq!(all_reservations(&d.0, "net").unwrap().len(), 32);
    // Round-robin without holes: exactly .2 ..= .33.
    let want: HashSet<IpAddr> = (2..34).map(|i| ip(&format!("10.0.0.{i}"))).collect();
    assert_eq!(distinct, want);
}

/// Interoperation with the reference binary when it is installed
/// (Debian's containernetworking-plugins); skipped otherwise.
#[test]
fn shares_data_dir_with_reference_host_local() {
    let bin = Path::new("/usr/lib/cni/host-local");
    if !bin.is_file() {
        eprintln!("skipping: {} not installed", bin.display());
        return;
    }
    let d = TempDir::new("interop");
    let ipam = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/29"}], [{"subnet": "fd88::/125"}]],
        "dataDir": d.0.to_str().unwrap()
    });
    let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "x", "ipam": ipam});
    let cfg = HostLocalConfig::parse(&ipam).unwrap();
    let reference = |cmd: &str, id: &str| -> Value {
        let mut child = std::process::Command::new(bin)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "reference {cmd} failed: {s}");
        if s.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&s).unwrap()
        }
    };
    // Reference first, then ours: round-robin continues from its cursor.
    let r = reference("ADD", "ref-1");
    assert_eq!(r["ips"][0]["address"], "10.88.0.2/29");
    assert_eq!(r["ips"][1]["address"], "fd88::2/125");
    let ours = allocate(&cfg, "net", "ours-1", "eth0", &[]).unwrap();
    assert_eq!(ours[0].address.to_string(), "10.88.0.3/29");
    assert_eq!(ours[1].address.to_string(), "fd88::3/125");
    let r = reference("ADD", "ref-2");
    assert_eq!(r["ips"][0]["address"], "10.88.0.4/29");
    assert_eq!(r["ips"][1]["address"], "fd88::4/125");
    // We see the reference's reservations, with its file format.
    assert_eq!(
        reserved_by(&cfg, "net", "ref-2", "eth0").unwrap(),
        vec![ip("10.88.0.4"), ip("fd88::4")]
    );
    // The reference releases ours, we release the reference's.
    reference("DEL", "ours-1");
    assert!(reserved_by(&cfg, "net", "ours-1", "eth0")
        .unwrap()
        .is_empty());
    release(&cfg, "net", "ref-1", "eth0").unwrap();
    assert!(reserved_by(&cfg, "net", "ref-1", "eth0")
        .unwrap()
        .is_empty());
    // Fill the IPv4 set from both sides; nobody gets an address twice.
    for i in 0..2 {
        allocate(&cfg, "net", &format!("ours-f{i}"), "eth0", &[]).unwrap();
        reference("ADD", &format!("ref-f{i}"));
    }
    let v4: Vec<IpAddr> = all_reservations(&d.0, "net")
        .unwrap()
        .into_iter()
        .map(|(ip, _, _)| ip)
        .filter(|ip| ip.is_ipv4())
        .collect();
    assert_eq!(
        v4,
        [
            "10.88.0.2",
            "10.88.0.3",
            "10.88.0.4",
            "10.88.0.5",
            "10.88.0.6"
        ]
        .map(ip)
    );
    assert_eq!(
        allocate(&cfg, "net", "late", "eth0", &[]).unwrap_err().code,
        code::IPAM_EXHAUSTED
    );
}
