//! The node agent (`cni-ebpf agent`), end to end, in a node namespace the
//! test builds: node addresses and uplinks followed without any ADD, lost
//! pins restored, SIGTERM during traffic, and the metrics as promtool and a
//! real Prometheus server read them. The agent runs inside the node
//! namespace (nsenter, which is setns; never `ip netns exec`) and is
//! stopped by its PID, also when a test fails.

mod harness;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use harness::*;
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const METRICS_PORT: u16 = 9641;

/// A running agent (killed by PID on drop).
struct Agent {
    child: Option<Child>,
    node: String,
    log: PathBuf,
}

impl Agent {
    /// Starts `cni-ebpf agent --conf <conf>` in `t`'s node namespace and
    /// waits until it serves /healthz.
    fn start(t: &Topo, conf: &Path) -> Self {
        let log = t
            .dir
            .join(format!("agent-{}.log", Instant::now().elapsed().as_nanos()));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", t.node))
            .arg(BIN)
            .args(["agent", "--conf", conf.to_str().unwrap()])
            .args(["--metrics-address", &format!("127.0.0.1:{METRICS_PORT}")])
            .env_remove("CNI_COMMAND")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn the agent");
        let mut a = Agent {
            child: Some(child),
            node: t.node.clone(),
            log,
        };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = a.get("/healthz") {
                break;
            }
            if let Some(st) = a.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited ({st}): {}", read(&a.log));
            }
            assert!(
                Instant::now() < until,
                "agent not healthy: {}",
                read(&a.log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// GET `path` from the agent: (status, body).
    fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(&self.node, METRICS_PORT, path)
    }

    /// SIGTERM, then the exit code (within 5 s).
    fn term(&mut self) -> i32 {
        // SAFETY: kill of our own child's PID.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let mut c = self.child.take().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                panic!("agent did not stop on SIGTERM: {}", read(&self.log));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTP/1.1 GET to 127.0.0.1:`port` from inside netns `ns`.
fn http_get(ns: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::new(ip("127.0.0.1"), port),
            Duration::from_secs(2),
        )
        .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or("no head")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status")?;
        Ok((code, body.to_string()))
    })
    .join()
    .unwrap()
}

/// Pod `i`'s config: TCP hostPort 18000+i -> 80, UDP 19000+i -> 53.
fn pod_conf(t: &Topo, i: u16) -> Value {
    t.conf(json!({
        "cniVersion": "1.1.0",
        "ipMasq": true,
        "runtimeConfig": {"portMappings": [
            {"hostPort": 18000 + i, "containerPort": 80},
            {"hostPort": 19000 + i, "containerPort": 53, "protocol": "udp"},
        ]},
    }))
}

/// The config the agent follows (the network's, without runtime arguments).
fn agent_conf(t: &Topo) -> PathBuf {
    let mut c = pod_conf(t, 0);
    c.as_object_mut().unwrap().remove("runtimeConfig");
    t.conf_file("agent.conf", &c)
}

/// ADD of pod `i` (as Kubernetes would: K8S_POD_* in CNI_ARGS) with a
/// server on port 80; returns (netns, server).
fn serving_pod(t: &Topo, i: u16) -> (String, TcpServer) {
    let ns = t.pod(&format!("p{i}"));
    let cid = format!("cid{i}aaaaaaaaaaaaaaaaaaaaa");
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{i}");
    let out = t.exec(
        BIN,
        &Call {
            cmd: "ADD",
            cid: &cid,
            netns: Some(format!("/run/netns/{ns}")),
            ifname: "eth0",
            args: Some(&args),
            ..Default::default()
        },
        pod_conf(t, i).to_string().as_bytes(),
    );
    assert_eq!(out.code, 0, "ADD pod {i}: {}{}", out.stdout, out.stderr);
    let srv = TcpServer::start(&ns, "::", 80, &format!("pod{i}"));
    (ns, srv)
}

