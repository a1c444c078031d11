//! Real podman (Debian 12's 4.3.1, CNI backend) driving the plugin: rootful
//! podman runs inside the topology's node namespace (entered with `nsenter
//! --net`, never `ip netns exec`) with every directory of its own under the
//! topology's directory, its containers under a cgroup parent of the test,
//! and a network whose conflist is what `podman network create` would write
//! with cni-ebpf in it: alone (main mode) or in `portmap`'s place after the
//! reference `bridge` (chained mode), `firewall` and `tuning` after it.
//! A locally built image (busybox plus a small static TCP/UDP server) serves
//! published ports; the clients are in the external namespace, in the node
//! (inside the topology's cgroup, where the socket hooks are) and in the
//! container itself.
//!
//! Every plugin podman runs (ours and the reference ones) is a recording
//! wrapper: a failing test prints each call's CNI_* environment, stdin,
//! stdout, stderr and exit status.
//!
//! Outside the topology's directory podman writes only per-container
//! transient state under names it makes unique: libcni's result cache
//! `/var/lib/cni/results/<network>-<container id>-<ifname>` (podman 4.3 has
//! no setting for it; the network name is the topology's id, and the guard
//! removes what a failed test left there), the container namespaces it
//! mounts as `/run/netns/netns-<uuid>`, and runc's state
//! `/run/runc/<container id>` (podman passes runc no `--root`, nor would
//! the `container cleanup` process conmon runs when a container exits).
//! `podman import` runs with a private, empty `/var/lib` (see
//! [`Podman::run_with`]).
//!
//! Found with it: podman (containers/common 0.50, libnetwork/cni/run.go)
//! replaces the first plugin's whole `capabilities` object with
//! `{"ips": true}` when it asks for static addresses (`network reload`,
//! `run --ip`) and that plugin does not declare `ips`; a main-mode cni-ebpf
//! declaring only `portMappings` then gets no `portMappings` on that ADD and
//! the container loses its published ports. Main-mode configs for podman
//! declare both (as here).

mod harness;

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use harness::*;
use serde_json::{json, Value};

/// Published TCP port limited to the node's 127.0.0.1.
const LOCAL_PORT: u16 = 18080;
/// Published TCP port limited to the node's ::1.
const LOCAL6_PORT: u16 = 18081;
/// Published TCP port on every node address.
const TCP_PORT: u16 = 8080;
/// Published UDP port on every node address.
const UDP_PORT: u16 = 8053;
/// A TCP server in the external namespace (egress checks).
const EXT_PORT: u16 = 9000;

/// The image's server: `serve NAME` answers every TCP connection on port 80
/// with `NAME <peer address>\n` and every UDP datagram on port 53 with
/// `NAME <peer address>` (both families, one dual-stack socket each) and
/// exits on SIGTERM (it is the container's PID 1, which has no default
/// handlers); `serve get IP PORT` prints what a TCP server at IP:PORT says.
/// Built static with the machine's gcc (no libc in the image).
const SERVE_C: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void bye(int s) { (void)s; _exit(0); }

