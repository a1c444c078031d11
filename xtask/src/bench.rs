//! `cargo xtask bench`: cni-ebpf side by side with the iptables reference
//! (`bridge` + `host-local` + `portmap`, `ipMasq`), on one machine, in
//! namespaces it creates (`ceb*`), at growing numbers of pods.
//!
//! Three configurations, each on its own node namespace with an external
//! client namespace: `reference` (Debian's plugins invoked as a runtime
//! does), `cni-ebpf` (main plugin) and `chained` (cni-ebpf after the
//! reference `bridge`, in `portmap`'s place). Pods are added up to each
//! checkpoint N; every pod has hostPorts; the last-added pod serves. Next to
//! them, the same generator measures the paths no CNI can beat: the **floor**
//! (two namespaces joined by one veth), the **routed** path (client → a plain
//! forwarding namespace → server) and loopback (the generator's own ceiling).

mod gen;
mod sys;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use gen::Mode;

use crate::{
    demo::{netns_path, string_values},
    setup,
    sh::{self, cargo, workspace_root, Cmd, Context, Result},
};

const USAGE: &str =
    "usage: cargo xtask bench [--quick] [--n 1,100,500,1000] [--runs 3] [--secs 3] [--cycles 20]
                          [--configs reference,cni-ebpf,chained] [--publish]

As root: installs iperf3 and conntrack (and the usual setup), builds the release binary
and the traffic generator (gcc), then for each configuration (reference bridge+host-local+
portmap with ipMasq, cni-ebpf, cni-ebpf chained after the reference bridge) adds pods up
to each N and measures, run by run alternating the paths of each figure: new TCP
connections/s (connect, 1-byte answer, close) and CPU time per connection; TCP and UDP
request/response p50/p99 and round trips/s (64 bytes); one-stream throughput (iperf3),
over the hostPort from an external namespace, the pod IP from there, pod to pod, a pod
to its own hostPort (hairpin) and masqueraded from the pod to the external namespace;
ADD/DEL wall time of an extra pod and of a burst of 30 concurrent ADDs; each eBPF
program's cost per packet. At every N the same figures are measured over the floor (one
veth between two namespaces), the routed path (a plain forwarding namespace, no CNI) and
loopback, and every data-path figure is divided by them. Prints a table per N, writes
every sample (with the load average and steal time of its run) to
target/bench/results.json and a plot to target/bench/bench.svg (--publish also writes
them to docs/bench/, which the README links).
--quick: N = 1,10, one 1-second run, 5 cycles (what CI runs). A configuration whose
ADD takes more than 10 s stops early, and the table says so.";

/// Everything on disk lives here (bpffs, state, IPAM).
const DIR: &str = "/run/cni-ebpf-bench";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Source of baseline (no NAT) connections, so their TIME_WAIT and conntrack
/// entries never meet the NAT path's.
const EXT_BASE_IP: &str = "192.0.2.3";
/// Ports inside a pod: connection-rate server, request/response (TCP and
/// UDP), iperf3.
const CRR_PORT: u16 = 80;
const RR_PORT: u16 = 11111;
const TP_PORT: u16 = 5201;
/// Port of the external server the masquerade figure dials.
const EXT_CRR_PORT: u16 = 9000;
/// Every port a server of the bench listens on, kept out of the clients'
/// ephemeral range.
const SERVER_PORTS: &str = "80,5201,9000,11111";
/// One ADD slower than this stops a configuration.
const ADD_LIMIT: Duration = Duration::from_secs(10);
/// The CPU client and server share (cross-CPU wake-ups swamp the figures).
const CPU: usize = 0;
/// Concurrent ADDs of the burst figure.
const BURST: usize = 30;

/// Namespaces of the reference paths: the floor (A dials B over one veth)
/// and the routed path (C dials S through R, which only forwards).
const FLOOR_A: &str = "cebf-a";
const FLOOR_B: &str = "cebf-b";
const ROUTED_C: &str = "cebx-c";
const ROUTED_R: &str = "cebx-r";
const ROUTED_S: &str = "cebx-s";
const FLOOR_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const ROUTED_IP: Ipv4Addr = Ipv4Addr::new(10, 97, 2, 2);

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

impl Opts {
    /// iperf3's duration: at least 5 s after a 1 s warm-up (`-O 1`), except
    /// in `--quick`.
    fn tp_secs(&self) -> (u64, u64) {
        if self.quick {
            (self.secs.ceil() as u64, 0)
        } else {
            (self.secs.ceil().max(5.0) as u64, 1)
        }
    }
}

/// One configuration's node.
struct Node {
    kind: Kind,
    tag: String,
    plugin: PathBuf,
    pods: Vec<Pod>,
    /// The client of the pod-to-pod figures (not counted in N).
    peer: Option<Pod>,
    stopped: Option<String>,
}

struct Pod {
    ns: String,
    id: String,
    ip: Ipv4Addr,
    index: usize,
    result: String,
}

