//! Churn: many parallel ADD/DEL of pods with hostPorts and masquerade while
//! steady pods keep serving hostPort traffic, GC runs in between, and
//! afterwards nothing is left behind.
//!
//! Counts are configurable: `CNI_EBPF_CHURN_OPS` (ADD + DEL operations,
//! default 2000), `CNI_EBPF_CHURN_PODS` (pod identities, default 200),
//! `CNI_EBPF_CHURN_WORKERS` (parallel workers, default 16). The ignored
//! `churn_long` runs 10,000 operations over 500 identities:
//! `CNI_EBPF_TEST=1 cargo test --test churn -- --ignored --nocapture`.

mod harness;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use harness::*;
use serde_json::{json, Value};

/// hostPort of steady pod `k`.
const STEADY_PORT: u16 = 9001;
/// hostPort of churn identity `i` is this plus `i`.
const CHURN_PORT: u16 = 20000;
/// How many steady pods serve throughout.
const STEADY: usize = 3;
/// How many times GC runs during the churn.
const GC_RUNS: usize = 4;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a count: {e}")),
        Err(_) => default,
    }
}

/// Small deterministic PRNG (xorshift64*): the workers' choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// A pod's config: its own hostPort mapping, masquerade on.
fn pod_conf(base: &Value, host_port: u16) -> Value {
    merged(
        base,
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}
        ]}}),
    )
}