/// Polls `f` every 10 ms until it returns true; the time it took, or None
/// after `limit`.
fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A quick TCP exchange from `ns` (refused or unanswered within `wait`: Err).
fn quick_get(ns: &str, dst: IpAddr, port: u16, wait: Duration) -> Result<String, String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(dst, port), wait)
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    })
    .join()
    .unwrap()
}

#[test]
fn node_addresses_follow_without_add() {
    let t = Topo::new("agad");
    let (_p1, _s1) = serving_pod(&t, 1);
    let mut agent = Agent::start(&t, &agent_conf(&t));
    assert_reply(&t.ext, ip(NODE_IP), 18001, &format!("pod1 ::ffff:{EXT_IP}"));

    // A second address on the uplink: a hostPort destination within 1 s,
    // with no ADD in between.
    let extra = "192.0.2.10";
    ip_n(
        &t.node,
        &["addr", "add", &format!("{extra}/24"), "dev", "up0", "nodad"],
    );
    let took = time_until(Duration::from_secs(1), || {
        quick_get(&t.ext, ip(extra), 18001, Duration::from_millis(200)).is_ok()
    });
    let took = took.unwrap_or_else(|| panic!("hostPort not served on {extra} within 1 s"));
    println!("address added -> hostPort served on it: {took:?}");
    assert_reply(&t.ext, ip(extra), 18001, &format!("pod1 ::ffff:{EXT_IP}"));

    // Removed: no longer translated (the client's neighbour entry still
    // sends it to the node, which would answer if node_addrs still had it).
    ip_n(
        &t.node,
        &["addr", "del", &format!("{extra}/24"), "dev", "up0"],
    );
    std::thread::sleep(Duration::from_secs(1));
    let r = quick_get(&t.ext, ip(extra), 18001, Duration::from_secs(1));
    assert!(r.is_err(), "{extra} still translated after removal: {r:?}");
    assert_reply(&t.ext, ip(NODE_IP), 18001, &format!("pod1 ::ffff:{EXT_IP}"));

    // An ADD while the agent runs skips the node-wide dumps and says why.
    let (_p2, _s2) = serving_pod(&t, 2);
    let log = read(&t.dir.join("cni.log"));
    let want = format!("kept by the agent (pid {}", agent.pid());
    assert!(log.contains(&want), "ADD did not name the agent: {log}");
    assert_reply(&t.ext, ip(NODE_IP), 18002, &format!("pod2 ::ffff:{EXT_IP}"));
    assert_eq!(agent.term(), 0);
    // Without the agent, ADD does the dumps itself again.
    let (_p3, _s3) = serving_pod(&t, 3);
    let log = read(&t.dir.join("cni.log"));
    assert_eq!(log.matches("kept by the agent").count(), 1, "{log}");
    assert_reply(&t.ext, ip(NODE_IP), 18003, &format!("pod3 ::ffff:{EXT_IP}"));
}