/// One value with the machine's condition during its run.
#[derive(Clone, Copy)]
struct Sample {
    v: f64,
    /// 1-minute load average at the run's start.
    load1: f64,
    /// Share of CPU time stolen by the hypervisor during the run (%).
    steal_pct: f64,
}

/// Figures of one slot (a configuration or the reference paths) at one N.
/// Traffic figures are keyed `metric.path`: metrics `crr` (conn/s), `cpu`
/// (µs of client+server CPU per connection), `rr_p50`/`rr_p99` (µs),
/// `rr_rate` (round trips/s), `urr_*` (the same over UDP), `gbit`; paths
/// `hostport`, `pod_ip`, `pod_pod`, `hairpin`, `masq`, `floor`, `routed`,
/// `lo`.
#[derive(Default, Clone)]
struct Figures {
    s: BTreeMap<String, Vec<Sample>>,
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
    grow_add_ms: Vec<f64>,
    /// Wall time of each of [`BURST`] concurrent ADDs.
    burst_add_ms: Vec<f64>,
    /// Packets the kernel dropped from its per-CPU backlogs (machine-wide,
    /// `/proc/net/softnet_stat`) while this configuration's traffic figures
    /// ran: copies of flooded frames overflow them at a few hundred pods,
    /// and every namespace on the machine shares them.
    backlog_drops: Vec<f64>,
    /// Connections that took 1 s or more (a retransmitted SYN) or failed,
    /// and UDP requests unanswered within 1 s.
    timeouts: u64,
    /// (program, ns per run, runs) while eBPF statistics were on.
    prog_ns: Vec<(String, f64, u64)>,
}