static int get(const char *ip, const char *port) {
    struct sockaddr_in a;
    struct sockaddr_in6 a6;
    memset(&a, 0, sizeof a);
    memset(&a6, 0, sizeof a6);
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(port));
    a6.sin6_family = AF_INET6;
    a6.sin6_port = a.sin_port;
    int v6 = strchr(ip, ':') != NULL;
    if (v6 ? inet_pton(AF_INET6, ip, &a6.sin6_addr) != 1 : inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", ip);
        return 2;
    }
    alarm(5);
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (v6 ? connect(s, (struct sockaddr *)&a6, sizeof a6) : connect(s, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        return 1;
    }
    char buf[512];
    ssize_t n;
    while ((n = read(s, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    return n < 0;
}

static int listener(int type, int port) {
    int s = socket(AF_INET6, type, 0), one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(port);
    if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("bind"); exit(1); }
    if (type == SOCK_STREAM && listen(s, 64)) { perror("listen"); exit(1); }
    return s;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "get")) return get(argv[2], argv[3]);
    const char *name = argc > 1 ? argv[1] : "ctr";
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    struct pollfd fds[2] = {{listener(SOCK_STREAM, 80), POLLIN, 0}, {listener(SOCK_DGRAM, 53), POLLIN, 0}};
    printf("%s serving\n", name);
    fflush(stdout);
    for (;;) {
        if (poll(fds, 2, -1) < 0) continue;
        struct sockaddr_in6 p;
        socklen_t l = sizeof p;
        char addr[INET6_ADDRSTRLEN], buf[1500];
        if (fds[0].revents & POLLIN) {
            int c = accept(fds[0].fd, (struct sockaddr *)&p, &l);
            if (c >= 0) {
                inet_ntop(AF_INET6, &p.sin6_addr, addr, sizeof addr);
                dprintf(c, "%s %s\n", name, addr);
                close(c);
            }
        }
        l = sizeof p;
        if (fds[1].revents & POLLIN) {
            ssize_t n = recvfrom(fds[1].fd, buf, sizeof buf, 0, (struct sockaddr *)&p, &l);
            if (n >= 0) {
                inet_ntop(AF_INET6, &p.sin6_addr, addr, sizeof addr);
                int m = snprintf(buf, sizeof buf, "%s %s", name, addr);
                sendto(fds[1].fd, buf, m, 0, (struct sockaddr *)&p, l);
            }
        }
    }
}
"#;

/// Reference plugins podman's conflists (or our bridge) may call.
const REF_PLUGINS: &[&str] = &[
    "bridge",
    "host-local",
    "firewall",
    "tuning",
    "portmap",
    "loopback",
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// How cni-ebpf sits in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// cni-ebpf alone: bridge, host-local IPAM, ipMasq, hostPorts.
    Main,
    /// The reference `bridge` (host-local IPAM), then cni-ebpf in `portmap`'s place.
    Chained,
}

/// A rootful podman confined to a topology: its configuration, storage,
/// run and temporary directories under `<topology>/podman`, its network
/// config and plugin directories there too, its containers under the cgroup
/// parent `/cni-ebpf-podman-<id>`. Dropping it removes every container,
/// unmounts what podman mounted, ends what it left running (by PID, from its
/// own cgroups) and removes its cgroups.
struct Podman<'t> {
    t: &'t Topo,
    /// `<topology>/podman`.
    dir: PathBuf,
    /// The network's name (unique: the topology's id).
    net: String,
    /// `--cgroup-parent` (relative to every hierarchy's root).
    cgroup_parent: String,
    /// Container network namespaces podman reported (removed on drop if left).
    netns: Mutex<Vec<String>>,
}

impl<'t> Podman<'t> {
    fn new(t: &'t Topo, mode: Mode) -> Self {
        let dir = t.dir.join("podman");
        let p = Podman {
            t,
            net: format!("ce-{}", t.id),
            cgroup_parent: format!("/cni-ebpf-podman-{}", t.id),
            netns: Mutex::default(),
            dir,
        };
        for sub in [
            "root",
            "runroot",
            "tmp",
            "net.d",
            "plugins",
            "calls",
            "image/bin",
            "image/etc",
        ] {
            std::fs::create_dir_all(p.dir.join(sub)).unwrap();
        }
        p.write_plugins();
        p.write_config();
        std::fs::write(
            p.dir.join(format!("net.d/{}.conflist", p.net)),
            serde_json::to_string_pretty(&p.conflist(mode)).unwrap(),
        )
        .unwrap();
        p.build_image();
        p
    }

