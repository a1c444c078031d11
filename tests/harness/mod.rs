//! Test harness: a node, an external client and pods as network namespaces
//! this test creates (never the machine's own interfaces), the real plugin
//! binary invoked exactly as a runtime does (env + stdin, inside the node
//! namespace via `nsenter --net`, so the bpffs it mounts stays visible), and
//! real sockets inside the namespaces. Everything is removed on drop, also
//! when the test fails.
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

pub mod frames;

/// The plugin binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cni-ebpf");
/// Debian's reference plugins.
pub const REF_CNI: &str = "/usr/lib/cni";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// `tcx` or `netlink` (or `auto`): the `attachMode` of every `cni-ebpf`
/// config the harness builds or passes on (`Topo::conf`, `Topo::conflist`),
/// unless the test sets one itself. `cargo xtask test` runs the end-to-end
/// suites once with the default and once more with `tcx`.
pub const ATTACH_ENV: &str = "CNI_EBPF_TEST_ATTACH";

/// Sets the forced `attachMode` (see [`ATTACH_ENV`]) in `conf` if it has none.
pub fn force_attach_mode(conf: &mut Value) {
    let Ok(mode) = std::env::var(ATTACH_ENV) else {
        return;
    };
    assert!(
        ["tcx", "netlink", "auto"].contains(&mode.as_str()),
        "{ATTACH_ENV}={mode:?}: want tcx, netlink or auto"
    );
    if conf.get("attachMode").is_none_or(Value::is_null) {
        conf["attachMode"] = mode.into();
    }
}