/// One request from inside `ext`'s thread (the caller is already there).
fn ask(dst: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
        .map_err(|e| format!("connect {dst}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut line = String::new();
    BufReader::new(&mut s)
        .read_line(&mut line)
        .map_err(|e| format!("read {dst}: {e}"))?;
    Ok(line.trim().to_string())
}

/// Percentiles of a list of durations, for the report.
fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!(
        "n={} p50={:.0}ms p90={:.0}ms p99={:.0}ms max={:.0}ms",
        v.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

/// Entries of a pinned map, counted with bpftool.
fn map_entries(t: &Topo, map: &str) -> usize {
    let path = t.dir.join(t.abi_dir()).join("maps").join(map);
    let dump = sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        path.to_str().unwrap(),
    ]);
    serde_json::from_str::<Value>(&dump)
        .unwrap_or_else(|e| panic!("bpftool dump of {map}: {e}: {dump}"))
        .as_array()
        .map_or(0, Vec::len)
}

/// Raises the flag if the thread holding it panics: the other threads then
/// stop, so that every clone of the topology is dropped and its namespaces
/// are removed before the test reports the failure.
struct AbortOnPanic(Arc<AtomicBool>);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// What the test (the "runtime") believes: attachments that are live, from
/// the moment their ADD starts until their DEL has returned, as a runtime
/// lists them in `cni.dev/valid-attachments`.
#[derive(Default)]
struct Live {
    /// Identity index -> its ADD result (None while the ADD runs).
    pods: HashMap<usize, Option<Value>>,
}

fn valid_attachments(live: &Live) -> Value {
    let mut v: Vec<Value> = (0..STEADY)
        .map(|k| json!({"containerID": format!("steady{k}"), "ifname": "eth0"}))
        .collect();
    v.extend(
        live.pods
            .keys()
            .map(|i| json!({"containerID": format!("churn{i}"), "ifname": "eth0"})),
    );
    Value::Array(v)
}

fn run_churn(ops: usize, pods: usize, workers: usize) {
    assert!(
        pods >= workers,
        "need at least one identity per worker ({pods} < {workers})"
    );
    let t = Arc::new(Topo::new("churn"));
    let base = t.conf(json!({
        "cniVersion": "1.1.0",
        "ipMasq": true,
        "ipam": {"ranges": [[{"subnet": "10.40.0.0/16"}]]},
    }));

    // Steady pods, each serving its own name on a hostPort.
    let mut steady = Vec::new();
    for k in 0..STEADY {
        let ns = t.pod(&format!("s{k}"));
        t.add(
            &pod_conf(&base, STEADY_PORT + k as u16),
            &format!("steady{k}"),
            Some(&ns),
            "eth0",
        );
        steady.push((
            TcpServer::start(&ns, "0.0.0.0", 80, &format!("steady{k}")),
            ns,
        ));
    }
    let namespaces: Vec<String> = (0..pods).map(|i| t.pod(&format!("c{i}"))).collect();
    let namespaces = Arc::new(namespaces);

    // The external client: round robin over the steady pods until the churn
    // is over; every answer must come from the pod the port belongs to.
    let stop = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    let checker = {
        let stop = stop.clone();
        in_ns(&t.ext, move || {
            let (mut ok, mut bad) = (0usize, Vec::new());
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                let dst = SocketAddr::new(NODE_IP.parse().unwrap(), STEADY_PORT + k as u16);
                match ask(dst) {
                    Ok(l) if l.starts_with(&format!("steady{k} ")) => ok += 1,
                    Ok(l) => bad.push(format!("{dst} answered {l:?}")),
                    Err(e) => bad.push(e),
                }
                k = (k + 1) % STEADY;
            }
            (ok, bad)
        })
    };

    let live = Arc::new(Mutex::new(Live::default()));
    // The runtime serialises GC with ADD/DEL of the network (as the spec
    // asks): its list of valid attachments is a snapshot, and an ADD that
    // started after the snapshot would be missing from it.
    let runtime = Arc::new(RwLock::new(()));
    let done = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();

    // GC while the churn runs, with the runtime's idea of what is live.
    let gc = {
        let (t, base, live, done, runtime, abort) = (
            t.clone(),
            base.clone(),
            live.clone(),
            done.clone(),
            runtime.clone(),
            abort.clone(),
        );
        std::thread::spawn(move || {
            let _guard = AbortOnPanic(abort.clone());
            let mut runs = Vec::new();
            for n in 1..=GC_RUNS {
                while done.load(Ordering::SeqCst) < ops * n / (GC_RUNS + 1) {
                    if abort.load(Ordering::SeqCst) {
                        return runs;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _serial = runtime.write().unwrap();
                let conf = {
                    let l = live.lock().unwrap();
                    merged(
                        &base,
                        json!({"cni.dev/valid-attachments": valid_attachments(&l)}),
                    )
                };
                let out = t.gc(&conf);
                runs.push(out.took);
                out.ok();
            }
            runs
        })
    };

    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (t, base, live, done, lat, wrong, namespaces, runtime, abort) = (
                t.clone(),
                base.clone(),
                live.clone(),
                done.clone(),
                lat.clone(),
                wrong.clone(),
                namespaces.clone(),
                runtime.clone(),
                abort.clone(),
            );
            std::thread::spawn(move || {
                // Each worker owns the identities i with i % workers == w, so
                // one identity is never in two operations at once.
                let mine: Vec<usize> = (w..pods).step_by(workers).collect();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) * 0x1000_0001));
                let _guard = AbortOnPanic(abort.clone());
                while !abort.load(Ordering::SeqCst) && done.fetch_add(1, Ordering::SeqCst) < ops {
                    let i = mine[rng.below(mine.len())];
                    let (cid, ns) = (format!("churn{i}"), &namespaces[i]);
                    let port = CHURN_PORT + i as u16;
                    let conf = pod_conf(&base, port);
                    let was = live.lock().unwrap().pods.get(&i).cloned();
                    match was {
                        None => {
                            let serial = runtime.read().unwrap();
                            live.lock().unwrap().pods.insert(i, None);
                            let out = t.cni("ADD", &conf, &cid, Some(ns), "eth0").ok();
                            lat.lock().unwrap().0.push(out.took);
                            live.lock().unwrap().pods.insert(i, out.json);
                            drop(serial);
                            // The new pod answers on its hostPort with its own name.
                            let srv = TcpServer::start(ns, "0.0.0.0", 80, &cid);
                            match tcp_get(&t.ext, NODE_IP.parse().unwrap(), port) {
                                Ok(l) if l.starts_with(&format!("{cid} ")) => {}
                                other => wrong
                                    .lock()
                                    .unwrap()
                                    .push(format!("{cid} via {port}: {other:?}")),
                            }
                            drop(srv);
                        }
                        Some(res) => {
                            // Still intact up to its DEL: GC removed nothing live.
                            let cc = merged(&conf, json!({"prevResult": res}));
                            let chk = t.cni("CHECK", &cc, &cid, Some(ns), "eth0");
                            if chk.code != 0 {
                                wrong
                                    .lock()
                                    .unwrap()
                                    .push(format!("CHECK {cid} before DEL: {}", chk.stdout));
                            }
                            let serial = runtime.read().unwrap();
                            let out = t.cni("DEL", &conf, &cid, Some(ns), "eth0").ok();
                            lat.lock().unwrap().1.push(out.took);
                            live.lock().unwrap().pods.remove(&i);
                            drop(serial);
                        }
                    }
                }
            })
        })
        .collect();
    // Every thread is joined before anything can fail here.
    let failed_workers = handles
        .into_iter()
        .map(|h| h.join())
        .filter(Result::is_err)
        .count();
    let gc_took = gc.join();
    let churn_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let (served, lost) = checker.join().unwrap();
    assert_eq!(failed_workers, 0, "workers failed (messages above)");
    let gc_took = gc_took.expect("GC failed (message above)");

    let (mut adds, mut dels) = std::mem::take(&mut *lat.lock().unwrap());
    println!(
        "churn: {} ops ({} ADD, {} DEL) over {pods} identities by {workers} workers in {churn_secs:.1}s",
        adds.len() + dels.len(),
        adds.len(),
        dels.len()
    );
    println!("churn: ADD latency {}", percentiles(&mut adds));
    println!("churn: DEL latency {}", percentiles(&mut dels));
    println!(
        "churn: GC runs {} took {:?}",
        gc_took.len(),
        gc_took
            .iter()
            .map(|d| format!("{:.0}ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
    );
    println!(
        "churn: steady hostPort requests served {served}, failed or misrouted {}",
        lost.len()
    );
    assert!(
        adds.len() + dels.len() >= ops,
        "fewer operations than asked"
    );
    assert!(served > 0, "the external client got no answer at all");
    assert!(lost.is_empty(), "steady pods: {lost:?}");
    let wrong = std::mem::take(&mut *wrong.lock().unwrap());
    assert!(wrong.is_empty(), "churn pods: {wrong:?}");

    // Every attachment live after the churn (and the GCs) still works.
    let survivors: Vec<(usize, Value)> = live
        .lock()
        .unwrap()
        .pods
        .iter()
        .map(|(i, r)| (*i, r.clone().expect("ADD result")))
        .collect();
    for (i, res) in &survivors {
        let (cid, ns) = (format!("churn{i}"), &namespaces[*i]);
        let conf = pod_conf(&base, CHURN_PORT + *i as u16);
        t.cni(
            "CHECK",
            &merged(&conf, json!({"prevResult": res})),
            &cid,
            Some(ns),
            "eth0",
        )
        .ok();
        let _srv = TcpServer::start(ns, "0.0.0.0", 80, &cid);
        let line = tcp_get(&t.ext, NODE_IP.parse().unwrap(), CHURN_PORT + *i as u16)
            .unwrap_or_else(|e| panic!("{cid} after churn: {e}"));
        assert!(line.starts_with(&format!("{cid} ")), "{cid}: {line}");
    }
    println!(
        "churn: {} live pods after the churn: CHECK passes and each answers on its hostPort",
        survivors.len()
    );

    // DEL everything; nothing may be left.
    for (i, _) in &survivors {
        let conf = pod_conf(&base, CHURN_PORT + *i as u16);
        t.del(&conf, &format!("churn{i}"), Some(&namespaces[*i]), "eth0");
    }
    for (k, (srv, ns)) in steady.into_iter().enumerate() {
        drop(srv);
        t.del(
            &pod_conf(&base, STEADY_PORT + k as u16),
            &format!("steady{k}"),
            Some(&ns),
            "eth0",
        );
    }
    // NAT entries carry their owner and die with it: none is live now; the
    // stale ones wait for the LRU or for GC, which prunes them.
    let live_nat = t.inspect()["nat"].as_array().unwrap().len();
    let stale_nat = map_entries(&t, "nat");
    println!("churn: after DEL of all: {live_nat} live NAT entries, {stale_nat} stale ones");
    assert_eq!(live_nat, 0, "NAT entries still live after DEL");
    let gc = merged(&base, json!({"cni.dev/valid-attachments": []}));
    t.gc(&gc).ok();
    let ours = |l: &str| l.starts_with("veth") || l.starts_with(TOMBSTONE_PREFIX);
    let veths: Vec<String> = links_when_gone(&t.node, ours)
        .into_iter()
        .filter(|l| ours(l))
        .collect();
    let pod_links: usize = namespaces
        .iter()
        .map(|ns| links(ns).iter().filter(|l| *l != "lo").count())
        .sum();
    let state: Vec<String> = t
        .files("state/testnet")
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .collect();
    let ipam: Vec<String> = t
        .files("ipam/testnet")
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
        .collect();
    let counts: Vec<(&str, usize)> = ["endpoints", "portmap", "ep_stats", "nat"]
        .into_iter()
        .map(|m| (m, map_entries(&t, m)))
        .collect();
    let pins = t.endpoint_link_pins();
    // The node's neighbour entries of pod addresses (ADD sets them on the
    // bridge): the kernel's table is node-wide and limited (gc_thresh3).
    let neigh: Vec<String> = ip_n(&t.node, &["neigh", "show", "dev", "cni0"])
        .lines()
        .filter(|l| l.starts_with("10.40."))
        .map(str::to_string)
        .collect();
    println!(
        "churn leaks: IP reservations {}, node veths {}, pod interfaces {pod_links}, state records {}, \
         map entries {counts:?}, pinned links {}, neighbour entries {}",
        ipam.len(),
        veths.len(),
        state.len(),
        pins.len(),
        neigh.len()
    );
    assert!(ipam.is_empty(), "IP reservations left: {ipam:?}");
    assert!(veths.is_empty(), "veths left in node: {veths:?}");
    assert_eq!(pod_links, 0, "interfaces left in pod namespaces");
    assert!(state.is_empty(), "state records left: {state:?}");
    for (m, n) in &counts {
        assert_eq!(*n, 0, "{m} entries left");
    }
    assert!(pins.is_empty(), "link pins left: {pins:?}");
    assert!(neigh.is_empty(), "neighbour entries left: {neigh:?}");
}

#[test]
fn churn_without_leaks() {
    run_churn(
        env_usize("CNI_EBPF_CHURN_OPS", 2000),
        env_usize("CNI_EBPF_CHURN_PODS", 200),
        env_usize("CNI_EBPF_CHURN_WORKERS", 16),
    );
}

/// The `--long` variant: `cargo test --test churn -- --ignored --nocapture`.
#[test]
#[ignore]
fn churn_long() {
    run_churn(10_000, 500, 16);
}