    /// The plugin directory: a recording wrapper per plugin, running the
    /// binary under test for `cni-ebpf` and Debian's reference plugins for
    /// the others. Each call gets a directory under `calls/`
    /// (`<ns since epoch>-<pid>-<plugin>`) with its CNI_* environment,
    /// stdin, stdout, stderr and exit status.
    fn write_plugins(&self) {
        let calls = self.dir.join("calls");
        let mut plugins: Vec<(&str, String)> = REF_PLUGINS
            .iter()
            .map(|p| (*p, format!("{REF_CNI}/{p}")))
            .collect();
        plugins.push(("cni-ebpf", BIN.to_string()));
        for (name, real) in plugins {
            let script = format!(
                "#!/bin/sh\n\
                 d={calls}/$(date +%s%N)-$$-{name}\n\
                 mkdir -p \"$d\"\n\
                 env | grep '^CNI_' | sort > \"$d/env\"\n\
                 cat > \"$d/stdin\"\n\
                 {real} < \"$d/stdin\" > \"$d/stdout\" 2> \"$d/stderr\"\n\
                 rc=$?\n\
                 echo $rc > \"$d/rc\"\n\
                 cat \"$d/stdout\"\n\
                 cat \"$d/stderr\" >&2\n\
                 exit $rc\n",
                calls = calls.display(),
            );
            let path = self.dir.join("plugins").join(name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// containers.conf and storage.conf: the CNI backend with our plugin and
    /// network dirs, cgroupfs, events in a file, everything under `dir`.
    fn write_config(&self) {
        let d = |s: &str| self.dir.join(s).display().to_string();
        // This machine's root lacks CAP_SYS_RESOURCE: podman's default
        // rlimits (nofile/nproc 1048576) cannot be set; these can.
        let conf = format!(
            r#"[containers]
netns = "private"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{plugins}"]
network_config_dir = "{netd}"
# Never used (every container names its network) and never written to disk.
default_network = "{net}-unused"
default_subnet = "10.255.254.0/24"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
tmp_dir = "{tmp}"
static_dir = "{root}/libpod"
volume_path = "{root}/volumes"
# crun refuses cgroup v1 hybrid mode with controllers enabled in the
# cgroup2 hierarchy, as on this machine; runc handles it.
runtime = "runc"
stop_timeout = 1
"#,
            plugins = d("plugins"),
            netd = d("net.d"),
            net = self.net,
            events = d("events.log"),
            tmp = d("tmp"),
            root = d("root"),
        );
        std::fs::write(self.dir.join("containers.conf"), conf).unwrap();
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d("root"),
            d("runroot")
        );
        std::fs::write(self.dir.join("storage.conf"), storage).unwrap();
    }

    /// The network, as `podman network create` writes it (bridge, portMappings
    /// capability, then firewall and tuning), with cni-ebpf in it.
    fn conflist(&self, mode: Mode) -> Value {
        let t = self.t;
        let ipam = json!({
            "type": "host-local",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "ranges": [
                [{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}],
                [{"subnet": "fd00:1::/64", "gateway": "fd00:1::1"}],
            ],
            "dataDir": t.dir.join("ipam"),
        });
        let first = match mode {
            Mode::Main => vec![t.conf(json!({
                "cniVersion": null,
                "name": null,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": ipam,
                // `ips` too, or podman's reload drops the portMappings
                // (see the top of this file).
                "capabilities": {"portMappings": true, "ips": true},
            }))],
            Mode::Chained => {
                let mut ours = json!({
                    "type": "cni-ebpf",
                    "ipMasq": true,
                    "capabilities": {"portMappings": true},
                    "pinPath": t.pin(),
                    "stateDir": t.dir.join("state"),
                    "logFile": t.dir.join("cni.log"),
                    "cgroupPath": t.cgroup,
                });
                force_attach_mode(&mut ours);
                vec![
                    // podman's bridge without its ipMasq: cni-ebpf masquerades.
                    json!({"type": "bridge", "bridge": "cni0", "isGateway": true,
                           "hairpinMode": true, "ipam": ipam}),
                    ours,
                ]
            }
        };
        let mut plugins = first;
        plugins.push(json!({"type": "firewall"}));
        plugins.push(json!({"type": "tuning"}));
        json!({"cniVersion": "1.0.0", "name": self.net, "plugins": plugins})
    }

    /// A local image: busybox-static (sh and friends) and the static server
    /// as its command, imported from a tar (no registry).
    fn build_image(&self) {
        let img = self.dir.join("image");
        let serve_c = self.dir.join("serve.c");
        std::fs::write(&serve_c, SERVE_C).unwrap();
        sh(&[
            "gcc",
            "-static",
            "-O1",
            "-Wall",
            "-o",
            img.join("bin/serve").to_str().unwrap(),
            serve_c.to_str().unwrap(),
        ]);
        std::fs::copy("/bin/busybox", img.join("bin/busybox"))
            .expect("/bin/busybox (busybox-static; run `cargo xtask setup`)");
        for applet in ["sh", "cat", "ls", "ip", "sleep"] {
            std::os::unix::fs::symlink("busybox", img.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.join("image.tar");
        sh(&[
            "tar",
            "-C",
            img.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ]);
        self.run_with(
            true,
            &[
                "import",
                "--change",
                r#"CMD ["/bin/serve", "web"]"#,
                tar.to_str().unwrap(),
                "localhost/cni-ebpf-test:latest",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs podman in the node namespace with this instance's configuration.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        self.run_with(false, args)
    }

    /// [`Self::run`]; with `private_var_lib`, in a mount namespace of its
    /// own where `/var/lib` is an empty tmpfs: containers/image (0.50) keeps
    /// root's blob-info cache in `/var/lib/containers/cache` whatever
    /// `--root` says, and an import writes it. Only for commands that mount
    /// nothing others must see.
    fn run_with(&self, private_var_lib: bool, args: &[&str]) -> Result<String, String> {
        let d = |s: &str| self.dir.join(s);
        let started = Instant::now();
        let mut cmd = if private_var_lib {
            let mut c = Command::new("unshare");
            c.args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs -o size=16m cni-ebpf-test /var/lib && exec \"$@\"",
                "sh",
            ]);
            c
        } else {
            Command::new("env")
        };
        let out = cmd
            .arg("timeout")
            .arg("120")
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.t.node))
            .arg("podman")
            .arg("--root")
            .arg(d("root"))
            .arg("--runroot")
            .arg(d("runroot"))
            .arg("--tmpdir")
            .arg(d("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("CONTAINERS_CONF", d("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d("storage.conf"))
            .output()
            .expect("run podman");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        eprintln!(
            "podman {} ({:.2}s): {}{stdout}{}{stderr}",
            args.join(" "),
            started.elapsed().as_secs_f64(),
            if out.status.success() { "" } else { "FAILED " },
            if stderr.is_empty() { "" } else { " / " },
        );
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "podman {args:?}: {}: {stdout} {stderr}",
                out.status
            ))
        }
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `podman run -d` of the image with the three published ports.
    #[track_caller]
    fn run_container(&self, name: &str) -> Container {
        let local = format!("127.0.0.1:{LOCAL_PORT}:80");
        let local6 = format!("[::1]:{LOCAL6_PORT}:80");
        let tcp = format!("{TCP_PORT}:80");
        let udp = format!("{UDP_PORT}:53/udp");
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.net,
            "--cgroup-parent",
            &self.cgroup_parent,
            "-p",
            &local,
            "-p",
            &local6,
            "-p",
            &tcp,
            "-p",
            &udp,
            "localhost/cni-ebpf-test:latest",
            "/bin/serve",
            name,
        ]);
        self.inspect(name)
    }

    /// The container's network as podman reports it (and its network
    /// namespace, remembered for the cleanup).
    #[track_caller]
    fn inspect(&self, name: &str) -> Container {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        let c = &v[0];
        let n = &c["NetworkSettings"]["Networks"][&self.net];
        let sandbox = c["NetworkSettings"]["SandboxKey"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(ns) = sandbox.strip_prefix("/run/netns/") {
            let mut seen = self.netns.lock().unwrap();
            if !ns.is_empty() && !seen.iter().any(|s| s == ns) {
                seen.push(ns.to_string());
            }
        }
        let addr = n["IPAddress"].as_str().unwrap_or_default();
        Container {
            name: name.to_string(),
            ip: addr
                .parse()
                .unwrap_or_else(|_| panic!("{name}: no address on {} in {n}", self.net)),
            gateway: n["Gateway"].as_str().unwrap_or_default().parse().ok(),
            ip6: n["GlobalIPv6Address"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: no IPv6 address on {} in {n}", self.net)),
            gateway6: n["IPv6Gateway"].as_str().unwrap_or_default().parse().ok(),
            mac: n["MacAddress"].as_str().unwrap_or_default().to_string(),
            sandbox,
            running: c["State"]["Running"].as_bool() == Some(true),
        }
    }

    /// Waits until the container's server answers from inside its own
    /// namespace (podman returns once the process started, not once it
    /// listens).
    #[track_caller]
    fn wait_serving(&self, c: &Container) {
        let ns = c.sandbox.trim_start_matches("/run/netns/").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tcp_get(&ns, ip("127.0.0.1"), 80) {
                Ok(l) if l.starts_with(&c.name) => return,
                r if Instant::now() > deadline => {
                    panic!("{} does not serve in {ns}: {r:?}", c.name)
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs `serve get IP PORT` inside the container: what that server said.
    fn exec_get(&self, name: &str, dst: &str, port: u16) -> Result<String, String> {
        self.run(&["exec", name, "/bin/serve", "get", dst, &port.to_string()])
    }

    /// Every recorded plugin call, in order, as text.
    fn calls(&self) -> String {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("calls"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        let mut out = String::new();
        for d in dirs {
            let f = |n: &str| read(&d.join(n)).trim().to_string();
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            let plugin = name.splitn(3, '-').nth(2).unwrap_or("?");
            out.push_str(&format!(
                "--- {plugin} (exit {})\n  env: {}\n  stdin: {}\n  stdout: {}\n",
                f("rc"),
                f("env").replace('\n', " "),
                f("stdin"),
                f("stdout"),
            ));
            let err = f("stderr");
            if !err.is_empty() {
                out.push_str(&format!("  stderr: {err}\n"));
            }
        }
        out
    }

    /// The recorded calls of one plugin: (CNI_* environment, stdin, exit status).
    fn calls_of(&self, plugin: &str) -> Vec<(String, String, String)> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("calls"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs.into_iter()
            .filter(|d| {
                d.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(&format!("-{plugin}"))
            })
            .map(|d| {
                (
                    read(&d.join("env")),
                    read(&d.join("stdin")),
                    read(&d.join("rc")).trim().to_string(),
                )
            })
            .collect()
    }

    /// The node's iptables rules (the firewall plugin's), without counters.
    fn iptables(&self) -> Vec<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.t.node))
            .arg("iptables-save")
            .output()
            .expect("iptables-save");
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                // Chain lines carry packet counters.
                Some((chain, _)) if l.starts_with(':') => chain.to_string(),
                _ => l.to_string(),
            })
            .collect();
        v.sort();
        v
    }

    /// Directories of the cgroup parent in every mounted hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mi.lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let fs = post.split(' ').next()?;
                (fs == "cgroup" || fs == "cgroup2").then(|| pre.split(' ').nth(4))?
            })
            .map(|m| Path::new(m).join(self.cgroup_parent.trim_start_matches('/')))
            .filter(|p| p.exists())
            .collect()
    }
}

