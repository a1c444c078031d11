//! A real container runtime over a [`Topo`]: a busybox image built locally
//! (no registry), a containerd with its CRI plugin started in the node
//! namespace (its own config, root, state, sockets, CNI bin and conf dirs),
//! a kubelet-like CRI client, and a recording wrapper around every CNI
//! plugin containerd runs (environment, stdin, stdout, exit status), printed
//! when a test fails.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::{fd::AsFd, unix::fs::PermissionsExt, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, *,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::harness::*;

/// Name of the locally built image: the sandbox ("pause") image and the
/// server containers' image.
pub const IMAGE: &str = "localhost/cni-ebpf-test:1";
/// Port the server container listens on (TCP and UDP).
pub const SRV_PORT: u16 = 8080;

fn sha256_hex(p: &Path) -> String {
    let out = sh(&["sha256sum", p.to_str().unwrap()]);
    out.split_whitespace().next().unwrap().to_string()
}

/// The image as an OCI archive (oci-layout, index.json, blobs/sha256/…):
/// one uncompressed layer with /bin/busybox (busybox-static) and /bin/srv
/// (tests/harness/srv.c, built static here), config `Cmd` = `srv pause`.
/// Built once per test process.
pub fn image_archive() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let t0 = Instant::now();
        let work = PathBuf::from(format!(
            "/run/cni-ebpf-test/image-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&work);
        let root = work.join("rootfs");
        for d in ["bin", "etc", "dev", "proc", "sys", "tmp", "run", "var"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox (busybox-static; run `cargo xtask setup`)");
        for applet in ["sh", "sleep", "nc", "wget", "cat", "ls", "ip", "ps"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/harness/srv.c");
        sh(&[
            "gcc",
            "-static",
            "-O1",
            "-o",
            root.join("bin/srv").to_str().unwrap(),
            src.to_str().unwrap(),
        ]);
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let oci = work.join("oci");
        let blobs = oci.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let layer = work.join("layer.tar");
        sh(&[
            "tar",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
            root.to_str().unwrap(),
            "-cf",
            layer.to_str().unwrap(),
            ".",
        ]);
        let blob = |p: &Path| -> (String, u64) {
            let d = sha256_hex(p);
            let size = std::fs::metadata(p).unwrap().len();
            std::fs::rename(p, blobs.join(&d)).unwrap();
            (format!("sha256:{d}"), size)
        };
        let (layer_digest, layer_size) = blob(&layer);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/srv", "pause"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let cfg = work.join("config.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        let (cfg_digest, cfg_size) = blob(&cfg);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        });
        let mf = work.join("manifest.json");
        std::fs::write(&mf, manifest.to_string()).unwrap();
        let (mf_digest, mf_size) = blob(&mf);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mf_digest, "size": mf_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "1"},
            }],
        });
        std::fs::write(oci.join("index.json"), index.to_string()).unwrap();
        std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let archive = work.join("image.tar");
        sh(&[
            "tar",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
            oci.to_str().unwrap(),
            "-cf",
            archive.to_str().unwrap(),
            "oci-layout",
            "index.json",
            "blobs",
        ]);
        let bytes = std::fs::read(&archive).unwrap();
        let _ = std::fs::remove_dir_all(&work);
        eprintln!(
            "image {IMAGE}: {} KB OCI archive built in {:?}",
            bytes.len() / 1024,
            t0.elapsed()
        );
        bytes
    })
}

/// libcni's cache of ADD results (the DEL's prevResult).
pub const CNI_CACHE: &str = "/var/lib/cni/results";

/// The reference plugins containerd may run besides ours.
const REF_PLUGINS: &[&str] = &["loopback", "bridge", "host-local", "portmap"];

/// The recording wrapper: records one call's CNI_* environment, stdin,
/// stdout, stderr and exit status as files `<calls>/<time>-<pid>.*`, and
/// passes stdin/stdout/status through.
fn wrapper(real: &str, calls: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         d={calls}; n=$(date +%s%N)-$$-$(basename \"$0\")\n\
         env | grep '^CNI_' | sort > \"$d/$n.env\"\n\
         cat > \"$d/$n.in\"\n\
         {real} \"$@\" < \"$d/$n.in\" > \"$d/$n.out\" 2> \"$d/$n.err\"\n\
         rc=$?\n\
         echo $rc > \"$d/$n.rc\"\n\
         cat \"$d/$n.out\"; cat \"$d/$n.err\" >&2\n\
         exit $rc\n",
        calls = calls.display()
    )
}