/// A second uplink `up1` (198.51.100.1/24) to namespace `ext2`, holding a
/// default route of its own.
fn second_uplink(t: &Topo, ext2: &str) {
    ip_n(
        &t.node,
        &[
            "link", "add", "up1", "type", "veth", "peer", "name", "eth0", "netns", ext2,
        ],
    );
    ip_n(&t.node, &["addr", "add", "198.51.100.1/24", "dev", "up1"]);
    ip_n(ext2, &["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    ip_n(ext2, &["link", "set", "eth0", "up"]);
    ip_n(&t.node, &["link", "set", "up1", "up"]);
    ip_n(
        &t.node,
        &[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.2",
            "dev",
            "up1",
            "metric",
            "100",
        ],
    );
}

#[test]
fn uplinks_follow_without_add() {
    let t = Topo::new("agup");
    let (p1, _s1) = serving_pod(&t, 1);
    let mut agent = Agent::start(&t, &agent_conf(&t));
    let ext2 = t.pod("ext2");
    // ext2 does not route the pod subnet: only masquerade is answered.
    let _srv2 = TcpServer::start(&ext2, "0.0.0.0", 7000, "ext2");

    second_uplink(&t, &ext2);
    let took = time_until(Duration::from_secs(1), || {
        !t.attached_progs("up1").is_empty()
    });
    let took =
        took.unwrap_or_else(|| panic!("no programs on up1 within 1 s: {}", read(&agent.log)));
    println!("uplink added -> programs attached: {took:?}");
    // hostPort and masquerade through it.
    assert_reply(&ext2, ip("198.51.100.1"), 18001, "pod1 ::ffff:198.51.100.2");
    assert_reply(&p1, ip("198.51.100.2"), 7000, "ext2 198.51.100.1");
    // The masquerade port that flow holds is counted under up1's address.
    let (code, body) = agent.get("/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let in_use: f64 = body
        .lines()
        .find(|l| {
            l.starts_with("cni_ebpf_masquerade_ports_in_use{")
                && l.contains(r#"address="198.51.100.1""#)
                && l.contains(r#"protocol="tcp""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no masquerade ports for 198.51.100.1/tcp in:\n{body}"));
    assert!(in_use >= 1.0, "{in_use}");

    // The first uplink down and up (its default route comes back as DHCP
    // would put it back): attachments are there and work.
    ip_n(&t.node, &["link", "set", "up0", "down"]);
    ip_n(&t.node, &["link", "set", "up0", "up"]);
    ip_n(
        &t.node,
        &["route", "replace", "default", "via", EXT_IP, "dev", "up0"],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        t.attached_progs("up0").len(),
        2,
        "{:?}",
        t.attached_progs("up0")
    );
    assert_reply(&t.ext, ip(NODE_IP), 18001, &format!("pod1 ::ffff:{EXT_IP}"));

    // The second uplink re-created under the same name (a new ifindex).
    ip_n(&t.node, &["link", "del", "up1"]);
    second_uplink(&t, &ext2);
    let took = time_until(Duration::from_secs(1), || {
        quick_get(&p1, ip("198.51.100.2"), 7000, Duration::from_millis(200)).is_ok()
    });
    took.unwrap_or_else(|| panic!("re-created up1 not masqueraded: {}", read(&agent.log)));
    assert_reply(&p1, ip("198.51.100.2"), 7000, "ext2 198.51.100.1");
    assert_reply(&ext2, ip("198.51.100.1"), 18001, "pod1 ::ffff:198.51.100.2");
    assert_eq!(agent.term(), 0);
}

#[test]
fn lost_pins_restored_by_the_agent() {
    let t = Topo::new("agpin");
    let (_p1, _s1) = serving_pod(&t, 1);
    let (_p2, _s2) = serving_pod(&t, 2);
    let conf = agent_conf(&t);
    let mut agent = Agent::start(&t, &conf);
    t.lose_pins();
    let maps = t.dir.join(t.abi_dir()).join("maps/endpoints");
    let took = time_until(Duration::from_secs(5), || {
        maps.exists() && t.cli(None, &["status", "--conf", conf.to_str().unwrap()]).0 == 0
    });
    let took = took.unwrap_or_else(|| panic!("pins not restored: {}", read(&agent.log)));
    println!("pins lost -> restored, status ready: {took:?}");
    println!("agent log:\n{}", read(&agent.log));
    // The old pods run the reloaded programs and serve.
    let new_prog = t.pinned_prog_ids("from_container");
    assert_eq!(new_prog.len(), 1, "{new_prog:?}");
    for i in 1..=2u16 {
        assert_reply(
            &t.ext,
            ip(NODE_IP),
            18000 + i,
            &format!("pod{i} ::ffff:{EXT_IP}"),
        );
    }
    let ins = t.inspect();
    assert_eq!(ins["endpoints"].as_array().unwrap().len(), 2, "{ins}");
    assert_eq!(agent.get("/readyz").unwrap().0, 200);
    assert_eq!(agent.term(), 0);
}

#[test]
fn sigterm_during_traffic_loses_no_request() {
    let t = Topo::new("agterm");
    let (_p1, _s1) = serving_pod(&t, 1);
    let conf = agent_conf(&t);
    let mut agent = Agent::start(&t, &conf);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let want = format!("pod1 ::ffff:{EXT_IP}");
    let looper = {
        let (stop, ok, failed, ext) = (stop.clone(), ok.clone(), failed.clone(), t.ext.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match tcp_get(&ext, ip(NODE_IP), 18001) {
                    Ok(l) if l == want => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.term(), 0, "{}", read(&agent.log));
    std::thread::sleep(Duration::from_millis(500));
    // Restarted (an upgrade or a crash loop looks the same), stopped again.
    let mut again = Agent::start(&t, &conf);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(again.term(), 0);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let errors = looper.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("requests during two agent stops and a start: {ok} ok, {failed} failed");
    assert!(errors.is_empty(), "requests lost: {errors:?}");
    assert!(ok > 20, "too few requests: {ok}");
    let log = read(&agent.log);
    assert!(log.contains("the data path is left as it is"), "{log}");
}

/// URL-encodes a PromQL query.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server in the node namespace on 127.0.0.1:`port`,
/// scraping the agent every second (killed by PID on drop).
struct Prometheus {
    child: Child,
}

impl Prometheus {
    fn start(t: &Topo, port: u16) -> Self {
        let dir = t.dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: cni-ebpf\n    static_configs:\n      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", t.node))
            .arg("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus (Debian package prometheus; cargo xtask setup)");
        Prometheus { child }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the one series a PromQL instant query returns.
fn promql(t: &Topo, port: u16, q: &str) -> Option<f64> {
    let (code, body) = http_get(
        &t.node,
        port,
        &format!("/api/v1/query?query={}", urlencode(q)),
    )
    .ok()?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let r = v["data"]["result"].as_array()?;
    if r.len() != 1 {
        return None;
    }
    r[0]["value"][1].as_str()?.parse().ok()
}

/// to_pod packets of pod `i` as `cni-ebpf inspect` reads them.
fn inspect_to_packets(t: &Topo, i: u16) -> u64 {
    let ins = t.inspect_json(&["counters", "--pod", &format!("default/web-{i}")]);
    let rows = ins["endpoints"]
        .as_array()
        .or(ins.as_array())
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .find_map(|r| r["toPackets"].as_u64())
        .unwrap_or_else(|| panic!("no counters for web-{i}: {ins}"))
}

#[test]
fn metrics_checked_by_promtool_and_scraped_by_prometheus() {
    let t = Topo::new("agmet");
    let (_p1, _s1) = serving_pod(&t, 1);
    let (_p2, _s2) = serving_pod(&t, 2);
    // One failed call for the error series.
    let bad = merged(&pod_conf(&t, 9), json!({"mtu": 10}));
    assert_eq!(
        t.cni("ADD", &bad, "bad", Some(&t.pod("p9")), "eth0")
            .err_code(),
        7
    );
    let agent = Agent::start(&t, &agent_conf(&t));

    // Known traffic: 40 datagrams to pod 1's UDP hostPort, 5 TCP
    // exchanges with pod 2.
    let before = inspect_to_packets(&t, 1);
    for _ in 0..40 {
        in_ns(&t.ext, || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"ping", (NODE_IP, 19001)).unwrap();
        })
        .join()
        .unwrap();
    }
    for _ in 0..5 {
        assert_reply(&t.ext, ip(NODE_IP), 18002, &format!("pod2 ::ffff:{EXT_IP}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = inspect_to_packets(&t, 1);
    assert!(after >= before + 40, "{before} -> {after}");

    let (code, scrape) = agent.get("/metrics").unwrap();
    assert_eq!(code, 200);
    println!("--- scrape of a node with two pods ---\n{scrape}--- end of scrape ---");
    // promtool's linter accepts it.
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    p.stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "cni_ebpf_endpoint_packets_total{namespace=\"default\",pod=\"web-1\",container_id=\"cid1aaaaaaaaaaaaaaaaaaaaa\",interface=\"eth0\",network=\"testnet\",direction=\"to_pod\"}",
        "cni_ebpf_cni_calls_total{command=\"ADD\",result=\"ok\"} 2",
        "cni_ebpf_cni_calls_total{command=\"ADD\",result=\"error\"} 1",
        "cni_ebpf_cni_call_duration_seconds_bucket{command=\"ADD\",result=\"ok\",le=\"+Inf\"} 2",
        "cni_ebpf_map_fill_ratio{map=\"endpoints\"}",
        "cni_ebpf_dropped_packets_total{reason=\"spoofed_ip\"}",
        "cni_ebpf_nat_translations{kind=\"hostport-reply\",state=\"live\"}",
    ] {
        assert!(scrape.contains(want), "scrape lacks {want}");
    }
    assert_eq!(agent.get("/readyz").unwrap(), (200, "ready\n".into()));

    // A real Prometheus scrapes the agent; PromQL returns the counter that
    // inspect reads from the map.
    let prom_port = 19090;
    let _prom = Prometheus::start(&t, prom_port);
    let q =
        "cni_ebpf_endpoint_packets_total{namespace=\"default\",pod=\"web-1\",direction=\"to_pod\"}";
    let mut last = None;
    let took = time_until(Duration::from_secs(30), || {
        last = promql(&t, prom_port, q);
        last == Some(inspect_to_packets(&t, 1) as f64)
    });
    assert!(
        took.is_some(),
        "PromQL {q}: {last:?}, inspect: {}; prometheus log: {}",
        inspect_to_packets(&t, 1),
        read(&t.dir.join("prometheus/log"))
    );
    let v = last.unwrap();
    println!("PromQL {q} = {v} (inspect: {after}, before the traffic: {before})");
    assert!(v >= (before + 40) as f64);
    let q2 = "sum by (pod) (cni_ebpf_endpoint_translated_packets_total{pod=\"web-2\"})";
    let v2 = promql(&t, prom_port, q2).expect("translated packets of web-2");
    assert!(v2 >= 5.0, "{q2} = {v2}");
    let q3 = "cni_ebpf_cni_calls_total{command=\"ADD\",result=\"ok\"}";
    assert_eq!(promql(&t, prom_port, q3), Some(2.0));
}

/// `logFormat: "json"`: one JSON object per line, RFC 3339 times with a
/// zone, and the summary line's fields as fields; text lines start with the
/// same time format.
#[test]
fn log_lines_in_json_and_text_carry_rfc3339_times() {
    let t = Topo::new("aglog");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({"logFormat": "json"}));
    t.add(&conf, "pod1", Some(&p1), "eth0");
    t.del(&conf, "pod1", Some(&p1), "eth0");
    let bad = t.conf(json!({"logFormat": "xml"}));
    assert_eq!(t.cni("ADD", &bad, "pod2", Some(&p1), "eth0").err_code(), 7);
    let text = read(&t.dir.join("cni.log"));
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let rfc3339 = |s: &str| {
        let b = s.as_bytes();
        s.len() >= 24
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && (s.ends_with('Z') || [b'+', b'-'].contains(&b[s.len() - 6]))
    };
    let summaries: Vec<&Value> = lines.iter().filter(|l| l.get("result").is_some()).collect();
    assert_eq!(summaries.len(), 2, "{text}");
    for (s, cmd) in summaries.iter().zip(["ADD", "DEL"]) {
        assert_eq!(s["command"], cmd, "{s}");
        assert_eq!(s["container"], "pod1");
        assert_eq!(s["ifname"], "eth0");
        assert_eq!(s["result"], "ok");
        assert!(s["duration_ms"].as_f64().is_some(), "{s}");
        assert_eq!(s["level"], "INFO");
        assert!(rfc3339(s["time"].as_str().unwrap()), "{s}");
        assert!(s["pid"].as_u64().is_some());
    }
    assert!(lines.len() > 2, "step lines too: {text}");
    // The bad format is an error of the config, logged as text.
    let last = text.lines().last().unwrap();
    assert!(last.contains("result=error code=7"), "{last}");
    assert!(rfc3339(last.split(' ').next().unwrap()), "{last}");
}