impl Figures {
    fn push(&mut self, key: &str, v: f64, (load1, steal_pct): (f64, f64)) {
        self.s.entry(key.to_string()).or_default().push(Sample {
            v,
            load1,
            steal_pct,
        });
    }
    fn values(&self, key: &str) -> Vec<f64> {
        self.s
            .get(key)
            .map(|v| v.iter().map(|s| s.v).collect())
            .unwrap_or_default()
    }
    fn med(&self, key: &str) -> f64 {
        median(&self.values(key))
    }
    fn all_samples(&self) -> impl Iterator<Item = &Sample> {
        self.s.values().flatten()
    }
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
    if o.runs == 0 || o.secs <= 0.0 {
        return Err("--runs and --secs must be positive".into());
    }
    if !sh::is_root() {
        return Err("cargo xtask bench must run as root (namespaces, bpffs, iptables)".into());
    }
    let started = Instant::now();
    setup::run(false)?;
    setup::ensure_packages(&["iperf3", "conntrack", "util-linux"])?;
    sh::step("build the release binary and the traffic generator");
    Cmd::new(cargo())
        .args(["build", "--release", "-p", "cni-ebpf"])
        .dir(workspace_root())
        .run()?;
    gen::build()?;
    let plugin = workspace_root().join("target/release/cni-ebpf");
    cleanup();
    let res = run(&o, &plugin);
    let left = cleanup();
    res?;
    if !left.is_empty() {
        return Err(format!("bench: could not remove {}", left.join(", ")).into());
    }
    println!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
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

/// Creates namespace `ns` with its loopback up.
fn add_ns(ns: &str) -> Result {
    Cmd::new("ip").args(["netns", "add", ns]).quiet().run()?;
    ip_n(ns, &["link", "set", "lo", "up"])
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
            peer: None,
            stopped: None,
        };
        let (node, ext) = (n.node(), n.ext());
        for ns in [&node, &ext] {
            add_ns(ns)?;
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
        sys::sysctl_in(&node, "net.ipv4.ip_forward", "1")?;
        // Clients close first: let them reuse ports in TIME_WAIT.
        sys::tune_client(&ext)?;
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
            r#""capabilities":{{"portMappings":true}},"runtimeConfig":{{"portMappings":[{{"hostPort":{},"containerPort":{CRR_PORT},"protocol":"tcp"}},{{"hostPort":{},"containerPort":{RR_PORT},"protocol":"tcp"}},{{"hostPort":{},"containerPort":{RR_PORT},"protocol":"udp"}},{{"hostPort":{},"containerPort":{TP_PORT},"protocol":"tcp"}}]}}"#,
            20000 + index,
            30000 + index,
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
        add_ns(&ns)?;
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

    /// Between runs: conntrack and the plugin's `nat` map, both (the
    /// reference has no `nat` map; its NAT state is conntrack).
    fn clear(&self) -> Result {
        sys::flush_conntrack(&self.node());
        if self.kind != Kind::Reference {
            sys::clear_nat(&self.dir().join("bpf"))?;
        }
        Ok(())
    }

    /// A burst of `k` concurrent ADDs of new pods (as a runtime starting
    /// many sandboxes at once); each ADD's wall time (ms). The pods are
    /// deleted afterwards.
    fn burst(&self, k: usize) -> Result<Vec<f64>> {
        let pods = (0..k)
            .map(|i| self.new_pod(9000 + i))
            .collect::<Result<Vec<_>>>()?;
        let res: Vec<Result<(String, Duration)>> = thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .map(|p| s.spawn(move || self.cni("ADD", p, None)))
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("ADD thread panicked".into()))
                })
                .collect()
        });
        let mut times = Vec::new();
        let mut first_err = None;
        for (p, r) in pods.iter().zip(res) {
            match r {
                Ok((out, took)) => {
                    times.push(ms(took));
                    if let Err(e) = self.cni("DEL", p, Some(&out)) {
                        first_err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    let _ = self.cni("DEL", p, None);
                    first_err.get_or_insert(e);
                }
            }
            let _ = Cmd::new("ip").args(["netns", "del", &p.ns]).quiet().run();
        }
        match first_err {
            Some(e) => Err(format!("burst of {k} ADDs: {e}").into()),
            None => Ok(times),
        }
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

/// Creates the reference paths: the floor (`cebf-a` — one veth — `cebf-b`)
/// and the no-CNI routed path (`cebx-c` → `cebx-r`, a namespace that only
/// forwards, with static routes: no bridge, no programs, no iptables →
/// `cebx-s`).
fn reference_paths() -> Result {
    for ns in [FLOOR_A, FLOOR_B, ROUTED_C, ROUTED_R, ROUTED_S] {
        add_ns(ns)?;
    }
    let veth = |a: &str, an: &str, aip: &str, b: &str, bn: &str, bip: &str| -> Result {
        ip_n(
            a,
            &[
                "link", "add", an, "type", "veth", "peer", "name", bn, "netns", b,
            ],
        )?;
        ip_n(a, &["addr", "add", aip, "dev", an])?;
        ip_n(b, &["addr", "add", bip, "dev", bn])?;
        ip_n(a, &["link", "set", an, "up"])?;
        ip_n(b, &["link", "set", bn, "up"])
    };
    veth(
        FLOOR_A,
        "eth0",
        "10.98.0.1/24",
        FLOOR_B,
        "eth0",
        "10.98.0.2/24",
    )?;
    veth(
        ROUTED_C,
        "eth0",
        "10.97.1.2/24",
        ROUTED_R,
        "c0",
        "10.97.1.1/24",
    )?;
    veth(
        ROUTED_R,
        "s0",
        "10.97.2.1/24",
        ROUTED_S,
        "eth0",
        "10.97.2.2/24",
    )?;
    ip_n(ROUTED_C, &["route", "add", "default", "via", "10.97.1.1"])?;
    ip_n(ROUTED_S, &["route", "add", "default", "via", "10.97.2.1"])?;
    sys::sysctl_in(ROUTED_R, "net.ipv4.ip_forward", "1")?;
    for ns in [FLOOR_A, FLOOR_B, ROUTED_C] {
        sys::tune_client(ns)?;
    }
    Ok(())
}

/// One path of a figure: a client namespace dialling `dst`, served in
/// `server` on `lport`.
struct Route {
    name: &'static str,
    client: String,
    server: String,
    lport: u16,
    dst: SocketAddr,
}

fn route(name: &'static str, client: &str, server: &str, lport: u16, dst: SocketAddr) -> Route {
    Route {
        name,
        client: client.into(),
        server: server.into(),
        lport,
        dst,
    }
}

/// `runs` runs of every route, alternating (A B C, then C B A, ...), with
/// conntrack and the `nat` map cleared before each run.
fn alternate(
    o: &Opts,
    mode: Mode,
    routes: &[Route],
    clear: &dyn Fn() -> Result,
    f: &mut Figures,
) -> Result {
    for r in 0..o.runs {
        let mut order: Vec<&Route> = routes.iter().collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for rt in order {
            clear()?;
            let p = sys::Probe::start();
            let out = gen::run(mode, &rt.client, &rt.server, rt.lport, rt.dst, o.secs, CPU)?;
            let env = p.done();
            f.timeouts += out.slow as u64;
            let name = rt.name;
            match mode {
                Mode::Crr => {
                    f.push(&format!("crr.{name}"), out.rate(), env);
                    f.push(&format!("cpu.{name}"), out.cpu_us / out.n, env);
                }
                Mode::Rr | Mode::Urr => {
                    let m = if mode == Mode::Rr { "rr" } else { "urr" };
                    f.push(&format!("{m}_p50.{name}"), out.p50_us, env);
                    f.push(&format!("{m}_p99.{name}"), out.p99_us, env);
                    f.push(&format!("{m}_rate.{name}"), out.rate(), env);
                }
            }
        }
    }
    Ok(())
}

/// iperf3 one stream per route (client namespace, destination), alternating
/// like [`alternate`]; `servers` are the namespaces that need an iperf3
/// server on [`TP_PORT`].
fn alternate_tp(
    o: &Opts,
    servers: &[&str],
    routes: &[(&'static str, String, SocketAddr)],
    clear: &dyn Fn() -> Result,
    f: &mut Figures,
) -> Result {
    let _daemons = servers
        .iter()
        .map(|ns| Daemon::start(ns, &["iperf3", "-s", "-p", &TP_PORT.to_string()]))
        .collect::<Result<Vec<_>>>()?;
    for r in 0..o.runs {
        let mut order: Vec<_> = routes.iter().collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for (name, ns, dst) in order {
            clear()?;
            let p = sys::Probe::start();
            let v = throughput(ns, *dst, o.tp_secs())?;
            f.push(&format!("gbit.{name}"), v, p.done());
        }
    }
    Ok(())
}

/// iperf3 one stream from `ns` to `dst`, Gbit/s; (seconds, omitted seconds).
fn throughput(ns: &str, dst: SocketAddr, (secs, omit): (u64, u64)) -> Result<f64> {
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
            &secs.to_string(),
            "-O",
            &omit.to_string(),
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
    let peer = node.peer.as_ref().ok_or("no peer pod")?;
    let ext = node.ext();
    for ns in [&pod.ns, &peer.ns] {
        sys::tune_client(ns)?;
    }
    // hostPorts are 20000/30000/40000 + the pod's index.
    let nat = |base: u16| SocketAddr::new(NODE_IP.into(), base + pod.index as u16);
    let direct = |port: u16| SocketAddr::new(pod.ip.into(), port);
    let p = &pod.ns;
    let clear = || node.clear();
    let crr = [
        route("hostport", &ext, p, CRR_PORT, nat(20000)),
        route("pod_ip", &ext, p, CRR_PORT, direct(CRR_PORT)),
        route("pod_pod", &peer.ns, p, CRR_PORT, direct(CRR_PORT)),
        route("hairpin", p, p, CRR_PORT, nat(20000)),
        route(
            "masq",
            p,
            &ext,
            EXT_CRR_PORT,
            SocketAddr::new(EXT_IP.into(), EXT_CRR_PORT),
        ),
    ];
    alternate(o, Mode::Crr, &crr, &clear, f)?;
    let rr = [
        route("hostport", &ext, p, RR_PORT, nat(30000)),
        route("pod_ip", &ext, p, RR_PORT, direct(RR_PORT)),
        route("pod_pod", &peer.ns, p, RR_PORT, direct(RR_PORT)),
        route("hairpin", p, p, RR_PORT, nat(30000)),
    ];
    alternate(o, Mode::Rr, &rr, &clear, f)?;
    alternate(o, Mode::Urr, &rr[..2], &clear, f)?;
    alternate_tp(
        o,
        &[p],
        &[
            ("hostport", ext.clone(), nat(40000)),
            ("pod_ip", ext.clone(), direct(TP_PORT)),
        ],
        &clear,
        f,
    )?;
    if node.kind != Kind::Reference {
        f.prog_ns = prog_costs(node, o, &crr, &rr)?;
    }
    Ok(())
}

/// Each TC program's cost per run (ns), with eBPF statistics on only for
/// this: one run of the hostPort, masquerade and pod-to-pod connection
/// figures and of the hostPort request/response.
fn prog_costs(
    node: &Node,
    o: &Opts,
    crr: &[Route],
    rr: &[Route],
) -> Result<Vec<(String, f64, u64)>> {
    let pin = node.dir().join("bpf");
    let stats = sys::BpfStats::enable()?;
    let before = sys::prog_stats(&pin);
    let mut scratch = Figures::default();
    let chosen: Vec<Route> = crr
        .iter()
        .filter(|r| matches!(r.name, "hostport" | "masq" | "pod_pod"))
        .map(|r| route(r.name, &r.client, &r.server, r.lport, r.dst))
        .collect();
    let once = Opts {
        ns: Vec::new(),
        runs: 1,
        configs: Vec::new(),
        ..*o
    };
    let r = alternate(&once, Mode::Crr, &chosen, &|| node.clear(), &mut scratch)
        .and_then(|_| alternate(&once, Mode::Rr, &rr[..1], &|| node.clear(), &mut scratch));
    let after = sys::prog_stats(&pin);
    drop(stats);
    r?;
    Ok(after
        .iter()
        .map(|(name, ns, cnt)| {
            let (ns0, cnt0) = before
                .iter()
                .find(|b| &b.0 == name)
                .map_or((0, 0), |b| (b.1, b.2));
            let runs = cnt.saturating_sub(cnt0);
            let per = if runs == 0 {
                f64::NAN
            } else {
                ns.saturating_sub(ns0) as f64 / runs as f64
            };
            (name.clone(), per, runs)
        })
        .collect())
}

/// The reference paths' figures: the same generator, pinning and
/// alternation as the configurations'.
fn measure_paths(o: &Opts, f: &mut Figures) -> Result {
    let clear = || {
        sys::flush_conntrack(ROUTED_R);
        Ok(())
    };
    let floor = |port: u16| SocketAddr::new(FLOOR_IP.into(), port);
    let routed = |port: u16| SocketAddr::new(ROUTED_IP.into(), port);
    let lo = |port: u16| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let routes = |port: u16| {
        [
            route("floor", FLOOR_A, FLOOR_B, port, floor(port)),
            route("routed", ROUTED_C, ROUTED_S, port, routed(port)),
            route("lo", FLOOR_B, FLOOR_B, port, lo(port)),
        ]
    };
    alternate(o, Mode::Crr, &routes(CRR_PORT), &clear, f)?;
    alternate(o, Mode::Rr, &routes(RR_PORT), &clear, f)?;
    alternate(o, Mode::Urr, &routes(RR_PORT)[..2], &clear, f)?;
    alternate_tp(
        o,
        &[FLOOR_B, ROUTED_S],
        &[
            ("floor", FLOOR_A.to_string(), floor(TP_PORT)),
            ("routed", ROUTED_C.to_string(), routed(TP_PORT)),
        ],
        &clear,
        f,
    )
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
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
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

impl Node {
    /// Adds the client pod of the pod-to-pod figures, once.
    fn ensure_peer(&mut self) -> Result {
        if self.peer.is_some() {
            return Ok(());
        }
        let mut pod = self.new_pod(9998)?;
        let (res, _) = self.cni("ADD", &pod, None)?;
        pod.ip = pod_ip(&res)?;
        pod.result = res;
        self.peer = Some(pod);
        Ok(())
    }
}

/// Index of the reference paths' figures in a row of results.
const PATHS: usize = 3;

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
    sh::step("topology: floor and routed paths");
    reference_paths()?;
    // results[n index][slot]: the three configurations, then the paths.
    let mut results: Vec<Vec<Option<Figures>>> = Vec::new();
    for (ni, &n) in o.ns.iter().enumerate() {
        let mut row: Vec<Option<Figures>> = vec![None; 4];
        // Alternate which slot goes first.
        for j in 0..4 {
            let ki = (j + ni) % 4;
            if ki == PATHS {
                sh::step(&format!("floor, routed and loopback at N = {n}"));
                let mut f = Figures::default();
                match measure_paths(o, &mut f) {
                    Ok(()) => {
                        println!(
                            "paths: conn/s floor {:.0} routed {:.0} loopback {:.0}; TCP RR p50 floor {:.1} routed {:.1} µs",
                            f.med("crr.floor"),
                            f.med("crr.routed"),
                            f.med("crr.lo"),
                            f.med("rr_p50.floor"),
                            f.med("rr_p50.routed")
                        );
                        row[PATHS] = Some(f);
                    }
                    Err(e) => println!("reference paths at {n}: {e}"),
                }
                continue;
            }
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
            let measured = node.ensure_peer().and_then(|_| {
                let node = &*node;
                let (a, d) = node.cycles(o.cycles)?;
                f.add_ms = a;
                f.del_ms = d;
                f.burst_add_ms = node.burst(BURST)?;
                measure(node, o, &mut f)
            });
            if let Err(e) = measured {
                let why = format!("stopped at {n} pods: {e}");
                println!("{}: {why}", node.kind.name());
                node.stopped = Some(why);
                continue;
            }
            println!(
                "{}: ADD p50 {:.1} ms, burst ADD p99 {:.1} ms, conn/s hostPort {:.0} pod IP {:.0} masquerade {:.0}",
                node.kind.name(),
                median(&f.add_ms),
                pct(&f.burst_add_ms, 99.0),
                f.med("crr.hostport"),
                f.med("crr.pod_ip"),
                f.med("crr.masq"),
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
        for pod in node.pods.iter().rev().chain(node.peer.iter()) {
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

/// Median, with (min–max) when the runs differ.
fn spread(v: &[f64], fmt: Fmt) -> String {
    if v.is_empty() || v.iter().all(|x| !x.is_finite()) {
        return "—".into();
    }
    let m = median(v);
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if v.len() > 1 && fmt(lo) != fmt(hi) {
        format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi))
    } else {
        fmt(m)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if (a / b).is_finite() {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

/// Traffic rows: (label, metric, path, format).
const PATH_ROWS: &[(&str, &str, &str, Fmt)] = &[
    (
        "conn/s via hostPort (external → node)",
        "crr",
        "hostport",
        f0,
    ),
    ("conn/s to pod IP (external → pod)", "crr", "pod_ip", f0),
    ("conn/s pod → pod", "crr", "pod_pod", f0),
    (
        "conn/s hairpin (pod → its own hostPort)",
        "crr",
        "hairpin",
        f0,
    ),
    ("masquerade conn/s (pod → external)", "crr", "masq", f0),
    ("CPU µs per connection via hostPort", "cpu", "hostport", f1),
    ("CPU µs per connection to pod IP", "cpu", "pod_ip", f1),
    ("CPU µs per masqueraded connection", "cpu", "masq", f1),
    ("TCP RR p50 via hostPort (µs)", "rr_p50", "hostport", f1),
    ("TCP RR p99 via hostPort (µs)", "rr_p99", "hostport", f1),
    ("TCP RR p50 to pod IP (µs)", "rr_p50", "pod_ip", f1),
    ("TCP RR p99 to pod IP (µs)", "rr_p99", "pod_ip", f1),
    ("TCP RR p50 pod → pod (µs)", "rr_p50", "pod_pod", f1),
    ("TCP RR p50 hairpin (µs)", "rr_p50", "hairpin", f1),
    ("TCP RR/s via hostPort", "rr_rate", "hostport", f0),
    ("TCP RR/s to pod IP", "rr_rate", "pod_ip", f0),
    ("UDP RR p50 via hostPort (µs)", "urr_p50", "hostport", f1),
    ("UDP RR p99 via hostPort (µs)", "urr_p99", "hostport", f1),
    ("UDP RR p50 to pod IP (µs)", "urr_p50", "pod_ip", f1),
    ("throughput via hostPort (Gbit/s)", "gbit", "hostport", f2),
    ("throughput to pod IP (Gbit/s)", "gbit", "pod_ip", f2),
];

/// Ratio rows: (label, metric, path).
const RATIO_ROWS: &[(&str, &str, &str)] = &[
    ("conn/s via hostPort", "crr", "hostport"),
    ("conn/s to pod IP", "crr", "pod_ip"),
    ("conn/s pod → pod", "crr", "pod_pod"),
    ("conn/s hairpin", "crr", "hairpin"),
    ("masquerade conn/s", "crr", "masq"),
    ("CPU per connection via hostPort", "cpu", "hostport"),
    ("CPU per masqueraded connection", "cpu", "masq"),
    ("TCP RR p50 via hostPort", "rr_p50", "hostport"),
    ("TCP RR p50 to pod IP", "rr_p50", "pod_ip"),
    ("TCP RR p50 pod → pod", "rr_p50", "pod_pod"),
    ("TCP RR p50 hairpin", "rr_p50", "hairpin"),
    ("UDP RR p50 via hostPort", "urr_p50", "hostport"),
    ("UDP RR p50 to pod IP", "urr_p50", "pod_ip"),
    ("throughput via hostPort", "gbit", "hostport"),
    ("throughput to pod IP", "gbit", "pod_ip"),
];

fn report(o: &Opts, nodes: &[Node], results: &[Vec<Option<Figures>>]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# cargo xtask bench{}\n\nMachine: {}. Median (min–max) of {} run(s) of {} s per path, the paths of each figure \
         alternated run by run; iperf3 {} s{}; ADD/DEL over {} cycles of an extra pod, and a burst of {BURST} concurrent \
         ADDs. Client and server pinned to CPU {CPU}. floor: two namespaces joined by one veth; routed: client → a \
         forwarding namespace (static routes, no bridge, no programs, no iptables) → server; both measured at every N \
         with the same generator, pinning and alternation.\n",
        if o.quick { " --quick" } else { "" },
        machine(),
        o.runs,
        o.secs,
        o.tp_secs().0,
        if o.tp_secs().1 > 0 { " after a 1 s warm-up (-O 1)" } else { "" },
        o.cycles
    ));
    for node in nodes {
        if let Some(why) = &node.stopped {
            s.push_str(&format!("\n{}: {why}\n", node.kind.name()));
        }
    }
    let first = |ki: usize| results.first().and_then(|r| r[ki].clone());
    for (ni, n) in o.ns.iter().enumerate() {
        let row = &results[ni];
        let paths = row[PATHS].as_ref();
        s.push_str(&format!("\n## N = {n}\n\n"));
        if let Some(p) = paths {
            s.push_str(&format!(
                "Generator ceiling at this checkpoint (same generator, same CPU): loopback {} conn/s, TCP RR p50 {} µs; \
                 floor {} conn/s, {} µs; routed {} conn/s, {} µs.\n\n",
                f0(p.med("crr.lo")),
                f1(p.med("rr_p50.lo")),
                f0(p.med("crr.floor")),
                f1(p.med("rr_p50.floor")),
                f0(p.med("crr.routed")),
                f1(p.med("rr_p50.routed")),
            ));
        }
        s.push_str(
            "| figure | reference | cni-ebpf | chained | floor | routed | cni-ebpf ÷ reference |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for (label, metric, path, fmt) in PATH_ROWS {
            let key = format!("{metric}.{path}");
            let c = |ki: usize| {
                row[ki]
                    .as_ref()
                    .map_or("—".to_string(), |f| spread(&f.values(&key), *fmt))
            };
            let b = |which: &str| {
                paths.map_or("—".to_string(), |p| {
                    spread(&p.values(&format!("{metric}.{which}")), *fmt)
                })
            };
            let r = match (&row[1], &row[0]) {
                (Some(a), Some(b)) => ratio(a.med(&key), b.med(&key)),
                _ => "—".into(),
            };
            s.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {} | {r} |\n",
                c(0),
                c(1),
                c(2),
                b("floor"),
                b("routed")
            ));
        }
        let others: Vec<(&str, Getter, Fmt)> = vec![
            (
                "connections ≥ 1 s or failed, UDP requests lost",
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
            (
                "burst of 30 concurrent ADDs: p50 (ms)",
                Box::new(|f: &Figures| median(&f.burst_add_ms)),
                f1,
            ),
            (
                "burst of 30 concurrent ADDs: p99 (ms)",
                Box::new(|f: &Figures| pct(&f.burst_add_ms, 99.0)),
                f1,
            ),
        ];
        for (name, g, fmt) in &others {
            let c = |ki: usize| row[ki].as_ref().map_or("—".to_string(), |f| fmt(g(f)));
            let r = match (&row[1], &row[0]) {
                (Some(a), Some(b)) => ratio(g(a), g(b)),
                _ => "—".into(),
            };
            s.push_str(&format!(
                "| {name} | {} | {} | {} | | | {r} |\n",
                c(0),
                c(1),
                c(2)
            ));
        }
        let env = |ki: usize| -> (String, String) {
            row[ki].as_ref().map_or(("—".into(), "—".into()), |f| {
                let l: Vec<f64> = f.all_samples().map(|x| x.load1).collect();
                let st: Vec<f64> = f.all_samples().map(|x| x.steal_pct).collect();
                let lo = l.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let smax = st.iter().cloned().fold(0.0, f64::max);
                if l.is_empty() {
                    ("—".into(), "—".into())
                } else {
                    (format!("{lo:.2}–{hi:.2}"), format!("{smax:.1}"))
                }
            })
        };
        let e: Vec<(String, String)> = (0..4).map(env).collect();
        s.push_str(&format!(
            "| load average (1 min) at the runs' start | {} | {} | {} | {} | | |\n| steal % (max over the runs) | {} | {} | {} | {} | | |\n",
            e[0].0, e[1].0, e[2].0, e[3].0, e[0].1, e[1].1, e[2].1, e[3].1
        ));
        // Value at N ÷ value at N=first, for the figures the targets name.
        let vs_first = |ki: usize, g: &dyn Fn(&Figures) -> f64| match (&row[ki], first(ki)) {
            (Some(a), Some(b)) => ratio(g(a), g(&b)),
            _ => "—".into(),
        };
        let crr = |f: &Figures| f.med("crr.hostport");
        let add = |f: &Figures| median(&f.add_ms);
        s.push_str(&format!(
            "| conn/s via hostPort ÷ its N={} value | {} | {} | {} | | | |\n| ADD p50 ÷ its N={} value | {} | {} | {} | | | |\n",
            o.ns[0],
            vs_first(0, &crr),
            vs_first(1, &crr),
            vs_first(2, &crr),
            o.ns[0],
            vs_first(0, &add),
            vs_first(1, &add),
            vs_first(2, &add),
        ));
        // Every data-path figure against its own pod-IP path, the routed path
        // and the floor (medians of this checkpoint).
        s.push_str(
            "\nRatios of medians, each cell `÷ own pod IP / ÷ routed / ÷ floor` (rates: above 1 is faster; latencies and CPU: below 1 is faster):\n\n\
             | figure | reference | cni-ebpf | chained |\n| --- | --- | --- | --- |\n",
        );
        for (label, metric, path) in RATIO_ROWS {
            let key = format!("{metric}.{path}");
            let cell = |ki: usize| -> String {
                let Some(f) = &row[ki] else {
                    return "—".into();
                };
                let v = f.med(&key);
                let own = if *path == "pod_ip" {
                    "—".to_string()
                } else {
                    ratio(v, f.med(&format!("{metric}.pod_ip")))
                };
                let base = |w: &str| {
                    paths.map_or("—".into(), |p| ratio(v, p.med(&format!("{metric}.{w}"))))
                };
                format!("{own} / {} / {}", base("routed"), base("floor"))
            };
            s.push_str(&format!(
                "| {label} | {} | {} | {} |\n",
                cell(0),
                cell(1),
                cell(2)
            ));
        }
        // Per-packet cost of each program.
        let progs: Vec<String> = [1, 2]
            .iter()
            .filter_map(|&ki| row[ki].as_ref())
            .flat_map(|f| f.prog_ns.iter().map(|p| p.0.clone()))
            .fold(Vec::new(), |mut v, p| {
                if !v.contains(&p) {
                    v.push(p);
                }
                v
            });
        if !progs.is_empty() {
            s.push_str(
                "\neBPF programs, ns per run (runs counted), statistics on only while one run of the hostPort, masquerade and pod → pod connection figures and the hostPort RR ran:\n\n\
                 | program | cni-ebpf | chained |\n| --- | --- | --- |\n",
            );
            for p in &progs {
                let c = |ki: usize| {
                    row[ki]
                        .as_ref()
                        .and_then(|f| f.prog_ns.iter().find(|x| &x.0 == p))
                        .map_or("—".to_string(), |x| format!("{} ({})", f0(x.1), x.2))
                };
                s.push_str(&format!("| {p} | {} | {} |\n", c(1), c(2)));
            }
        }
    }
    s
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

fn list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| num(*x)).collect();
    format!("[{}]", items.join(","))
}

fn figures_json(f: &Figures) -> String {
    let samples: Vec<String> =
        f.s.iter()
            .map(|(k, v)| {
                let items: Vec<String> = v
                    .iter()
                    .map(|x| {
                        format!(
                            "{{\"v\":{},\"load1\":{},\"steal_pct\":{}}}",
                            num(x.v),
                            num(x.load1),
                            num(x.steal_pct)
                        )
                    })
                    .collect();
                format!("\"{k}\":[{}]", items.join(","))
            })
            .collect();
    let progs: Vec<String> = f
        .prog_ns
        .iter()
        .map(|(p, ns, runs)| format!("\"{p}\":{{\"ns_per_run\":{},\"runs\":{runs}}}", num(*ns)))
        .collect();
    format!(
        "{{\"samples\":{{{}}},\"add_ms\":{},\"del_ms\":{},\"grow_add_ms\":{},\"burst_add_ms\":{},\"backlog_drops\":{},\"timeouts\":{},\"prog_ns\":{{{}}}}}",
        samples.join(","),
        list(&f.add_ms),
        list(&f.del_ms),
        list(&f.grow_add_ms),
        list(&f.burst_add_ms),
        list(&f.backlog_drops),
        f.timeouts,
        progs.join(",")
    )
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
        for (ki, f) in results[ni].iter().enumerate() {
            let Some(f) = f else { continue };
            let name = nodes.get(ki).map_or("paths", |n| n.kind.name());
            cfgs.push(format!("\"{name}\":{}", figures_json(f)));
        }
        cps.push(format!("{{\"n\":{n},{}}}", cfgs.join(",")));
    }
    out.push_str(&cps.join(","));
    out.push_str("]}\n");
    out
}

/// Two panels against N: connections/s via hostPort (with the routed path
/// and the floor), and ADD p50.
fn plot(o: &Opts, results: &[Vec<Option<Figures>>]) -> String {
    let (w, h, pad) = (420.0, 260.0, 50.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * w + 20.0,
        h + 90.0
    );
    // (legend, colour, slot, figure)
    type Series = (&'static str, &'static str, usize, Getter);
    let crr = |key: &'static str| -> Getter { Box::new(move |f: &Figures| f.med(key)) };
    let add = || -> Getter { Box::new(|f: &Figures| median(&f.add_ms)) };
    let panels: [(&str, Vec<Series>); 2] = [
        (
            "new connections/s via hostPort",
            vec![
                (
                    "reference (bridge+portmap, iptables)",
                    "#d62728",
                    0,
                    crr("crr.hostport"),
                ),
                ("cni-ebpf", "#1f77b4", 1, crr("crr.hostport")),
                (
                    "cni-ebpf chained after bridge",
                    "#2ca02c",
                    2,
                    crr("crr.hostport"),
                ),
                ("routed path, no CNI", "#7f7f7f", PATHS, crr("crr.routed")),
                ("floor (one veth)", "#000000", PATHS, crr("crr.floor")),
            ],
        ),
        (
            "ADD p50 (ms) of one more pod",
            vec![
                ("", "#d62728", 0, add()),
                ("", "#1f77b4", 1, add()),
                ("", "#2ca02c", 2, add()),
            ],
        ),
    ];
    for (pi, (title, series)) in panels.iter().enumerate() {
        let x0 = pi as f64 * (w + 20.0);
        let vals: Vec<f64> = series
            .iter()
            .flat_map(|(_, _, slot, g)| {
                results.iter().filter_map(move |r| r[*slot].as_ref().map(g))
            })
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
        for (_, color, slot, g) in series {
            let pts: Vec<String> = results
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r[*slot].as_ref().map(|f| (i, g(f))))
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| format!("{:.1},{:.1}", px(i), py(v)))
                .collect();
            let dash = if *slot == PATHS {
                " stroke-dasharray=\"5,3\""
            } else {
                ""
            };
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
                pts.join(" ")
            ));
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                svg.push_str(&format!(
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>\n"
                ));
            }
        }
    }
    for (i, (name, color, _, _)) in panels[0].1.iter().enumerate() {
        let x = 60.0 + (i % 3) as f64 * 260.0;
        let y = h + 48.0 + (i / 3) as f64 * 16.0;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            x + 16.0,
            y + 5.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