/// One recorded plugin call.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// Plugin binary name (`cni-ebpf`, `loopback`, …).
    pub plugin: String,
    /// CNI_* variables.
    pub env: HashMap<String, String>,
    /// stdin, parsed.
    pub stdin: Value,
    /// stdout (raw).
    pub stdout: String,
    /// stderr (raw).
    pub stderr: String,
    /// Exit status.
    pub rc: i32,
}

impl PluginCall {
    /// CNI_COMMAND.
    pub fn cmd(&self) -> &str {
        self.env
            .get("CNI_COMMAND")
            .map(String::as_str)
            .unwrap_or("")
    }
    /// CNI_CONTAINERID.
    pub fn cid(&self) -> &str {
        self.env
            .get("CNI_CONTAINERID")
            .map(String::as_str)
            .unwrap_or("")
    }
    /// One line for reports.
    pub fn line(&self) -> String {
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        format!(
            "{} rc={}\n  env: {}\n  stdin: {}\n  stdout: {}{}",
            self.plugin,
            self.rc,
            env.join(" "),
            self.stdin,
            self.stdout.trim(),
            if self.stderr.trim().is_empty() {
                String::new()
            } else {
                format!("\n  stderr: {}", self.stderr.trim())
            }
        )
    }
}

/// Which CNI network containerd runs.
pub struct Net {
    /// The conflist (written as the only file of the conf dir).
    pub conflist: Value,
    /// Record every plugin call (a shell wrapper per call: a few ms each).
    pub record: bool,
}

/// A containerd (CRI) in a topology's node namespace; everything it creates
/// lives under `dir` (netns mounts included: `netns_mounts_under_state_dir`)
/// or in the cgroup trees named `cgroup_base`, and is removed on drop.
pub struct Containerd {
    /// Its directory: config, root, state, sockets, CNI dirs, log.
    pub dir: PathBuf,
    /// gRPC socket.
    pub sock: PathBuf,
    /// Node netns name.
    node: String,
    /// Top cgroup (in every v1 hierarchy and the unified one) under which
    /// the pods' `cgroup_parent`s are.
    pub cgroup_base: String,
    child: Option<Child>,
    /// Recorded calls directory.
    pub calls: PathBuf,
    /// Start count (for the log file name).
    starts: usize,
}

