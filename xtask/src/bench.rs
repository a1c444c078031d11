//! `cargo xtask bench`: cni-ebpf side by side with the iptables reference
//! (`bridge` + `host-local` + `portmap`, `ipMasq`), on one machine, in
//! namespaces it creates (`ceb*`), at growing numbers of pods.
//!
//! Three configurations, each on its own node namespace with an external
//! client namespace: `reference` (Debian's plugins invoked as a runtime
//! does), `cni-ebpf` (main plugin) and `chained` (cni-ebpf after the
//! reference `bridge`, in `portmap`'s place). Pods are added up to each
//! checkpoint N; every pod has three hostPorts; the last-added pod serves.

use std::{
    ffi::OsString,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    demo::{enter_netns, netns_path, string_values},
    setup,
    sh::{self, cargo, workspace_root, Cmd, Context, Result},
};

const USAGE: &str =
    "usage: cargo xtask bench [--quick] [--n 1,100,500,1000] [--runs 3] [--secs 3] [--cycles 20]

As root: installs iperf3, sockperf and conntrack (and the usual setup), builds the
release binary, then for each configuration (reference bridge+host-local+portmap with
ipMasq, cni-ebpf, cni-ebpf chained after the reference bridge) adds pods up to each N
and measures, for the last-added pod's hostPort and for its pod IP directly:
new TCP connections/s (connect, 1-byte answer, close), TCP request/response p50/p99 and
round trips/s (sockperf, 64 bytes), one-stream throughput (iperf3); masquerade
connections/s from the pod to the external namespace; and ADD/DEL wall time of an extra
pod. Prints a table per N with ratios, writes every sample to target/bench/results.json
and a plot to target/bench/bench.svg (--publish also writes them to docs/bench/, which the
README links).
--quick: N = 1,10, one 1-second run, 5 cycles (what CI runs). A configuration whose
ADD takes more than 10 s stops early, and the table says so.";

/// Everything on disk lives here (bpffs, state, IPAM).
const DIR: &str = "/run/cni-ebpf-bench";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Source of baseline (no NAT) connections, so their TIME_WAIT and conntrack
/// entries never meet the NAT path's.
const EXT_BASE_IP: &str = "192.0.2.3";
/// Ports inside a pod: connection-rate server, sockperf, iperf3.
const CRR_PORT: u16 = 80;
const RR_PORT: u16 = 11111;
const TP_PORT: u16 = 5201;
/// Port of the external server the masquerade figure dials.
const EXT_CRR_PORT: u16 = 9000;
/// One ADD slower than this stops a configuration.
const ADD_LIMIT: Duration = Duration::from_secs(10);
/// The CPU client and server share (cross-CPU wake-ups swamp the figures).
const CPU: usize = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reference,
    Main,
    Chained,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            Kind::Main => "cni-ebpf",
            Kind::Chained => "chained",
        }
    }
}

struct Opts {
    ns: Vec<usize>,
    runs: usize,
    secs: f64,
    cycles: usize,
    quick: bool,
    /// Configurations to run (names); all by default.
    configs: Vec<String>,
    /// Also write the results to docs/bench/ (what the README links).
    publish: bool,
}

/// One configuration's node.
struct Node {
    kind: Kind,
    tag: String,
    plugin: PathBuf,
    pods: Vec<Pod>,
    stopped: Option<String>,
}

struct Pod {
    ns: String,
    id: String,
    ip: Ipv4Addr,
    index: usize,
    result: String,
}

/// Figures of one configuration at one N.
#[derive(Default, Clone)]
struct Figures {
    crr_nat: Vec<f64>,
    crr_base: Vec<f64>,
    rr_nat: Vec<Rr>,
    rr_base: Vec<Rr>,
    tp_nat: Vec<f64>,
    tp_base: Vec<f64>,
    masq: Vec<f64>,
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
    grow_add_ms: Vec<f64>,
    /// Packets the kernel dropped from its per-CPU backlogs (machine-wide,
    /// `/proc/net/softnet_stat`) while this configuration's traffic figures
    /// ran: copies of flooded frames overflow them at a few hundred pods,
    /// and every namespace on the machine shares them.
    backlog_drops: Vec<f64>,
    /// Connections of the connection-rate figures that timed out.
    timeouts: u64,
}

#[derive(Default, Clone, Copy)]
struct Rr {
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
}