/// What podman says about a container.
#[derive(Debug)]
struct Container {
    name: String,
    ip: IpAddr,
    gateway: Option<IpAddr>,
    ip6: IpAddr,
    gateway6: Option<IpAddr>,
    mac: String,
    sandbox: String,
    running: bool,
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Shown only when the test fails (or with --nocapture).
        eprintln!(
            "=== plugin calls podman made ({}):\n{}",
            self.net,
            self.calls()
        );
        eprintln!("=== cni-ebpf log:\n{}", read(&self.t.dir.join("cni.log")));
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["system", "reset", "-f"]);
        // Whatever is still running under our cgroup parent is ours:
        // conmon and container processes. End them by PID.
        for d in self.cgroup_dirs() {
            let mut stack = vec![d];
            while let Some(d) = stack.pop() {
                for pid in read(&d.join("cgroup.procs")).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        eprintln!("podman guard: killing left-over pid {pid}");
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                }
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
        }
        // Unmount what podman mounted under its directories (deepest first).
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<String> = read(Path::new("/proc/self/mounts"))
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        for ns in self.netns.lock().unwrap().drain(..) {
            let p = format!("/run/netns/{ns}");
            if Path::new(&p).exists() {
                eprintln!("podman guard: removing left-over netns {p}");
                let _ = Command::new("umount").args(["-l", &p]).status();
                let _ = std::fs::remove_file(&p);
            }
        }
        // libcni's result cache of this network.
        for e in std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}-", self.net))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // The cgroups, children first (their processes are gone).
        for _ in 0..50 {
            let mut left = false;
            for d in self.cgroup_dirs() {
                let mut all = vec![d.clone()];
                let mut i = 0;
                while i < all.len() {
                    for e in std::fs::read_dir(&all[i]).into_iter().flatten().flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            all.push(e.path());
                        }
                    }
                    i += 1;
                }
                for d in all.iter().rev() {
                    if std::fs::remove_dir(d).is_err() {
                        left = true;
                    }
                }
            }
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A snapshot of the node without host-local's round-robin cursor (any ADD
/// moves it) and without podman's own files.
fn snapshot(p: &Podman<'_>) -> (Snapshot, Vec<String>) {
    let mut s = Snapshot::take(p.t, &[]);
    if let Some(files) = s.sections.get_mut("files") {
        files.retain(|l| !l.contains("last_reserved_ip") && !l.starts_with("podman"));
    }
    (s, p.iptables())
}