impl Containerd {
    /// Starts containerd for `t` with `net` and imports the image.
    pub fn start(t: &Topo, net: Net) -> Self {
        let dir = t.dir.join("ctd");
        let bin = dir.join("cni-bin");
        let conf = dir.join("net.d");
        let calls = dir.join("calls");
        for d in [&bin, &conf, &calls] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (name, real) in REF_PLUGINS
            .iter()
            .map(|p| (p.to_string(), format!("{REF_CNI}/{p}")))
            .chain(std::iter::once(("cni-ebpf".to_string(), BIN.to_string())))
        {
            let p = bin.join(&name);
            if net.record {
                std::fs::write(&p, wrapper(&real, &calls)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            } else {
                std::os::unix::fs::symlink(&real, &p).unwrap();
            }
        }
        std::fs::write(conf.join("10-test.conflist"), net.conflist.to_string()).unwrap();
        let sock = dir.join("containerd.sock");
        let cgroup_base = format!("cni-ebpf-test-{}-pods", t.id);
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

# The tasks service needs it; never used (CRI runs runc v2 shims).
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{dir}/runc-v1"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  disable_tcp_service = true
  enable_cdi = false
  netns_mounts_under_state_dir = true
  max_container_log_line_size = 16384

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"
  default_runtime_name = "runc"
  disable_snapshot_annotations = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{dir}/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{bin}"
  conf_dir = "{conf}"
  max_conf_num = 1
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = sock.display(),
            dir = dir.display(),
            bin = bin.display(),
            conf = conf.display(),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut c = Containerd {
            dir,
            sock,
            node: t.node.clone(),
            cgroup_base,
            child: None,
            calls,
            starts: 0,
        };
        c.spawn();
        let archive = c.dir.join("image.tar");
        std::fs::write(&archive, image_archive()).unwrap();
        let t0 = Instant::now();
        sh(&[
            "ctr",
            "-a",
            c.sock.to_str().unwrap(),
            "-n",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "native",
            archive.to_str().unwrap(),
        ]);
        let mut cri = c.cri();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cri.image_present(IMAGE) {
            assert!(
                Instant::now() < deadline,
                "CRI does not see the imported {IMAGE}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("image imported in {:?}", t0.elapsed());
        c
    }

    /// Starts the daemon (setns into the node namespace between fork and
    /// exec) and waits until its CRI answers Version.
    fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.dir.join(format!("containerd.{}.log", self.starts))).unwrap();
        let node = File::open(format!("/run/netns/{}", self.node)).unwrap();
        let mut cmd = Command::new("containerd");
        // A service manager's environment, not the test's (containerd passes
        // its own to every plugin).
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .current_dir(&self.dir);
        unsafe {
            cmd.pre_exec(move || {
                rustix::thread::move_into_link_name_space(
                    node.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(std::io::Error::from)
            });
        }
        let t0 = Instant::now();
        self.child = Some(cmd.spawn().expect("spawn containerd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({st}):\n{}", self.log_tail(60));
            }
            if self.sock.exists() {
                if let Ok(mut c) = Cri::connect(&self.sock) {
                    if c.version().is_ok() && c.network_ready() {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd not ready after 20 s:\n{}",
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "containerd pid {} ready in {:?}",
            self.pid().unwrap(),
            t0.elapsed()
        );
    }

    /// The daemon's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new CRI client.
    pub fn cri(&self) -> Cri {
        Cri::connect(&self.sock).expect("connect to containerd")
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same config, root and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running containerd");
        self.spawn();
    }

    /// The last `n` lines of the current log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = read(&self.dir.join(format!("containerd.{}.log", self.starts)));
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Every recorded plugin call, in order.
    pub fn calls(&self) -> Vec<PluginCall> {
        let mut stems: Vec<String> = std::fs::read_dir(&self.calls)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".rc").map(str::to_string)
            })
            .collect();
        // `<ns since epoch>-<pid>-<plugin>`: same-width timestamps sort.
        stems.sort();
        stems
            .into_iter()
            .map(|s| {
                let f = |ext: &str| read(&self.calls.join(format!("{s}.{ext}")));
                let env = f("env")
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let stdin = f("in");
                PluginCall {
                    plugin: s.splitn(3, '-').nth(2).unwrap_or("").to_string(),
                    env,
                    stdin: serde_json::from_str(&stdin).unwrap_or(Value::String(stdin)),
                    stdout: f("out"),
                    stderr: f("err"),
                    rc: f("rc").trim().parse().unwrap_or(-1),
                }
            })
            .collect()
    }

    /// Every recorded call as text.
    pub fn calls_text(&self) -> String {
        self.calls()
            .iter()
            .enumerate()
            .map(|(i, c)| format!("#{i} {}", c.line()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        for e in std::fs::read_dir(&self.calls)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }

    /// PIDs of this containerd's shims (their command line names its
    /// socket) with their socket files, and of every process in its pods'
    /// cgroups.
    fn leftovers(&self) -> (Vec<i32>, Vec<PathBuf>) {
        let sock = self.sock.to_string_lossy().into_owned();
        let (mut pids, mut sockets) = (Vec::new(), Vec::new());
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let cg = read(&e.path().join("cgroup"));
            if args.contains(&sock) {
                pids.push(pid);
                // The shim's socket is the only thing containerd 1.6 puts
                // outside its state dir: /run/containerd/s/<sha256 of
                // "<address>/<namespace>/<id>">.
                let arg = |k: &str| {
                    args.iter()
                        .position(|a| a == k)
                        .and_then(|i| args.get(i + 1).cloned())
                };
                if let (Some(ns), Some(id)) = (arg("-namespace"), arg("-id")) {
                    let out = Command::new("sh")
                        .args(["-c", "printf %s \"$1\" | sha256sum", "sh"])
                        .arg(format!("{sock}/{ns}/{id}"))
                        .output()
                        .unwrap();
                    let hex = String::from_utf8_lossy(&out.stdout);
                    if let Some(h) = hex.split_whitespace().next() {
                        sockets.push(PathBuf::from("/run/containerd/s").join(h));
                    }
                }
            } else if cg.contains(&format!("/{}/", self.cgroup_base)) {
                pids.push(pid);
            }
        }
        (pids, sockets)
    }

    /// Graceful cleanup through the CRI (stops and removes every sandbox,
    /// so the plugin's DEL runs), then the daemon and anything left.
    fn teardown(&mut self) {
        if self.child.is_some() {
            if let Ok(mut cri) = Cri::connect(&self.sock) {
                for id in cri.list_pods().unwrap_or_default() {
                    let _ = cri.stop_pod(&id);
                    let _ = cri.remove_pod(&id);
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Shims exit once their last task is deleted; anything still here
        // means a test failed half-way.
        let mut shim_sockets = Vec::new();
        for _ in 0..50 {
            let (pids, sockets) = self.leftovers();
            if pids.is_empty() {
                break;
            }
            shim_sockets.extend(sockets);
            for p in pids {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A shim killed here could not remove its socket.
        for s in shim_sockets {
            let _ = std::fs::remove_file(s);
        }
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
        // Mounts under our directory (rootfs binds, shm, netns), deepest first.
        let prefix = format!("{}/", self.dir.display());
        let mut mounts: Vec<String> = read(Path::new("/proc/self/mountinfo"))
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount")
                .args(["-l", &m])
                .stderr(Stdio::null())
                .status();
        }
        // libcni's result cache is machine-wide (containerd 1.6 has no
        // setting for it): `<network>-<sandbox id>-<ifname>`, left behind
        // only by sandboxes that were never stopped.
        let sandboxes = self.dir.join("root/io.containerd.grpc.v1.cri/sandboxes");
        for e in std::fs::read_dir(&sandboxes)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = format!("-{}-", e.file_name().to_string_lossy());
            for f in std::fs::read_dir(CNI_CACHE).into_iter().flatten().flatten() {
                if f.file_name().to_string_lossy().contains(&id) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        // The pods' cgroups in every hierarchy (v1 controllers and unified).
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let top = h.path().join(&self.cgroup_base);
            if top.exists() {
                remove_cgroup_tree(&top);
            }
        }
    }
}

/// rmdir of a cgroup and its children, deepest first.
fn remove_cgroup_tree(p: &Path) {
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(p).is_ok() || !p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: cannot remove cgroup {}", p.display());
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== plugin calls made by containerd ({}):\n{}",
                self.calls.display(),
                self.calls_text()
            );
            eprintln!("==== containerd log (tail):\n{}", self.log_tail(80));
        }
        self.teardown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A kubelet-like CRI client (CRI v1 over the unix socket); each call
/// blocks, with a 60 s deadline.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    rs: RuntimeServiceClient<Channel>,
    is: ImageServiceClient<Channel>,
}

/// A pod as kubelet describes it.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// metadata.name.
    pub name: String,
    /// metadata.uid.
    pub uid: String,
    /// metadata.namespace.
    pub namespace: String,
    /// (protocol, containerPort, hostPort, hostIP).
    pub ports: Vec<(Protocol, u16, u16, String)>,
}

impl PodSpec {
    /// A pod in namespace `default` with no ports.
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.to_string(),
            uid: format!("{name}-uid-{:08x}", std::process::id()),
            namespace: "default".into(),
            ports: Vec::new(),
        }
    }

    /// Adds a hostPort mapping.
    pub fn port(mut self, proto: Protocol, container: u16, host: u16, host_ip: &str) -> Self {
        self.ports
            .push((proto, container, host, host_ip.to_string()));
        self
    }

    /// The sandbox config kubelet would send (cgroup_parent under `base`).
    pub fn config(&self, cgroup_base: &str) -> PodSandboxConfig {
        let mut labels = HashMap::new();
        labels.insert("io.kubernetes.pod.name".into(), self.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), self.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), self.uid.clone());
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            port_mappings: self
                .ports
                .iter()
                .map(|(p, c, h, ip)| PortMapping {
                    protocol: *p as i32,
                    container_port: i32::from(*c),
                    host_port: i32::from(*h),
                    host_ip: ip.clone(),
                })
                .collect(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/{cgroup_base}/pod{}", self.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

type R<T> = Result<T, tonic::Status>;

impl Cri {
    /// Connects to `sock`.
    pub fn connect(sock: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = sock.to_path_buf();
        let ch = rt
            .block_on(async move {
                Endpoint::try_from("http://[::]")
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let p = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(p).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connect {}: {e}", sock.display()))?;
        Ok(Cri {
            rt,
            rs: RuntimeServiceClient::new(ch.clone()),
            is: ImageServiceClient::new(ch),
        })
    }

    fn run<T, F: std::future::Future<Output = R<tonic::Response<T>>>>(&self, f: F) -> R<T> {
        self.rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(60), f).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded("60 s")),
            }
        })
    }

    /// Version: (runtime name, runtime version, CRI API version).
    pub fn version(&mut self) -> R<(String, String, String)> {
        let mut c = self.rs.clone();
        let v = self.run(c.version(VersionRequest {
            version: "v1".into(),
        }))?;
        Ok((v.runtime_name, v.runtime_version, v.runtime_api_version))
    }

    /// Status: is the NetworkReady condition true (a CNI config loaded)?
    pub fn network_ready(&mut self) -> bool {
        let mut c = self.rs.clone();
        self.run(c.status(StatusRequest { verbose: false }))
            .ok()
            .and_then(|s| s.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.r#type == "NetworkReady" && c.status)
            })
    }

    /// Is `image` in the CRI's image store?
    pub fn image_present(&mut self, image: &str) -> bool {
        let mut c = self.is.clone();
        self.run(c.image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        }))
        .is_ok_and(|r| r.image.is_some())
    }

    /// RunPodSandbox.
    pub fn run_pod(&mut self, cfg: &PodSandboxConfig) -> R<String> {
        let mut c = self.rs.clone();
        Ok(self
            .run(c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            }))?
            .pod_sandbox_id)
    }

    /// CreateContainer + StartContainer of the server (`srv serve NAME 8080`).
    pub fn start_server(&mut self, pod: &str, cfg: &PodSandboxConfig, name: &str) -> R<String> {
        let mut c = self.rs.clone();
        let id = self
            .run(c.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "srv".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: vec!["/bin/srv".into()],
                    args: vec!["serve".into(), name.into(), SRV_PORT.to_string()],
                    linux: Some(LinuxContainerConfig::default()),
                    ..Default::default()
                }),
                sandbox_config: Some(cfg.clone()),
            }))?
            .container_id;
        let mut c = self.rs.clone();
        self.run(c.start_container(StartContainerRequest {
            container_id: id.clone(),
        }))?;
        Ok(id)
    }

    /// ExecSync in a container: (exit code, stdout, stderr).
    pub fn exec(&mut self, container: &str, cmd: &[&str]) -> R<(i32, String, String)> {
        let mut c = self.rs.clone();
        let r = self.run(c.exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        }))?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// PodSandboxStatus: (state, IPs), and the verbose info's netns path.
    pub fn pod_status(&mut self, id: &str) -> R<(i32, Vec<IpAddr>, Option<String>)> {
        let mut c = self.rs.clone();
        let r = self.run(c.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        }))?;
        let st = r.status.unwrap_or_default();
        let mut ips = Vec::new();
        if let Some(n) = st.network {
            for ip in std::iter::once(n.ip).chain(n.additional_ips.into_iter().map(|p| p.ip)) {
                if let Ok(a) = ip.parse() {
                    ips.push(a);
                }
            }
        }
        let netns = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<Value>(i).ok())
            .and_then(|v| {
                v["runtimeSpec"]["linux"]["namespaces"]
                    .as_array()?
                    .iter()
                    .find(|n| n["type"] == "network")?["path"]
                    .as_str()
                    .map(str::to_string)
            });
        Ok((st.state, ips, netns))
    }

    /// StopPodSandbox.
    pub fn stop_pod(&mut self, id: &str) -> R<()> {
        let mut c = self.rs.clone();
        self.run(c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))
        .map(|_| ())
    }

    /// RemovePodSandbox.
    pub fn remove_pod(&mut self, id: &str) -> R<()> {
        let mut c = self.rs.clone();
        self.run(c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))
        .map(|_| ())
    }

    /// ListPodSandbox: every sandbox id.
    pub fn list_pods(&mut self) -> R<Vec<String>> {
        let mut c = self.rs.clone();
        Ok(self
            .run(c.list_pod_sandbox(ListPodSandboxRequest { filter: None }))?
            .items
            .into_iter()
            .map(|p| p.id)
            .collect())
    }
}

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_string();
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap()
}

/// A TCP exchange from the namespace at `netns`: the server's line.
pub fn tcp_line(netns: &str, dst: SocketAddr) -> Result<String, String> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut line = String::new();
        BufReader::new(&mut s)
            .read_line(&mut line)
            .map_err(|e| format!("read from {dst}: {e}"))?;
        Ok(line.trim().to_string())
    })
}

/// A UDP question and answer from the namespace at `netns`.
pub fn udp_line(netns: &str, dst: SocketAddr) -> Result<String, String> {
    in_netns(netns, move || {
        let any: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..6 {
            s.send_to(b"hi", dst).map_err(|e| format!("send: {e}"))?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(format!("no UDP answer from {dst}"))
    })
}

/// Appends one line to a file (reports).
pub fn append(p: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    let _ = writeln!(f, "{line}");
}