pub fn main(args: &[OsString]) -> Result {
    let mut o = Opts {
        ns: vec![1, 100, 500, 1000],
        runs: 3,
        secs: 3.0,
        cycles: 20,
        quick: false,
        configs: vec!["reference".into(), "cni-ebpf".into(), "chained".into()],
        publish: false,
    };
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => {
                o.quick = true;
                o.ns = vec![1, 10];
                o.runs = 1;
                o.secs = 1.0;
                o.cycles = 5;
            }
            "--n" => {
                o.ns = val("--n")?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().map_err(|e| format!("--n: {e}")))
                    .collect::<std::result::Result<_, _>>()?
            }
            "--publish" => o.publish = true,
            "--configs" => {
                o.configs = val("--configs")?
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .collect()
            }
            "--runs" => o.runs = val("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--secs" => o.secs = val("--secs")?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--cycles" => {
                o.cycles = val("--cycles")?
                    .parse()
                    .map_err(|e| format!("--cycles: {e}"))?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("bench: unknown argument {a:?}\n{USAGE}").into()),
        }
    }
    if o.ns.is_empty() || o.ns.windows(2).any(|w| w[0] >= w[1]) || o.ns[0] == 0 {
        return Err("--n wants increasing pod counts, e.g. 1,100,500".into());
    }
    if !sh::is_root() {
        return Err("cargo xtask bench must run as root (namespaces, bpffs, iptables)".into());
    }
    setup::run(false)?;
    setup::ensure_packages(&["iperf3", "sockperf", "conntrack", "util-linux"])?;
    sh::step("build the release binary");
    Cmd::new(cargo())
        .args(["build", "--release", "-p", "cni-ebpf"])
        .dir(workspace_root())
        .run()?;
    let plugin = workspace_root().join("target/release/cni-ebpf");
    cleanup();
    let res = run(&o, &plugin);
    let left = cleanup();
    res?;
    if !left.is_empty() {
        return Err(format!("bench: could not remove {}", left.join(", ")).into());
    }
    Ok(())
}