/// Fails loudly when the test cannot run (not root, no bpffs support).
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "integration tests need root (run them with `cargo xtask test` as root)"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -n <ns> <args>`.
pub fn ip_n(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Runs a command in a netns (`ip -n` style commands are preferred).
pub fn sh_in(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Runs `f` on a thread inside netns `ns` (by name under /run/netns).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f_ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        rustix::thread::move_into_link_name_space(
            f_ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// Result of one plugin call.
#[derive(Debug)]
pub struct CniOut {
    /// Exit code.
    pub code: i32,
    /// stdout parsed as JSON, if any.
    pub json: Option<Value>,
    /// Raw stdout.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
    /// Wall time.
    pub took: Duration,
}

impl CniOut {
    /// Panics unless it succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        self
    }
    /// The error code of a failed call.
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got {}", self.stdout);
        let j = self
            .json
            .as_ref()
            .unwrap_or_else(|| panic!("error output is not JSON: {:?}", self.stdout));
        j["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {j}"))
    }
    /// The error message.
    pub fn msg(&self) -> String {
        self.json
            .as_ref()
            .map(|j| j["msg"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }
}

/// Environment of one call.
#[derive(Clone, Debug, Default)]
pub struct Call<'a> {
    /// CNI_COMMAND.
    pub cmd: &'a str,
    /// CNI_CONTAINERID.
    pub cid: &'a str,
    /// CNI_NETNS (full path).
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: &'a str,
    /// CNI_ARGS.
    pub args: Option<&'a str>,
    /// CNI_PATH (default: our bin dir + Debian's).
    pub path: Option<String>,
    /// umask to run the plugin with (default: the test's).
    pub umask: Option<u32>,
    /// `CNI_EBPF_FAILPOINT`: the ADD step after which a debug build aborts.
    pub failpoint: Option<&'a str>,
}

/// A test world: node + ext namespaces joined by a veth, a private pin dir,
/// state dir and IPAM dir, and pods.
pub struct Topo {
    /// Short unique id.
    pub id: String,
    /// Node netns name.
    pub node: String,
    /// External client netns name.
    pub ext: String,
    /// Private directory.
    pub dir: PathBuf,
    /// Private cgroup v2 directory: the socket hooks attach here, never to
    /// the machine's root cgroup.
    pub cgroup: PathBuf,
    namespaces: std::sync::Mutex<Vec<String>>,
}

/// Node uplink addresses (node side, ext side).
pub const NODE_IP: &str = "192.0.2.1";
/// External client address.
pub const EXT_IP: &str = "192.0.2.2";
/// Node uplink IPv6.
pub const NODE_IP6: &str = "2001:db8::1";
/// External client IPv6.
pub const EXT_IP6: &str = "2001:db8::2";

impl Topo {
    /// A node namespace with its private pin, state and IPAM dirs and
    /// cgroup; `ext` is only named here (created by the caller).
    fn bare(tag: &str) -> Self {
        require_root();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("{tag}{}x{n}", std::process::id() % 100000);
        let dir = PathBuf::from(format!("/run/cni-ebpf-test/{id}"));
        let cgroup = cgroup2_root().join(format!("cni-ebpf-test-{id}"));
        std::fs::create_dir_all(&cgroup).unwrap();
        let t = Topo {
            node: format!("ce-{id}-node"),
            ext: format!("ce-{id}-ext"),
            id,
            dir,
            cgroup,
            namespaces: Default::default(),
        };
        std::fs::create_dir_all(t.dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(BIN, t.dir.join("bin/cni-ebpf")).unwrap();
        t.add_ns(&t.node.clone());
        t
    }

    /// Builds the node and ext namespaces.
    pub fn new(tag: &str) -> Self {
        let t = Self::bare(tag);
        t.add_ns(&t.ext.clone());
        // The uplink is created inside the node netns with its peer directly in ext:
        // no device ever exists in the machine's own namespace.
        ip_n(
            &t.node,
            &[
                "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &t.ext,
            ],
        );
        for (ns, dev, addr) in [
            (&t.node, "up0", format!("{NODE_IP}/24")),
            (&t.node, "up0", format!("{NODE_IP6}/64")),
            (&t.ext, "eth0", format!("{EXT_IP}/24")),
            (&t.ext, "eth0", format!("{EXT_IP6}/64")),
        ] {
            ip_n(ns, &["addr", "add", &addr, "dev", dev, "nodad"]);
        }
        ip_n(&t.node, &["link", "set", "up0", "up"]);
        ip_n(&t.ext, &["link", "set", "eth0", "up"]);
        ip_n(&t.ext, &["route", "add", "10.0.0.0/8", "via", NODE_IP]);
        ip_n(&t.ext, &["-6", "route", "add", "fd00::/8", "via", NODE_IP6]);
        // The external side is the node's way out (its default routes make
        // up0 the uplink).
        ip_n(&t.node, &["route", "add", "default", "via", EXT_IP]);
        ip_n(&t.node, &["-6", "route", "add", "default", "via", EXT_IP6]);
        sh_in(
            &t.node,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        t
    }

    fn add_ns(&self, name: &str) {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", name]);
        ip_n(name, &["link", "set", "lo", "up"]);
        self.namespaces.lock().unwrap().push(name.to_string());
    }

    /// Creates a pod namespace and returns its name.
    pub fn pod(&self, name: &str) -> String {
        let ns = format!("ce-{}-{name}", self.id);
        self.add_ns(&ns);
        ns
    }

    /// Removes a namespace early (e.g. to test DEL without netns).
    pub fn del_ns(&self, ns: &str) {
        sh(&["ip", "netns", "del", ns]);
        self.namespaces.lock().unwrap().retain(|n| n != ns);
    }

    /// Pin root of this topology.
    pub fn pin(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// A network config with this topology's private dirs, merged with `extra`.
    pub fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "testnet",
            "type": "cni-ebpf",
            "pinPath": self.pin(),
            "stateDir": self.dir.join("state"),
            "logFile": self.dir.join("cni.log"),
            "cgroupPath": self.cgroup,
            "bridge": "cni0",
            "isGateway": true,
            "isDefaultGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]], "dataDir": self.dir.join("ipam")},
        });
        merge(&mut c, extra);
        force_attach_mode(&mut c);
        c
    }

    /// CNI_PATH: our binary first, then Debian's reference plugins.
    pub fn cni_path(&self) -> String {
        format!("{}:{REF_CNI}", self.dir.join("bin").display())
    }

    /// Runs GC (spec 1.1) with `conf`, which carries the valid attachments.
    pub fn gc(&self, conf: &Value) -> CniOut {
        self.exec(
            BIN,
            &Call {
                cmd: "GC",
                ..Default::default()
            },
            conf.to_string().as_bytes(),
        )
    }

    /// Runs a plugin binary (ours by default) inside the node namespace.
    pub fn exec(&self, bin: &str, call: &Call<'_>, stdin: &[u8]) -> CniOut {
        // Without cgroupPath the plugin would attach its socket hooks to the
        // machine's root cgroup: never from a test.
        if bin == BIN && call.cmd == "ADD" {
            if let Ok(v) = serde_json::from_slice::<Value>(stdin) {
                assert!(
                    v.get("pinPath").is_none() || v.get("cgroupPath").is_some(),
                    "test config with pinPath but without cgroupPath: {v}"
                );
            }
        }
        let mut cmd = match call.umask {
            None => Command::new("nsenter"),
            Some(m) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("umask {m:03o}; exec nsenter \"$@\""), "sh"]);
                c
            }
        };
        cmd.arg(format!("--net=/run/netns/{}", self.node)).arg(bin);
        // A relative path the plugin wrongly accepted lands in the
        // topology's directory (and in its snapshots), nowhere else.
        cmd.current_dir(&self.dir);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", call.cmd)
            .env(
                "CNI_PATH",
                call.path.clone().unwrap_or_else(|| self.cni_path()),
            );
        if !call.cid.is_empty() {
            cmd.env("CNI_CONTAINERID", call.cid);
        }
        if !call.ifname.is_empty() {
            cmd.env("CNI_IFNAME", call.ifname);
        }
        if let Some(n) = &call.netns {
            cmd.env("CNI_NETNS", n);
        }
        if let Some(a) = call.args {
            cmd.env("CNI_ARGS", a);
        }
        if let Some(f) = call.failpoint {
            cmd.env("CNI_EBPF_FAILPOINT", f);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("spawn plugin");
        let mut sin = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let w = std::thread::spawn(move || {
            let _ = sin.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait plugin");
        let _ = w.join();
        let took = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        CniOut {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(stdout.trim()).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took,
        }
    }

    /// Runs our plugin with `conf`.
    pub fn cni(
        &self,
        cmd: &str,
        conf: &Value,
        cid: &str,
        pod_ns: Option<&str>,
        ifname: &str,
    ) -> CniOut {
        let call = Call {
            cmd,
            cid,
            netns: pod_ns.map(|n| format!("/run/netns/{n}")),
            ifname,
            ..Default::default()
        };
        self.exec(BIN, &call, conf.to_string().as_bytes())
    }

    /// A successful ADD; returns the result.
    #[track_caller]
    pub fn add(&self, conf: &Value, cid: &str, pod_ns: Option<&str>, ifname: &str) -> Value {
        let out = self.cni("ADD", conf, cid, pod_ns, ifname).ok();
        out.json
            .unwrap_or_else(|| panic!("ADD printed no JSON: {}", out.stdout))
    }

    /// A successful DEL.
    #[track_caller]
    pub fn del(&self, conf: &Value, cid: &str, pod_ns: Option<&str>, ifname: &str) {
        self.cni("DEL", conf, cid, pod_ns, ifname).ok();
    }

    /// Runs a conflist as libcni does: ADD in order with prevResult, DEL in
    /// reverse. Returns the final result (ADD) or nothing.
    /// `cached` is the final ADD result, which libcni hands to every plugin as
    /// `prevResult` on CHECK and DEL.
    pub fn conflist(
        &self,
        cmd: &str,
        list: &Value,
        cid: &str,
        pod_ns: &str,
        ifname: &str,
        cached: Option<&Value>,
    ) -> Result<Option<Value>, CniOut> {
        let version = list["cniVersion"].clone();
        let name = list["name"].clone();
        let mut plugins: Vec<Value> = list["plugins"].as_array().unwrap().clone();
        if cmd == "DEL" {
            plugins.reverse();
        }
        let mut prev: Option<Value> = None;
        for mut p in plugins {
            p["cniVersion"] = version.clone();
            p["name"] = name.clone();
            if let Some(pr) = prev.as_ref().or(if cmd == "ADD" { None } else { cached }) {
                p["prevResult"] = pr.clone();
            }
            let ty = p["type"].as_str().unwrap().to_string();
            if ty == "cni-ebpf" {
                force_attach_mode(&mut p);
            }
            let bin = if ty == "cni-ebpf" {
                BIN.to_string()
            } else {
                format!("{REF_CNI}/{ty}")
            };
            let call = Call {
                cmd,
                cid,
                netns: Some(format!("/run/netns/{pod_ns}")),
                ifname,
                ..Default::default()
            };
            let out = self.exec(&bin, &call, p.to_string().as_bytes());
            if out.code != 0 {
                return Err(out);
            }
            if cmd == "ADD" {
                prev = out.json.clone();
            }
        }
        Ok(prev)
    }

    /// `cni-ebpf inspect --json` in the node.
    pub fn inspect(&self) -> Value {
        self.inspect_json(&[])
    }

    /// `cni-ebpf inspect ARGS --json` in the node, parsed.
    pub fn inspect_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.inspect_text(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("inspect {args:?} output {out:?}: {e}"))
    }

    /// `cni-ebpf inspect ARGS` in the node: its stdout.
    pub fn inspect_text(&self, args: &[&str]) -> String {
        let node = format!("--net=/run/netns/{}", self.node);
        let (pin, state) = (self.pin(), self.dir.join("state"));
        let mut v = vec!["nsenter", &node, BIN, "inspect"];
        v.extend_from_slice(args);
        v.extend_from_slice(&[
            "--pin-path",
            pin.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        sh(&v)
    }

    /// Links in the node namespace (names).
    pub fn node_links(&self) -> Vec<String> {
        links(&self.node)
    }

    /// Files in a subdirectory of this topology's private dir.
    /// `<pin root>/v<ABI>`, relative to the topology's directory.
    pub fn abi_dir(&self) -> String {
        format!("bpf/v{}", cni_ebpf_common::PIN_ABI_VERSION)
    }

    /// Pinned links of pod veths (not the node-wide uplink and cgroup ones).
    pub fn endpoint_link_pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join(self.abi_dir()).join("links"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in self.namespaces.lock().unwrap().drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let pin = self.pin();
        // The plugin mounted a bpffs there; it may have been mounted more than once.
        for _ in 0..8 {
            let mounted = std::fs::read_to_string("/proc/self/mounts")
                .map(|m| {
                    m.lines()
                        .any(|l| l.split(' ').nth(1) == Some(pin.to_str().unwrap()))
                })
                .unwrap_or(false);
            if !mounted {
                break;
            }
            let _ = Command::new("umount").arg(&pin).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Link names in netns `ns`.
pub fn links(ns: &str) -> Vec<String> {
    ip_n(ns, &["-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        })
        .collect()
}

/// Prefix of veths DEL retired and a reaper process deletes moments later.
pub const TOMBSTONE_PREFIX: &str = "cebz";

/// Waits (up to 5 s) until netns `ns` has no link that `gone` matches, and
/// returns the links then: DEL leaves the deletion of its veths to a reaper
/// process, so they vanish shortly after it returns.
pub fn links_when_gone(ns: &str, gone: impl Fn(&str) -> bool) -> Vec<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let l = links(ns);
        if !l.iter().any(|n| gone(n)) || std::time::Instant::now() > until {
            return l;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The underlay network of a [`Cluster`].
pub const UNDERLAY_PREFIX: &str = "192.0.2";

/// Several nodes and an external client on one L2 underlay (a bridge in a
/// namespace of its own, so nothing exists in the machine's namespace),
/// each node routing every other node's pod CIDR via that node, as flannel's
/// host-gw backend sets up. Node `i` is `192.0.2.(11+i)` on `up0`, its
/// default route via the external client `192.0.2.2` (so `up0` is its
/// uplink); the client has no route to any pod CIDR.
pub struct Cluster {
    /// The nodes; each has its own pin, state, IPAM dirs and cgroup.
    pub nodes: Vec<Topo>,
    /// External client namespace.
    pub ext: String,
    /// Underlay namespace (the bridge).
    pub underlay: String,
}

impl Cluster {
    /// One node per pod CIDR.
    pub fn new(tag: &str, pod_cidrs: &[&str]) -> Self {
        let nodes: Vec<Topo> = (0..pod_cidrs.len()).map(|_| Topo::bare(tag)).collect();
        let id = &nodes[0].id;
        let (ext, underlay) = (format!("ce-{id}-ext"), format!("ce-{id}-ul"));
        // Registered with the first node, which removes them on drop.
        nodes[0].add_ns(&ext);
        nodes[0].add_ns(&underlay);
        ip_n(&underlay, &["link", "add", "br0", "type", "bridge"]);
        ip_n(&underlay, &["link", "set", "br0", "up"]);
        let plug = |ns: &str, dev: &str, port: &str, addr: &str| {
            ip_n(
                ns,
                &[
                    "link", "add", dev, "type", "veth", "peer", "name", port, "netns", &underlay,
                ],
            );
            ip_n(&underlay, &["link", "set", port, "master", "br0", "up"]);
            ip_n(
                ns,
                &["addr", "add", &format!("{addr}/24"), "dev", dev, "nodad"],
            );
            ip_n(ns, &["link", "set", dev, "up"]);
        };
        let ext_ip = format!("{UNDERLAY_PREFIX}.2");
        plug(&ext, "eth0", "ext", &ext_ip);
        for (i, n) in nodes.iter().enumerate() {
            plug(&n.node, "up0", &format!("node{i}"), &Self::node_ip_of(i));
            ip_n(&n.node, &["route", "add", "default", "via", &ext_ip]);
            for (j, cidr) in pod_cidrs.iter().enumerate() {
                if j != i {
                    ip_n(
                        &n.node,
                        &["route", "add", cidr, "via", &Self::node_ip_of(j)],
                    );
                }
            }
            sh_in(&n.node, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        }
        Cluster {
            nodes,
            ext,
            underlay,
        }
    }

    fn node_ip_of(i: usize) -> String {
        format!("{UNDERLAY_PREFIX}.{}", 11 + i)
    }

    /// Node `i`'s underlay address.
    pub fn node_ip(&self, i: usize) -> IpAddr {
        Self::node_ip_of(i).parse().unwrap()
    }

    /// The external client's address.
    pub fn ext_ip(&self) -> IpAddr {
        format!("{UNDERLAY_PREFIX}.2").parse().unwrap()
    }
}

/// Where cgroup v2 is mounted on this machine.
pub fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split(' ').nth(4)?;
            (post.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .expect("no cgroup2 mount")
}

/// `base` with `extra` deep-merged into it.
pub fn merged(base: &Value, extra: Value) -> Value {
    let mut v = base.clone();
    merge(&mut v, extra);
    v
}

/// Deep-merges `extra` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// The pod address of a given family from a result.
pub fn result_ip(res: &Value, v6: bool) -> IpAddr {
    res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse::<IpAddr>()
                .unwrap()
        })
        .find(|ip| ip.is_ipv6() == v6)
        .unwrap_or_else(|| panic!("no {} address in {res}", if v6 { "IPv6" } else { "IPv4" }))
}

/// A TCP server in a namespace that answers every connection with
/// `<name> <peer address>\n`.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Peers seen.
    pub port: u16,
}

impl TcpServer {
    /// Starts it on `bind:port` in `ns`.
    pub fn start(ns: &str, bind: &str, port: u16, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s2, name) = (stop.clone(), name.to_string());
        let addr: SocketAddr = format!(
            "{}:{port}",
            if bind.contains(':') {
                format!("[{bind}]")
            } else {
                bind.to_string()
            }
        )
        .parse()
        .unwrap();
        let handle = in_ns(ns, move || {
            let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = writeln!(c, "{name} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        TcpServer {
            stop,
            handle: Some(handle),
            port,
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from `ns` to `dst:port`, returns the server's line (or the error).
pub fn tcp_get(ns: &str, dst: IpAddr, port: u16) -> Result<String, String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(3))
            .map_err(|e| format!("connect {dst}:{port}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut line = String::new();
        BufReader::new(&mut s)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        Ok(line.trim().to_string())
    })
    .join()
    .unwrap()
}

/// Asserts that a TCP connection from `ns` to `dst:port` is answered with
/// `expected` (the server's name and the client address it saw).
#[track_caller]
pub fn assert_reply(ns: &str, dst: IpAddr, port: u16, expected: &str) {
    let got = tcp_get(ns, dst, port).unwrap_or_else(|e| panic!("{ns} -> {dst}:{port}: {e}"));
    assert_eq!(got, expected, "{ns} -> {dst}:{port}");
}

/// Binds a UDP socket in `ns` and waits up to `wait` for one datagram.
pub fn udp_recv(
    ns: &str,
    bind: SocketAddr,
    wait: Duration,
) -> JoinHandle<Option<(String, IpAddr)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        s.set_read_timeout(Some(wait)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        s.recv_from(&mut buf)
            .ok()
            .map(|(n, from)| (String::from_utf8_lossy(&buf[..n]).into_owned(), from.ip()))
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("udp receiver did not start");
    h
}

/// Sends one datagram from `ns`, optionally from a given source address.
pub fn udp_send(ns: &str, src: Option<IpAddr>, dst: SocketAddr, msg: &str) {
    let msg = msg.to_string();
    in_ns(ns, move || {
        let bind = SocketAddr::new(
            src.unwrap_or(if dst.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            }),
            0,
        );
        let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        for _ in 0..3 {
            let _ = s.send_to(msg.as_bytes(), dst);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .unwrap();
}

/// Reads a whole file (test convenience).
pub fn read(p: &Path) -> String {
    let mut s = String::new();
    let _ = File::open(p).and_then(|mut f| f.read_to_string(&mut s));
    s
}

/// A UDP server in a namespace that answers every datagram with
/// `<name> <peer address>` (until dropped).
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Starts it on `bind` in `ns`.
    pub fn start(ns: &str, bind: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s2, name) = (stop.clone(), name.to_string());
        let handle = in_ns(ns, move || {
            let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{name} {peer}").as_bytes(), peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("udp server did not start");
        UdpEcho {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends a datagram from `ns` (from `src_port`, 0 = any) to `dst` and waits
/// for one answer: `(text, address it came from)`.
pub fn udp_ask(ns: &str, src_port: u16, dst: SocketAddr) -> Result<(String, SocketAddr), String> {
    in_ns(ns, move || {
        let any: IpAddr = if dst.is_ipv4() {
            "0.0.0.0".parse().unwrap()
        } else {
            "::".parse().unwrap()
        };
        // A fixed port just released by an earlier ask can take a moment to
        // be free again; retry briefly.
        let mut tries = 0;
        let s = loop {
            match UdpSocket::bind(SocketAddr::new(any, src_port)) {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("bind: {e}")),
            }
        };
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..6 {
            s.send_to(b"hi", dst).map_err(|e| format!("send: {e}"))?;
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                return Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            }
        }
        Err(format!("no answer from {dst}"))
    })
    .join()
    .unwrap()
}

/// A UDP question and answer from a process in the node namespace inside
/// the topology's cgroup (a connected socket, as `/dev/udp` makes): the
/// answer's text.
pub fn node_udp_ask(t: &Topo, dst: IpAddr, port: u16) -> Result<String, String> {
    let script = format!(
        "echo $$ > {}/cgroup.procs; exec nsenter --net=/run/netns/{} bash -c 'exec 3<>/dev/udp/{dst}/{port} && echo hi >&3 && timeout 2 dd bs=1500 count=1 status=none <&3'",
        t.cgroup.display(),
        t.node
    );
    let out = Command::new("timeout")
        .args(["5", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    } else {
        Ok(text)
    }
}

/// A TCP exchange from a process in the node namespace, optionally inside
/// the topology's cgroup (where the socket hooks are): the server's line.
pub fn node_tcp_get(t: &Topo, in_cgroup: bool, dst: IpAddr, port: u16) -> Result<String, String> {
    cgroup_tcp_get(t, &t.node, in_cgroup, dst, port)
}

/// [`node_tcp_get`] from a process in netns `ns` (the topology's cgroup
/// holds processes of every namespace: the hooks must act on the node's only).
pub fn cgroup_tcp_get(
    t: &Topo,
    ns: &str,
    in_cgroup: bool,
    dst: IpAddr,
    port: u16,
) -> Result<String, String> {
    let join = if in_cgroup {
        format!("echo $$ > {}/cgroup.procs; ", t.cgroup.display())
    } else {
        String::new()
    };
    let script = format!(
        "{join}exec nsenter --net=/run/netns/{ns} bash -c 'exec 3<>/dev/tcp/{dst}/{port} && timeout 3 head -n1 <&3'"
    );
    let out = Command::new("timeout")
        .args(["5", "sh", "-c", &script])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Asserts that `bpftool map dump pinned` of `map` prints these field names
/// (the maps carry BTF).
#[track_caller]
pub fn assert_bpftool_fields(t: &Topo, map: &str, fields: &[&str]) {
    let path = t.dir.join(t.abi_dir()).join("maps").join(map);
    let dump = sh(&["bpftool", "map", "dump", "pinned", path.to_str().unwrap()]);
    for field in fields {
        assert!(
            dump.contains(&format!("\"{field}\"")),
            "bpftool dump lacks {field}: {dump}"
        );
    }
}

/// Everything a plugin call could change on the node, as comparable text:
/// links, addresses, routes and TC filters of the node and the given pods,
/// every file under the topology's directory (path, mode, owner and, outside
/// bpffs, content; the log file excepted), and the map entries `inspect`
/// shows (endpoints without their counters, hostPorts, translations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// One section per aspect, by name.
    pub sections: std::collections::BTreeMap<String, Vec<String>>,
}

impl Snapshot {
    /// Takes a snapshot of `t` and the pod namespaces `pods`.
    pub fn take(t: &Topo, pods: &[&str]) -> Self {
        let all: Vec<&str> = std::iter::once(t.node.as_str())
            .chain(pods.iter().copied())
            .collect();
        // IPv6 duplicate address detection adds local routes when it ends:
        // compare settled states only.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && all
                .iter()
                .any(|ns| !ip_n(ns, &["-6", "addr", "show", "tentative"]).is_empty())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut sections = std::collections::BTreeMap::new();
        for ns in std::iter::once(t.node.as_str()).chain(pods.iter().copied()) {
            for (name, lines) in netns_state(ns) {
                sections.insert(format!("{ns} {name}"), lines);
            }
        }
        sections.insert("files".into(), t.file_tree());
        if t.dir.join(t.abi_dir()).join("maps/endpoints").exists() {
            let insp = t.inspect();
            let mut eps: Vec<String> = insp["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    format!(
                        "{} if{} {} {} masq={}",
                        e["ips"], e["ifindex"], e["mac"], e["owner"], e["masquerade"]
                    )
                })
                .collect();
            eps.sort();
            sections.insert("map endpoints".into(), eps);
            for key in ["interfaces", "portmaps", "nat"] {
                let mut v: Vec<String> = insp[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_string())
                    .collect();
                v.sort();
                sections.insert(format!("map {key}"), v);
            }
        }
        Snapshot { sections }
    }

    /// Every difference between `self` (before) and `after`, one per line.
    pub fn diff(&self, after: &Snapshot) -> Option<String> {
        let mut diffs = Vec::new();
        let keys: std::collections::BTreeSet<&String> =
            self.sections.keys().chain(after.sections.keys()).collect();
        for k in keys {
            let (a, b) = (self.sections.get(k), after.sections.get(k));
            if a == b {
                continue;
            }
            let (a, b) = (
                a.cloned().unwrap_or_default(),
                b.cloned().unwrap_or_default(),
            );
            for gone in a.iter().filter(|l| !b.contains(l)) {
                diffs.push(format!("  {k}: - {gone}"));
            }
            for new in b.iter().filter(|l| !a.contains(l)) {
                diffs.push(format!("  {k}: + {new}"));
            }
        }
        (!diffs.is_empty()).then(|| diffs.join("\n"))
    }

    /// Panics with every difference between `self` (before) and `after`.
    #[track_caller]
    pub fn assert_same(&self, after: &Snapshot, what: &str) {
        if let Some(d) = self.diff(after) {
            panic!("{what}: the node changed:\n{d}");
        }
    }
}

/// Links (name, kind, master, MAC), addresses, routes and TC filters of `ns`.
fn netns_state(ns: &str) -> Vec<(&'static str, Vec<String>)> {
    let links: Value = serde_json::from_str(&ip_n(ns, &["-d", "-j", "link", "show"])).unwrap();
    let mut names = Vec::new();
    let mut l: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let name = x["ifname"].as_str().unwrap_or("").to_string();
            names.push(name.clone());
            format!(
                "{name} kind={} master={} mac={}",
                x["linkinfo"]["info_kind"].as_str().unwrap_or("-"),
                x["master"].as_str().unwrap_or("-"),
                x["address"].as_str().unwrap_or("-")
            )
        })
        .collect();
    l.sort();
    let strip = |s: String| -> Vec<String> {
        let mut v: Vec<String> = s
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .take_while(|w| !w.ends_with("_lft") && *w != "expires")
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        v.sort();
        v
    };
    let addrs = strip(ip_n(ns, &["-o", "addr", "show"]));
    let mut routes = strip(ip_n(ns, &["route", "show", "table", "all"]));
    routes.extend(strip(ip_n(ns, &["-6", "route", "show", "table", "all"])));
    let mut filters = Vec::new();
    for n in &names {
        for dir in ["ingress", "egress"] {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "tc", "filter", "show", "dev", n, dir])
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // The program's name and tag, without the ever-changing ids.
                let w: Vec<&str> = line.split_whitespace().collect();
                let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1));
                if let (Some(name), Some(tag)) = (after("name"), after("tag")) {
                    filters.push(format!("{n} {dir} {name} {tag}"));
                }
            }
        }
    }
    filters.sort();
    vec![
        ("links", l),
        ("addrs", addrs),
        ("routes", routes),
        ("tc", filters),
    ]
}

impl Topo {
    /// Every file and directory under the topology's directory: path, type,
    /// mode, owner, and (outside bpffs) a hash of the content. The log file
    /// and the CNI call statistics are left out: every call adds to them.
    pub fn file_tree(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        let pin = self.pin();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p == self.dir.join("cni.log")
                    || p == self.dir.join("state").join(cni_ebpf::callstats::FILE)
                {
                    continue;
                }
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                let rel = p.strip_prefix(&self.dir).unwrap().display().to_string();
                let content = if m.is_file() && !p.starts_with(&pin) {
                    let mut h = cni_ebpf_common::Fnv1a::new();
                    h.write(&std::fs::read(&p).unwrap_or_default());
                    format!(" {:016x}", h.finish())
                } else {
                    String::new()
                };
                out.push(format!("{rel} {:o} uid={}{content}", m.mode(), m.uid()));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

impl Topo {
    /// Unmounts this topology's bpffs (every stacked mount): the pins are
    /// lost as after a reboot or an operator's `umount`, while cls_bpf
    /// filters keep their programs (and those programs' maps) alive.
    pub fn lose_pins(&self) {
        let pin = self.pin();
        for _ in 0..8 {
            let mounted = std::fs::read_to_string("/proc/self/mounts")
                .map(|m| {
                    m.lines()
                        .any(|l| l.split(' ').nth(1) == Some(pin.to_str().unwrap()))
                })
                .unwrap_or(false);
            if !mounted {
                break;
            }
            sh(&["umount", pin.to_str().unwrap()]);
        }
        assert!(
            !self.dir.join(self.abi_dir()).join("maps").exists(),
            "pins still visible after unmounting {}",
            pin.display()
        );
    }

    /// Writes `conf` into this topology's directory (for `--conf`).
    pub fn conf_file(&self, name: &str, conf: &Value) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, conf.to_string()).unwrap();
        p
    }

    /// Runs the operator CLI (`bin`, default ours) in the node namespace;
    /// returns (exit code, stdout).
    pub fn cli(&self, bin: Option<&str>, args: &[&str]) -> (i32, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node))
            .arg(bin.unwrap_or(BIN))
            .args(args)
            .env_remove("CNI_COMMAND")
            .output()
            .expect("run the CLI");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("cni-ebpf {args:?}: {stdout}{stderr}");
        (out.status.code().unwrap_or(-1), stdout)
    }

    /// Programs attached to `dev` in the node, by cls_bpf filter or TCX
    /// link, as (kind such as `clsact/ingress` or `tcx/ingress`, program
    /// name, program id), from `bpftool net`: the same view in both attach
    /// modes.
    pub fn attached_progs(&self, dev: &str) -> Vec<(String, String, u64)> {
        let out = sh_in(&self.node, &["bpftool", "-j", "net", "show", "dev", dev]);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let mut progs = Vec::new();
        for entry in v.as_array().into_iter().flatten() {
            for k in ["tc", "tcx"] {
                for e in entry[k].as_array().into_iter().flatten() {
                    progs.push((
                        e["kind"].as_str().unwrap_or(k).to_string(),
                        e["name"].as_str().unwrap_or_default().to_string(),
                        e["id"].as_u64().or(e["prog_id"].as_u64()).unwrap_or(0),
                    ));
                }
            }
        }
        // bpftool 7.1 does not list TCX links; ask the kernel directly.
        let d = dev.to_string();
        let tcx = in_ns(&self.node, move || {
            use aya::programs::{SchedClassifier, TcAttachType};
            let mut out = Vec::new();
            for (t, dir) in [
                (TcAttachType::Ingress, "ingress"),
                (TcAttachType::Egress, "egress"),
            ] {
                if let Ok((_, infos)) = SchedClassifier::query_tcx(&d, t) {
                    for i in infos {
                        out.push((
                            format!("tcx/{dir}"),
                            i.name_as_str().unwrap_or_default().to_string(),
                            u64::from(i.id()),
                        ));
                    }
                }
            }
            out
        });
        progs.extend(tcx.join().unwrap());
        progs
    }

    /// Id of the program attached to `dir` (`ingress`/`egress`) of `dev`.
    pub fn attached_prog_id(&self, dev: &str, dir: &str) -> Option<u64> {
        self.attached_progs(dev)
            .into_iter()
            .find(|(kind, _, _)| kind.contains(dir))
            .map(|(_, _, id)| id)
    }

    /// Id of a program pinned under this topology's `progs/<hash>/`.
    pub fn pinned_prog_ids(&self, name: &str) -> Vec<u64> {
        let progs = self.dir.join(self.abi_dir()).join("progs");
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&progs).into_iter().flatten().flatten() {
            let p = e.path().join(name);
            if p.exists() {
                let out = sh(&[
                    "bpftool",
                    "-j",
                    "prog",
                    "show",
                    "pinned",
                    p.to_str().unwrap(),
                ]);
                let v: Value = serde_json::from_str(&out).unwrap();
                ids.push(v["id"].as_u64().unwrap());
            }
        }
        ids
    }
}

// The eBPF build command, shared with cni-ebpf/build.rs.
include!("../../cni-ebpf/bpf_build.rs");

/// The live-upgrade test's variant object: `cni-ebpf-bpf` with its
/// `upgrade-test` feature (a changed `from_container`), built once per test
/// process into `target/bpf-upgrade-test` (incremental after the first time).
pub fn upgrade_variant_object() -> PathBuf {
    static OBJ: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    OBJ.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = root.join("target").join("bpf-upgrade-test");
        let t0 = Instant::now();
        let st = bpf_build_command(root, &target, "upgrade-test")
            .stdout(Stdio::null())
            .status()
            .expect("run the eBPF build");
        assert!(
            st.success(),
            "building the upgrade-test object failed: {st}"
        );
        eprintln!("upgrade-test object built in {:?}", t0.elapsed());
        bpf_object_path(&target)
    })
    .clone()
}

impl Topo {
    /// "The new binary" of an upgrade: a wrapper in this topology's bin
    /// directory that runs the binary under test with `object` instead of
    /// its embedded object (honoured by test builds only).
    pub fn binary_with_object(&self, object: &Path) -> PathBuf {
        let p = self.dir.join("bin/cni-ebpf-upgraded");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nexec env CNI_EBPF_TEST_OBJECT={} {BIN} \"$@\"\n",
                object.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }
}