/// A snapshot once the node settled after a container left: its veth gone
/// and the port-less bridge without carrier (the kernel drops it, and the
/// bridge's routes with it, a moment after the last port left).
fn settled_snapshot(p: &Podman<'_>) -> (Snapshot, Vec<String>) {
    let ours = |l: &str| l.starts_with("veth") || l.starts_with(TOMBSTONE_PREFIX);
    links_when_gone(&p.t.node, ours);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ip_n(&p.t.node, &["link", "show", "cni0"]).contains("NO-CARRIER")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    snapshot(p)
}

/// Waits until the node is as `before` (a port-less bridge loses its
/// carrier a moment after its last veth is gone; DEL's reaper deletes veths
/// moments after DEL returns), then asserts it.
#[track_caller]
fn assert_node_as(p: &Podman<'_>, before: &(Snapshot, Vec<String>), what: &str) {
    let mut last = None;
    for _ in 0..50 {
        let now = snapshot(p);
        if before.0.diff(&now.0).is_none() && before.1 == now.1 {
            return;
        }
        last = Some(now);
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = last.unwrap();
    before.0.assert_same(&now.0, what);
    assert_eq!(before.1, now.1, "{what}: iptables rules changed");
}

/// Nothing of a removed container is left: no veth, IP reservation, state
/// record, map entry or link pin.
#[track_caller]
fn assert_nothing_left(p: &Podman<'_>, what: &str) {
    let t = p.t;
    let ours = |l: &str| l.starts_with("veth") || l.starts_with(TOMBSTONE_PREFIX);
    let links: Vec<String> = links_when_gone(&t.node, ours)
        .into_iter()
        .filter(|l| ours(l))
        .collect();
    assert!(links.is_empty(), "{what}: veths left in node: {links:?}");
    let state: Vec<String> = t
        .files(&format!("state/{}", p.net))
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .collect();
    assert!(state.is_empty(), "{what}: state records left: {state:?}");
    let ipam: Vec<String> = t
        .files(&format!("ipam/{}", p.net))
        .into_iter()
        .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
        .collect();
    assert!(ipam.is_empty(), "{what}: IP reservations left: {ipam:?}");
    let insp = t.inspect();
    for key in ["endpoints", "interfaces", "portmaps"] {
        let left = insp[key].as_array().unwrap();
        assert!(left.is_empty(), "{what}: {key} entries left: {left:?}");
    }
    let pins = t.endpoint_link_pins();
    assert!(pins.is_empty(), "{what}: link pins left: {pins:?}");
    let cache: Vec<String> = std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", p.net)))
        .collect();
    assert!(cache.is_empty(), "{what}: libcni cache left: {cache:?}");
}

/// The published ports from every vantage point, in both families, with
/// the reply's content and the source address the container saw.
#[track_caller]
fn assert_served(p: &Podman<'_>, c: &Container, what: &str) {
    let t = p.t;
    let name = &c.name;
    // v4 peers as the dual-stack server prints them.
    let seen = |a: &str| {
        if a.contains(':') {
            a.to_string()
        } else {
            format!("::ffff:{a}")
        }
    };
    // From outside, to the node address: the container sees the client.
    for (node, client) in [(NODE_IP, EXT_IP), (NODE_IP6, EXT_IP6)] {
        let got = tcp_get(&t.ext, ip(node), TCP_PORT)
            .unwrap_or_else(|e| panic!("{what}: ext -> {node}:{TCP_PORT}: {e}"));
        assert_eq!(
            got,
            format!("{name} {}", seen(client)),
            "{what}: ext -> tcp {node}"
        );
        let to = SocketAddr::new(ip(node), UDP_PORT);
        let (text, from) =
            udp_ask(&t.ext, 0, to).unwrap_or_else(|e| panic!("{what}: ext -> udp {to}: {e}"));
        assert_eq!(
            text,
            format!("{name} {}", seen(client)),
            "{what}: ext -> udp {to}"
        );
        assert_eq!(
            from, to,
            "{what}: the UDP answer comes from the address the client asked"
        );
    }
    // From the node itself, through the socket hooks of the topology's
    // cgroup: 127.0.0.1 and ::1 (the mappings' hostIPs) and the node
    // addresses; the container sees the node's address on the bridge.
    let gw = c.gateway.expect("podman reports the gateway").to_string();
    let gw6 = c
        .gateway6
        .expect("podman reports the IPv6 gateway")
        .to_string();
    for (dst, port, src) in [
        ("127.0.0.1", LOCAL_PORT, &gw),
        (NODE_IP, TCP_PORT, &gw),
        ("::1", LOCAL6_PORT, &gw6),
        (NODE_IP6, TCP_PORT, &gw6),
    ] {
        let got = node_tcp_get(t, true, ip(dst), port)
            .unwrap_or_else(|e| panic!("{what}: node -> {dst}:{port}: {e}"));
        assert_eq!(
            got,
            format!("{name} {}", seen(src)),
            "{what}: node -> {dst}:{port}"
        );
    }
    let got = node_udp_ask(t, ip("127.0.0.1"), UDP_PORT)
        .unwrap_or_else(|e| panic!("{what}: node -> udp 127.0.0.1:{UDP_PORT}: {e}"));
    assert_eq!(got, format!("{name} {}", seen(&gw)), "{what}: node -> udp");
    // The loopback mappings are the node's own: not reachable from outside.
    for (node, port) in [(NODE_IP, LOCAL_PORT), (NODE_IP6, LOCAL6_PORT)] {
        let r = tcp_get(&t.ext, ip(node), port);
        assert!(
            r.is_err(),
            "{what}: ext reached {node}:{port}, a loopback-only port: {r:?}"
        );
    }
}

/// What podman asked for is what the maps hold: the loopback mappings for
/// their family, the others for each of the container's addresses.
#[track_caller]
fn assert_portmaps(t: &Topo, c: &Container) {
    let row = |proto: &str, host_ip: &str, host_port: u16, pod: IpAddr, port: u16| {
        format!("{proto} [{host_ip}]:{host_port} -> {pod} {port}")
    };
    let mut got: Vec<String> = t.inspect()["portmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            row(
                m["protocol"].as_str().unwrap(),
                m["hostIP"].as_str().unwrap(),
                m["hostPort"].as_u64().unwrap() as u16,
                ip(m["podIP"].as_str().unwrap()),
                m["containerPort"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        row("tcp", "127.0.0.1", LOCAL_PORT, c.ip, 80),
        row("tcp", "::1", LOCAL6_PORT, c.ip6, 80),
    ];
    for pod in [c.ip, c.ip6] {
        want.push(row("tcp", "", TCP_PORT, pod, 80));
        want.push(row("udp", "", UDP_PORT, pod, 53));
    }
    want.sort();
    assert_eq!(got, want, "{}: hostPort map entries", c.name);
}

/// The whole life of a published container under podman with `mode`.
fn lifecycle(tag: &str, mode: Mode) {
    let started = Instant::now();
    let t = Topo::new(tag);
    let p = Podman::new(&t, mode);
    let _ext = TcpServer::start(&t.ext, "::", EXT_PORT, "ext");

    // podman validated the network with libcni's VERSION probe.
    let nets = p.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        nets.lines().any(|l| l == p.net),
        "podman does not list {}: {nets}",
        p.net
    );

    let c = p.run_container("web");
    assert!(c.running, "{c:?}");
    p.wait_serving(&c);
    assert_served(&p, &c, "run");
    assert_portmaps(&t, &c);
    // The ADD got podman's portMappings as a capability argument.
    let adds: Vec<_> = p
        .calls_of("cni-ebpf")
        .into_iter()
        .filter(|(env, _, _)| env.contains("CNI_COMMAND=ADD"))
        .collect();
    assert_eq!(adds.len(), 1, "{adds:?}");
    let stdin: Value = serde_json::from_str(&adds[0].1).unwrap();
    assert_eq!(
        stdin["runtimeConfig"]["portMappings"]
            .as_array()
            .map(Vec::len),
        Some(4),
        "{stdin}"
    );

    for (node, ext, seen) in [
        (NODE_IP, EXT_IP, format!("::ffff:{NODE_IP}")),
        (NODE_IP6, EXT_IP6, NODE_IP6.to_string()),
    ] {
        // Hairpin: the container reaches its own published port through
        // the node address, and sees that node address as the source.
        let got = p
            .exec_get("web", node, TCP_PORT)
            .unwrap_or_else(|e| panic!("hairpin via {node}: {e}"));
        assert_eq!(got, format!("web {seen}"), "hairpin via {node}");
        // Egress is masqueraded: the outside sees the node's address.
        let got = p
            .exec_get("web", ext, EXT_PORT)
            .unwrap_or_else(|e| panic!("egress to {ext}: {e}"));
        assert_eq!(got, format!("ext {seen}"), "egress masquerade to {ext}");
    }

    // `network reload`: DEL + ADD asking for the same addresses (one
    // address goes in CNI_ARGS `IP=`, several in the `ips` capability).
    p.ok(&["network", "reload", "web"]);
    let r = p.inspect("web");
    assert_eq!(
        (r.ip, r.ip6, &r.mac),
        (c.ip, c.ip6, &c.mac),
        "reload keeps the addresses"
    );
    let owner = if mode == Mode::Main {
        "cni-ebpf"
    } else {
        "bridge"
    };
    let (env, stdin, _) = p
        .calls_of(owner)
        .into_iter()
        .rfind(|(env, _, _)| env.contains("CNI_COMMAND=ADD"))
        .unwrap();
    for a in [c.ip, c.ip6] {
        assert!(
            env.contains(&a.to_string()) || stdin.contains(&a.to_string()),
            "reload's ADD does not ask for {a}: {env} {stdin}"
        );
    }
    assert_served(&p, &r, "after network reload");

    // `restart`: DEL, then ADD in a new namespace.
    p.ok(&["restart", "-t", "0", "web"]);
    let r = p.inspect("web");
    assert!(r.running, "{r:?}");
    assert_ne!(r.sandbox, c.sandbox, "restart makes a new namespace");
    // The plugin saw a DEL of the old namespace, then an ADD in the new one.
    let calls = p.calls_of("cni-ebpf");
    let last = |cmd: &str| {
        calls
            .iter()
            .rfind(|(env, _, _)| env.contains(&format!("CNI_COMMAND={cmd}\n")))
            .map(|(env, _, _)| env.clone())
            .unwrap_or_default()
    };
    let (del, add) = (last("DEL"), last("ADD"));
    assert!(
        del.contains(&format!("CNI_NETNS={}\n", c.sandbox)),
        "restart's DEL: {del}"
    );
    assert!(
        add.contains(&format!("CNI_NETNS={}\n", r.sandbox)),
        "restart's ADD: {add}"
    );
    p.wait_serving(&r);
    assert_served(&p, &r, "after restart");
    assert_portmaps(&t, &r);

    // `rm -f`: nothing of the container is left.
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    assert_nothing_left(&p, "rm -f");
    assert!(tcp_get(&t.ext, ip(NODE_IP), TCP_PORT).is_err());

    // A second container's whole life leaves the node exactly as it was
    // (the node-wide bridge, programs and pins stay).
    let before = settled_snapshot(&p);
    let c2 = p.run_container("web2");
    p.wait_serving(&c2);
    assert_served(&p, &c2, "second container");
    p.ok(&["rm", "-f", "-t", "0", "web2"]);
    assert_nothing_left(&p, "rm -f of the second container");
    assert_node_as(&p, &before, "run + rm -f of a second container");

    // Every call podman made to the plugin succeeded.
    for (env, stdin, rc) in p.calls_of("cni-ebpf") {
        assert_eq!(rc, "0", "{env} {stdin}");
    }
    eprintln!("{tag}: {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn podman_main_mode() {
    lifecycle("pdm", Mode::Main);
}

#[test]
fn podman_chained_after_bridge() {
    lifecycle("pdc", Mode::Chained);
}