/// Removes every `ceb*` namespace, the bpffs mounts and the directory.
fn cleanup() -> Vec<String> {
    let list = Cmd::new("ip")
        .args(["netns", "list"])
        .quiet()
        .read()
        .unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with("ceb") {
            let _ = Cmd::new("ip").args(["netns", "del", ns]).quiet().status();
        }
    }
    for k in [Kind::Reference, Kind::Main, Kind::Chained] {
        let bpf = Path::new(DIR).join(k.name()).join("bpf");
        for _ in 0..4 {
            let ok = Cmd::new("umount")
                .arg(&bpf)
                .quiet()
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(DIR);
    let mut left = Vec::new();
    let list = Cmd::new("ip")
        .args(["netns", "list"])
        .quiet()
        .read()
        .unwrap_or_default();
    left.extend(
        list.lines()
            .filter(|l| l.starts_with("ceb"))
            .map(|l| l.to_string()),
    );
    if Path::new(DIR).exists() {
        left.push(DIR.into());
    }
    left
}

fn ip_n(ns: &str, args: &[&str]) -> Result {
    Cmd::new("ip").arg("-n").arg(ns).args(args).quiet().run()
}

fn in_ns(ns: &str, args: &[&str]) -> Cmd {
    Cmd::new("ip").args(["netns", "exec", ns]).args(args)
}

impl Node {
    fn node(&self) -> String {
        format!("{}-node", self.tag)
    }
    fn ext(&self) -> String {
        format!("{}-ext", self.tag)
    }
    fn dir(&self) -> PathBuf {
        Path::new(DIR).join(self.kind.name())
    }

    fn new(kind: Kind, plugin: &Path) -> Result<Self> {
        let tag = format!(
            "ceb{}",
            match kind {
                Kind::Reference => "r",
                Kind::Main => "m",
                Kind::Chained => "c",
            }
        );
        let n = Node {
            kind,
            tag,
            plugin: plugin.to_path_buf(),
            pods: Vec::new(),
            stopped: None,
        };
        let (node, ext) = (n.node(), n.ext());
        for ns in [&node, &ext] {
            Cmd::new("ip").args(["netns", "add", ns]).quiet().run()?;
            ip_n(ns, &["link", "set", "lo", "up"])?;
        }
        ip_n(
            &node,
            &[
                "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &ext,
            ],
        )?;
        ip_n(&node, &["addr", "add", "192.0.2.1/24", "dev", "up0"])?;
        ip_n(&node, &["link", "set", "up0", "up"])?;
        ip_n(&ext, &["addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
        ip_n(
            &ext,
            &["addr", "add", &format!("{EXT_BASE_IP}/24"), "dev", "eth0"],
        )?;
        ip_n(&ext, &["link", "set", "eth0", "up"])?;
        ip_n(&node, &["route", "add", "default", "via", "192.0.2.2"])?;
        ip_n(
            &ext,
            &[
                "route",
                "add",
                "10.244.0.0/16",
                "via",
                "192.0.2.1",
                "src",
                EXT_BASE_IP,
            ],
        )?;
        in_ns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .quiet()
            .run()?;
        // Clients close first: let them reuse ports in TIME_WAIT.
        in_ns(&ext, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
            .quiet()
            .run()?;
        std::fs::create_dir_all(n.dir()).context(|| format!("mkdir {}", n.dir().display()))?;
        Ok(n)
    }

    /// The plugins of the chain, with their stdin, for pod `index`.
    fn chain(&self, index: usize) -> Vec<(PathBuf, String)> {
        let d = self.dir();
        let d = d.display();
        let ipam = format!(
            r#"{{"type":"host-local","ranges":[[{{"subnet":"10.244.0.0/16"}}]],"dataDir":"{d}/ipam"}}"#
        );
        let ports = format!(
            r#""capabilities":{{"portMappings":true}},"runtimeConfig":{{"portMappings":[{{"hostPort":{},"containerPort":{CRR_PORT},"protocol":"tcp"}},{{"hostPort":{},"containerPort":{RR_PORT},"protocol":"tcp"}},{{"hostPort":{},"containerPort":{TP_PORT},"protocol":"tcp"}}]}}"#,
            20000 + index,
            30000 + index,
            40000 + index
        );
        let head = r#""cniVersion":"1.0.0","name":"bench""#;
        let ours = format!(
            r#""pinPath":"{d}/bpf","stateDir":"{d}/state","logFile":"{d}/plugin.log","cgroupPath":"""#
        );
        let refbin = PathBuf::from("/usr/lib/cni");
        let bridge = |masq: bool| {
            format!(
                r#"{{{head},"type":"bridge","bridge":"cni0","isGateway":true,"isDefaultGateway":true,"hairpinMode":true,"ipMasq":{masq},"ipam":{ipam}}}"#
            )
        };
        match self.kind {
            Kind::Reference => vec![
                (refbin.join("bridge"), bridge(true)),
                (
                    refbin.join("portmap"),
                    format!(r#"{{{head},"type":"portmap",{ports}}}"#),
                ),
            ],
            Kind::Main => vec![(
                self.plugin.clone(),
                format!(
                    r#"{{{head},"type":"cni-ebpf","bridge":"cni0","isGateway":true,"isDefaultGateway":true,"ipMasq":true,{ours},"ipam":{ipam},{ports}}}"#
                ),
            )],
            Kind::Chained => vec![
                (refbin.join("bridge"), bridge(false)),
                (
                    self.plugin.clone(),
                    format!(r#"{{{head},"type":"cni-ebpf","ipMasq":true,{ours},{ports}}}"#),
                ),
            ],
        }
    }

    /// Runs the chain for `cmd` as a runtime does; returns the last result
    /// (ADD) and the wall time of the whole chain.
    fn cni(&self, cmd: &str, pod: &Pod, cached: Option<&str>) -> Result<(String, Duration)> {
        let mut plugins = self.chain(pod.index);
        if cmd == "DEL" {
            plugins.reverse();
        }
        let mut prev: Option<String> = if cmd == "DEL" {
            cached.map(str::to_string)
        } else {
            None
        };
        let start = Instant::now();
        for (bin, conf) in plugins {
            let stdin = match &prev {
                Some(p) => format!("{{\"prevResult\":{p},{}", &conf[1..]),
                None => conf,
            };
            let out = Cmd::new(&bin)
                .netns(netns_path(&self.node()))
                .env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", &pod.id)
                .env("CNI_NETNS", netns_path(&pod.ns))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .env_remove("CNI_ARGS")
                .stdin(stdin)
                .quiet()
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "{} {cmd} {}: {}",
                    bin.display(),
                    pod.id,
                    String::from_utf8_lossy(&out.stdout).trim()
                )
                .into());
            }
            if cmd == "ADD" {
                prev = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
        }
        Ok((prev.unwrap_or_default(), start.elapsed()))
    }

    fn new_pod(&self, index: usize) -> Result<Pod> {
        let ns = format!("{}-p{index}", self.tag);
        Cmd::new("ip").args(["netns", "add", &ns]).quiet().run()?;
        ip_n(&ns, &["link", "set", "lo", "up"])?;
        Ok(Pod {
            ns,
            id: format!("bench-{index}"),
            ip: Ipv4Addr::UNSPECIFIED,
            index,
            result: String::new(),
        })
    }

    /// Adds pods until there are `n`; returns each ADD's time (ms).
    fn grow(&mut self, n: usize) -> Result<Vec<f64>> {
        let mut times = Vec::new();
        while self.pods.len() < n && self.stopped.is_none() {
            let mut pod = self.new_pod(self.pods.len())?;
            let (res, took) = self.cni("ADD", &pod, None)?;
            times.push(ms(took));
            pod.ip = pod_ip(&res)?;
            pod.result = res;
            self.pods.push(pod);
            if took > ADD_LIMIT {
                self.stopped = Some(format!(
                    "stopped at {} pods: one ADD took {:.1} s",
                    self.pods.len(),
                    took.as_secs_f64()
                ));
            }
        }
        Ok(times)
    }

    /// ADD/DEL cycles of one extra pod; (ADD ms, DEL ms).
    fn cycles(&self, k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let pod = self.new_pod(9999)?;
        let (mut adds, mut dels) = (Vec::new(), Vec::new());
        for _ in 0..k {
            let (res, a) = self.cni("ADD", &pod, None)?;
            let (_, d) = self.cni("DEL", &pod, Some(&res))?;
            adds.push(ms(a));
            dels.push(ms(d));
        }
        Cmd::new("ip")
            .args(["netns", "del", &pod.ns])
            .quiet()
            .run()?;
        Ok((adds, dels))
    }

    fn flush_conntrack(&self) {
        let _ = in_ns(&self.node(), &["conntrack", "-F"]).quiet().status();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pod_ip(result: &str) -> Result<Ipv4Addr> {
    string_values(result, "address")
        .iter()
        .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| format!("no IPv4 address in {result}").into())
}

extern "C" {
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    let mask: u64 = 1 << cpu;
    // SAFETY: a valid 8-byte mask for the calling thread (pid 0).
    unsafe { sched_setaffinity(0, 8, &mask) };
}

/// A connection-rate server in `ns`: accepts, writes one byte, closes,
/// until `stop`.
fn crr_server(ns: String, port: u16, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns2 = ns.clone();
    let h = thread::spawn(move || {
        pin(CPU);
        let l = enter_netns(&ns2).and_then(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)));
        let l = match l {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        for c in l.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(mut c) = c {
                // Answer, then wait for the client to close first (as
                // netperf's TCP_CRR): TIME_WAIT stays on the client side.
                let _ = c.write_all(b"x");
                let _ = c.read(&mut [0u8; 1]);
            }
        }
    });
    match rx.recv() {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => Err(format!("server in {ns}: {e}").into()),
        Err(_) => Err("server thread died".into()),
    }
}

fn stop_server(stop: &AtomicBool, at: SocketAddr, ns: &str, h: thread::JoinHandle<()>) {
    stop.store(true, Ordering::SeqCst);
    let ns = ns.to_string();
    let _ = thread::spawn(move || {
        let _ = enter_netns(&ns);
        let _ = TcpStream::connect_timeout(&at, Duration::from_secs(1));
    })
    .join();
    let _ = h.join();
}

/// New connections per second from `ns` to `dst` for `secs`, and how many
/// connections timed out (a SYN and its retransmission lost, or no answer
/// within 2 s). A timed-out connection counts in the elapsed time, not in
/// the number made, and the run goes on: the backlogs that drop those
/// packets are shared by every namespace of the machine, so one
/// configuration's floods can cost another one a connection. A run where
/// at least half the attempts time out fails.
fn crr(ns: &str, dst: SocketAddr, secs: f64) -> Result<(f64, u64)> {
    let ns = ns.to_string();
    thread::spawn(move || -> io::Result<(f64, u64)> {
        pin(CPU);
        enter_netns(&ns)?;
        let start = Instant::now();
        let (mut n, mut timeouts) = (0u64, 0u64);
        let mut b = [0u8; 1];
        let timeout = Duration::from_secs(2);
        while start.elapsed().as_secs_f64() < secs {
            let mut once = || -> io::Result<()> {
                let mut s = TcpStream::connect_timeout(&dst, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.read_exact(&mut b)
            };
            match once() {
                Ok(()) => n += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    timeouts += 1;
                    if timeouts >= 3 && timeouts * 2 >= n + timeouts {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("{timeouts} of {} connections timed out", n + timeouts),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((n as f64 / start.elapsed().as_secs_f64(), timeouts))
    })
    .join()
    .map_err(|_| "client thread panicked")?
    .map_err(|e| format!("connections to {dst}: {e}").into())
}

/// sockperf ping-pong (64 bytes) from `ns` to `dst`.
fn rr(ns: &str, dst: SocketAddr, secs: f64) -> Result<Rr> {
    let out = in_ns(
        ns,
        &[
            "taskset",
            "-c",
            &CPU.to_string(),
            "sockperf",
            "ping-pong",
            "--tcp",
            "-i",
            &dst.ip().to_string(),
            "-p",
            &dst.port().to_string(),
            "-m",
            "64",
            "-t",
            &format!("{}", secs.ceil() as u64),
        ],
    )
    .quiet()
    .read()?;
    let num = |key: &str| -> Option<f64> {
        let i = out.find(key)?;
        let rest = out[i + key.len()..].trim_start();
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    let run = num("RunTime=").unwrap_or(secs);
    let recv = num("ReceivedMessages=").ok_or(format!("sockperf output: {out}"))?;
    Ok(Rr {
        // sockperf reports one-way latency (half the round trip).
        p50_us: 2.0 * num("percentile 50.000 =").unwrap_or(0.0),
        p99_us: 2.0 * num("percentile 99.000 =").unwrap_or(0.0),
        per_sec: recv / run,
    })
}

/// iperf3 one stream from `ns` to `dst`, Gbit/s.
fn throughput(ns: &str, dst: SocketAddr, secs: f64) -> Result<f64> {
    let out = in_ns(
        ns,
        &[
            "taskset",
            "-c",
            &CPU.to_string(),
            "iperf3",
            "-c",
            &dst.ip().to_string(),
            "-p",
            &dst.port().to_string(),
            "-t",
            &format!("{}", secs.ceil() as u64),
            "-J",
        ],
    )
    .quiet()
    .read()?;
    // The receiver's figure: "sum_received": {... "bits_per_second": X
    let i = out
        .find("\"sum_received\"")
        .ok_or(format!("iperf3 output: {out}"))?;
    let rest = &out[i..];
    let j = rest
        .find("\"bits_per_second\":")
        .ok_or("iperf3: no bits_per_second")?;
    let v = rest[j + 18..].trim_start();
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '+'))
        .unwrap_or(v.len());
    Ok(v[..end]
        .parse::<f64>()
        .map_err(|e| format!("iperf3: {e}"))?
        / 1e9)
}

/// Starts a daemon in `ns` pinned to the shared CPU; killed on drop.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(ns: &str, args: &[&str]) -> Result<Self> {
        let c = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "taskset", "-c", &CPU.to_string()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context(|| format!("start {args:?} in {ns}"))?;
        thread::sleep(Duration::from_millis(300));
        Ok(Daemon(c))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only the process this bench started, by its PID.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sum of the per-CPU backlog drop counters (second column of
/// `/proc/net/softnet_stat`, hexadecimal).
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

fn measure(node: &Node, o: &Opts, f: &mut Figures) -> Result {
    let drops = backlog_drops();
    let r = measure_traffic(node, o, f);
    f.backlog_drops
        .push(backlog_drops().saturating_sub(drops) as f64);
    r
}

fn measure_traffic(node: &Node, o: &Opts, f: &mut Figures) -> Result {
    let pod = node.pods.last().ok_or("no pod")?;
    let ext = node.ext();
    // hostPorts are 20000/30000/40000 + the pod's index.
    let nat = |base: u16| SocketAddr::new(NODE_IP.into(), base + pod.index as u16);
    let base = |port: u16| SocketAddr::new(pod.ip.into(), port);

    let stop = Arc::new(AtomicBool::new(false));
    let srv = crr_server(pod.ns.clone(), CRR_PORT, stop.clone())?;
    for _ in 0..o.runs {
        node.flush_conntrack();
        let (rate, lost) = crr(&ext, nat(20000), o.secs)?;
        f.crr_nat.push(rate);
        f.timeouts += lost;
        node.flush_conntrack();
        let (rate, lost) = crr(&ext, base(CRR_PORT), o.secs)?;
        f.crr_base.push(rate);
        f.timeouts += lost;
    }
    stop_server(&stop, base(CRR_PORT), &ext, srv);
    {
        let _srv = Daemon::start(
            &pod.ns,
            &["sockperf", "server", "--tcp", "-p", &RR_PORT.to_string()],
        )?;
        for _ in 0..o.runs {
            f.rr_nat.push(rr(&ext, nat(30000), o.secs)?);
            f.rr_base.push(rr(&ext, base(RR_PORT), o.secs)?);
        }
    }
    {
        let _srv = Daemon::start(&pod.ns, &["iperf3", "-s", "-p", &TP_PORT.to_string()])?;
        for _ in 0..o.runs {
            f.tp_nat.push(throughput(&ext, nat(40000), o.secs)?);
            f.tp_base.push(throughput(&ext, base(TP_PORT), o.secs)?);
        }
    }
    // Masquerade: the pod dials a server in the external namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let srv = crr_server(ext.clone(), EXT_CRR_PORT, stop.clone())?;
    let to = SocketAddr::new(EXT_IP.into(), EXT_CRR_PORT);
    for _ in 0..o.runs {
        node.flush_conntrack();
        let (rate, lost) = crr(&pod.ns, to, o.secs)?;
        f.masq.push(rate);
        f.timeouts += lost;
    }
    stop_server(&stop, to, &pod.ns, srv);
    Ok(())
}

/// A figure of a configuration at one N.
type Getter = Box<dyn Fn(&Figures) -> f64>;
/// How a figure is printed.
type Fmt = fn(f64) -> String;

fn f0(v: f64) -> String {
    format!("{v:.0}")
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[i.clamp(1, s.len()) - 1]
}

fn run(o: &Opts, plugin: &Path) -> Result {
    let kinds = [Kind::Reference, Kind::Main, Kind::Chained];
    let mut nodes: Vec<Node> = Vec::new();
    for k in kinds {
        sh::step(&format!("topology: {}", k.name()));
        let mut node = Node::new(k, plugin)?;
        if !o.configs.iter().any(|c| c == k.name()) {
            node.stopped = Some("not selected (--configs)".into());
        }
        nodes.push(node);
    }
    // results[n index][kind index]
    let mut results: Vec<Vec<Option<Figures>>> = Vec::new();
    for (ni, &n) in o.ns.iter().enumerate() {
        let mut row: Vec<Option<Figures>> = vec![None, None, None];
        // Alternate which configuration goes first.
        for j in 0..nodes.len() {
            let ki = (j + ni) % nodes.len();
            let node = &mut nodes[ki];
            if node.stopped.is_some() {
                continue;
            }
            sh::step(&format!("{} at N = {n}", node.kind.name()));
            let mut f = Figures {
                grow_add_ms: node.grow(n)?,
                ..Default::default()
            };
            if node.pods.len() < n {
                println!("{}", node.stopped.clone().unwrap_or_default());
                continue;
            }
            // A failed measurement stops this configuration, not the run:
            // the table says where and why.
            let measured = node.cycles(o.cycles).and_then(|(a, d)| {
                f.add_ms = a;
                f.del_ms = d;
                measure(node, o, &mut f)
            });
            if let Err(e) = measured {
                let why = format!("stopped at {n} pods: {e}");
                println!("{}: {why}", node.kind.name());
                node.stopped = Some(why);
                continue;
            }
            println!(
                "{}: ADD p50 {:.1} ms, DEL p50 {:.1} ms, conn/s hostPort {:.0} pod IP {:.0}",
                node.kind.name(),
                median(&f.add_ms),
                median(&f.del_ms),
                median(&f.crr_nat),
                median(&f.crr_base)
            );
            row[ki] = Some(f);
        }
        results.push(row);
    }
    let report = report(o, &nodes, &results);
    println!("{report}");
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out).context(|| format!("mkdir {}", out.display()))?;
    let json = to_json(o, &nodes, &results);
    let svg = plot(o, &results);
    for dir in std::iter::once(out).chain(o.publish.then(|| workspace_root().join("docs/bench"))) {
        std::fs::create_dir_all(&dir).context(|| format!("mkdir {}", dir.display()))?;
        std::fs::write(dir.join("results.json"), &json).context(|| "write results.json")?;
        std::fs::write(dir.join("bench.svg"), &svg).context(|| "write bench.svg")?;
        std::fs::write(dir.join("report.md"), &report).context(|| "write report.md")?;
        println!("wrote {}/results.json, bench.svg, report.md", dir.display());
    }
    // DEL every pod (also checks that DEL works at scale).
    for node in &nodes {
        for pod in node.pods.iter().rev() {
            node.cni("DEL", pod, Some(&pod.result))?;
        }
    }
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

fn report(o: &Opts, nodes: &[Node], results: &[Vec<Option<Figures>>]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# cargo xtask bench{}\n\nMachine: {}. Median of {} run(s) of {} s; ADD/DEL over {} cycles of an extra pod. \
         Client and server pinned to CPU {CPU}.\n",
        if o.quick { " --quick" } else { "" },
        machine(),
        o.runs,
        o.secs,
        o.cycles
    ));
    for node in nodes {
        if let Some(why) = &node.stopped {
            s.push_str(&format!("\n{}: {why}\n", node.kind.name()));
        }
    }
    let first = |ki: usize| results.first().and_then(|r| r[ki].clone());
    for (ni, n) in o.ns.iter().enumerate() {
        s.push_str(&format!(
            "\n## N = {n}\n\n| figure | reference | cni-ebpf | chained | cni-ebpf ÷ reference |\n| --- | --- | --- | --- | --- |\n"
        ));
        let row = &results[ni];
        let cell = |ki: usize, g: &dyn Fn(&Figures) -> f64, fmt: &dyn Fn(f64) -> String| {
            row[ki].as_ref().map_or("—".to_string(), |f| fmt(g(f)))
        };
        let ratio = |g: &dyn Fn(&Figures) -> f64| match (&row[1], &row[0]) {
            (Some(a), Some(b)) if (g(a) / g(b)).is_finite() => format!("{:.2}", g(a) / g(b)),
            _ => "—".into(),
        };
        let lines: Vec<(&str, Getter, Fmt)> = vec![
            (
                "conn/s via hostPort",
                Box::new(|f: &Figures| median(&f.crr_nat)),
                f0,
            ),
            (
                "conn/s to pod IP (baseline)",
                Box::new(|f: &Figures| median(&f.crr_base)),
                f0,
            ),
            (
                "conn/s hostPort ÷ baseline",
                Box::new(|f: &Figures| median(&f.crr_nat) / median(&f.crr_base)),
                f2,
            ),
            (
                "RR p50 via hostPort (µs)",
                Box::new(|f: &Figures| {
                    median(&f.rr_nat.iter().map(|r| r.p50_us).collect::<Vec<_>>())
                }),
                f1,
            ),
            (
                "RR p99 via hostPort (µs)",
                Box::new(|f: &Figures| {
                    median(&f.rr_nat.iter().map(|r| r.p99_us).collect::<Vec<_>>())
                }),
                f1,
            ),
            (
                "RR p50 to pod IP (µs)",
                Box::new(|f: &Figures| {
                    median(&f.rr_base.iter().map(|r| r.p50_us).collect::<Vec<_>>())
                }),
                f1,
            ),
            (
                "RR/s via hostPort",
                Box::new(|f: &Figures| {
                    median(&f.rr_nat.iter().map(|r| r.per_sec).collect::<Vec<_>>())
                }),
                f0,
            ),
            (
                "RR/s to pod IP",
                Box::new(|f: &Figures| {
                    median(&f.rr_base.iter().map(|r| r.per_sec).collect::<Vec<_>>())
                }),
                f0,
            ),
            (
                "throughput via hostPort (Gbit/s)",
                Box::new(|f: &Figures| median(&f.tp_nat)),
                f2,
            ),
            (
                "throughput to pod IP (Gbit/s)",
                Box::new(|f: &Figures| median(&f.tp_base)),
                f2,
            ),
            (
                "masquerade conn/s",
                Box::new(|f: &Figures| median(&f.masq)),
                f0,
            ),
            (
                "connections timed out (all conn/s figures)",
                Box::new(|f: &Figures| f.timeouts as f64),
                f0,
            ),
            (
                "CPU backlog drops during these figures",
                Box::new(|f: &Figures| f.backlog_drops.iter().sum()),
                f0,
            ),
            (
                "ADD p50 (ms)",
                Box::new(|f: &Figures| median(&f.add_ms)),
                f1,
            ),
            (
                "ADD p95 (ms)",
                Box::new(|f: &Figures| pct(&f.add_ms, 95.0)),
                f1,
            ),
            (
                "ADD p99 (ms)",
                Box::new(|f: &Figures| pct(&f.add_ms, 99.0)),
                f1,
            ),
            (
                "DEL p50 (ms)",
                Box::new(|f: &Figures| median(&f.del_ms)),
                f1,
            ),
            (
                "DEL p95 (ms)",
                Box::new(|f: &Figures| pct(&f.del_ms, 95.0)),
                f1,
            ),
        ];
        for (name, g, fmt) in &lines {
            s.push_str(&format!(
                "| {name} | {} | {} | {} | {} |\n",
                cell(0, g.as_ref(), fmt),
                cell(1, g.as_ref(), fmt),
                cell(2, g.as_ref(), fmt),
                ratio(g.as_ref())
            ));
        }
        // Value at N ÷ value at N=first, for the figures the targets name.
        let vs_first = |ki: usize, g: &dyn Fn(&Figures) -> f64| match (&row[ki], first(ki)) {
            (Some(a), Some(b)) => format!("{:.2}", g(a) / g(&b)),
            _ => "—".into(),
        };
        let crr = |f: &Figures| median(&f.crr_nat);
        let add = |f: &Figures| median(&f.add_ms);
        s.push_str(&format!(
            "| conn/s via hostPort ÷ its N={} value | {} | {} | {} | |\n| ADD p50 ÷ its N={} value | {} | {} | {} | |\n",
            o.ns[0],
            vs_first(0, &crr),
            vs_first(1, &crr),
            vs_first(2, &crr),
            o.ns[0],
            vs_first(0, &add),
            vs_first(1, &add),
            vs_first(2, &add),
        ));
    }
    s
}

fn list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
    format!("[{}]", items.join(","))
}

fn to_json(o: &Opts, nodes: &[Node], results: &[Vec<Option<Figures>>]) -> String {
    let mut out = format!(
        "{{\"machine\":\"{}\",\"runs\":{},\"secs\":{},\"cycles\":{},\"stopped\":{{{}}},\"checkpoints\":[",
        machine(),
        o.runs,
        o.secs,
        o.cycles,
        nodes
            .iter()
            .filter_map(|n| n.stopped.as_ref().map(|s| format!("\"{}\":\"{s}\"", n.kind.name())))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut cps = Vec::new();
    for (ni, n) in o.ns.iter().enumerate() {
        let mut cfgs = Vec::new();
        for (ki, node) in nodes.iter().enumerate() {
            let Some(f) = &results[ni][ki] else { continue };
            let rr = |v: &[Rr]| {
                let items: Vec<String> = v
                    .iter()
                    .map(|r| {
                        format!(
                            "{{\"p50_us\":{:.2},\"p99_us\":{:.2},\"per_sec\":{:.1}}}",
                            r.p50_us, r.p99_us, r.per_sec
                        )
                    })
                    .collect();
                format!("[{}]", items.join(","))
            };
            cfgs.push(format!(
                "\"{}\":{{\"conn_per_sec_hostport\":{},\"conn_per_sec_pod_ip\":{},\"rr_hostport\":{},\"rr_pod_ip\":{},\"gbit_hostport\":{},\"gbit_pod_ip\":{},\"masq_conn_per_sec\":{},\"add_ms\":{},\"del_ms\":{},\"grow_add_ms\":{},\"backlog_drops\":{},\"timeouts\":{}}}",
                node.kind.name(),
                list(&f.crr_nat),
                list(&f.crr_base),
                rr(&f.rr_nat),
                rr(&f.rr_base),
                list(&f.tp_nat),
                list(&f.tp_base),
                list(&f.masq),
                list(&f.add_ms),
                list(&f.del_ms),
                list(&f.grow_add_ms),
                list(&f.backlog_drops),
                f.timeouts
            ));
        }
        cps.push(format!("{{\"n\":{n},{}}}", cfgs.join(",")));
    }
    out.push_str(&cps.join(","));
    out.push_str("]}\n");
    out
}

/// Two panels: connections/s via hostPort, and ADD p50, against N.
fn plot(o: &Opts, results: &[Vec<Option<Figures>>]) -> String {
    let colors = ["#d62728", "#1f77b4", "#2ca02c"];
    let names = [
        "reference (bridge+portmap, iptables)",
        "cni-ebpf",
        "cni-ebpf chained after bridge",
    ];
    let (w, h, pad) = (420.0, 260.0, 50.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * w + 20.0,
        h + 70.0
    );
    let panels: [(&str, Getter); 2] = [
        (
            "new connections/s via hostPort",
            Box::new(|f| median(&f.crr_nat)),
        ),
        (
            "ADD p50 (ms) of one more pod",
            Box::new(|f| median(&f.add_ms)),
        ),
    ];
    for (pi, (title, g)) in panels.iter().enumerate() {
        let x0 = pi as f64 * (w + 20.0);
        let vals: Vec<f64> = results
            .iter()
            .flat_map(|r| r.iter().flatten().map(g))
            .filter(|v| v.is_finite())
            .collect();
        let max = vals.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.1;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"18\" font-size=\"13\">{title}</text>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{}\" y1=\"30\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"{}\" y=\"38\">{max:.0}</text><text x=\"{}\" y=\"{}\">0</text>\n",
            x0 + pad,
            x0 + pad, h, x0 + w, h,
            x0 + pad, x0 + pad, h,
            x0 + 4.0, x0 + 30.0, h
        ));
        let nx = o.ns.len().max(2) - 1;
        let px = |i: usize| x0 + pad + 10.0 + (w - pad - 20.0) * i as f64 / nx as f64;
        let py = |v: f64| h - (h - 30.0) * v / max;
        for (i, n) in o.ns.iter().enumerate() {
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{n}</text>\n",
                px(i),
                h + 15.0
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">pods (N)</text>\n",
            x0 + w / 2.0 + pad / 2.0,
            h + 30.0
        ));
        for ki in 0..3 {
            let pts: Vec<String> = results
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r[ki].as_ref().map(|f| (i, g(f))))
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| format!("{:.1},{:.1}", px(i), py(v)))
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
                colors[ki],
                pts.join(" ")
            ));
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                svg.push_str(&format!(
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{}\"/>\n",
                    colors[ki]
                ));
            }
        }
    }
    for (ki, name) in names.iter().enumerate() {
        let x = 60.0 + ki as f64 * 260.0;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            h + 48.0,
            colors[ki],
            x + 16.0,
            h + 53.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
