//! `cargo xtask demo`: the plugin end to end on one machine, inside network
//! namespaces it creates (`cedemo-*`) and a bpffs under /run/cni-ebpf-demo.
//! Nothing in the root network namespace is touched, and everything is
//! removed afterwards, also when a step fails.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    setup,
    sh::{self, cargo, failure, workspace_root, Cmd, Context, Result},
};

const NODE: &str = "cedemo-node";
const EXT: &str = "cedemo-ext";
/// Everything the demo keeps on disk: bpffs, state, IPAM data, log.
const DIR: &str = "/run/cni-ebpf-demo";
const PORT: u16 = 8080;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a server waits for its one connection.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

struct Pod {
    ns: &'static str,
    id: &'static str,
    name: &'static str,
    /// The node port that leads to the pod's server (`portMappings`).
    host_port: u16,
}

const PODS: [Pod; 2] = [
    Pod {
        ns: "cedemo-pod1",
        id: "demo-pod1",
        name: "pod1",
        host_port: 30080,
    },
    Pod {
        ns: "cedemo-pod2",
        id: "demo-pod2",
        name: "pod2",
        host_port: 30081,
    },
];

/// The node's uplink address and the external client's.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Port of the external server the pods reach through masquerade.
const EXT_PORT: u16 = 9000;

const USAGE: &str = "usage: cargo xtask demo

As root: runs setup, builds the plugin, then inside network namespaces cedemo-node,
cedemo-ext, cedemo-pod1 and cedemo-pod2 (bpffs, state and log under
/run/cni-ebpf-demo) ADDs two pods the way a runtime does, each with a hostPort
(30080, 30081 -> 8080), reaches each pod's TCP server from the ext namespace through
the node's address, has pod1 reach a server in ext through masquerade (ext has no
route to the pods), shows `cni-ebpf inspect` and the maps that made it happen, DELs
the pods and removes everything it created.";

pub(crate) fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// All namespaces, pods first (deleting them removes their veths' node ends).
fn all_namespaces() -> Vec<&'static str> {
    PODS.iter().map(|p| p.ns).chain([NODE, EXT]).collect()
}

/// Entry point of `cargo xtask demo`.
pub fn main(args: &[OsString]) -> Result {
    if let Some(a) = args.first() {
        if matches!(a.to_str(), Some("-h" | "--help")) {
            println!("{USAGE}");
            return Ok(());
        }
        return Err(format!("demo: unknown argument {a:?}\n{USAGE}").into());
    }
    if !sh::is_root() {
        return Err("cargo xtask demo must run as root (it creates network namespaces and loads eBPF programs)".into());
    }
    setup::run(false)?;

    sh::step("build the plugin");
    let root = workspace_root();
    Cmd::new(cargo())
        .args(["build", "-p", "cni-ebpf"])
        .dir(&root)
        .run()?;
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => root.join(t),
        _ => root.join("target"),
    };
    let plugin = target.join("debug").join("cni-ebpf");
    if !plugin.exists() {
        return Err(format!("{} is missing after the build", plugin.display()).into());
    }

    sh::step("remove leftovers of an earlier demo");
    let problems = cleanup();
    if !problems.is_empty() {
        return Err(format!("cannot clean up an earlier demo: {}", problems.join("; ")).into());
    }

    let guard = Guard;
    let res = demo(&plugin);
    sh::step("clean up");
    drop(guard);
    let left = leftovers();
    if !left.is_empty() {
        return Err(format!("left behind after cleanup: {}", left.join("; ")).into());
    }
    println!("ok: no cedemo-* namespace, nothing mounted under {DIR}, {DIR} removed");
    res
}

/// Removes everything the demo creates when dropped (also on error/panic).
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        for p in cleanup() {
            eprintln!("warning: cleanup: {p}");
        }
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &str) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mps: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mp| mp == dir || mp.starts_with(&format!("{dir}/")))
        .collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mps.dedup();
    mps
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Deletes the namespaces, unmounts every bpffs under [`DIR`] (the plugin may
/// have mounted one more than once) and removes [`DIR`]. Returns problems.
fn cleanup() -> Vec<String> {
    let mut problems = Vec::new();
    for ns in all_namespaces() {
        if netns_path(ns).exists() {
            if let Err(e) = Cmd::new("ip").args(["netns", "del", ns]).run() {
                problems.push(e.to_string());
            }
        }
    }
    for _ in 0..16 {
        let mps = mounts_under(DIR);
        if mps.is_empty() {
            break;
        }
        for mp in mps {
            if let Err(e) = Cmd::new("umount").arg(&mp).run() {
                problems.push(e.to_string());
            }
        }
    }
    let still = mounts_under(DIR);
    if !still.is_empty() {
        problems.push(format!("still mounted: {}", still.join(", ")));
    } else if Path::new(DIR).exists() {
        println!("$ rm -rf {DIR}");
        if let Err(e) = std::fs::remove_dir_all(DIR) {
            problems.push(format!("rm -rf {DIR}: {e}"));
        }
    }
    problems
}

/// What is left of the demo, as reported by `ip netns list` and mountinfo.
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    match Cmd::new("ip").args(["netns", "list"]).quiet().read() {
        Ok(list) => left.extend(
            list.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with("cedemo-"))
                .map(|n| format!("netns {n}")),
        ),
        Err(e) => left.push(e.to_string()),
    }
    left.extend(mounts_under(DIR).into_iter().map(|m| format!("mount {m}")));
    if Path::new(DIR).exists() {
        left.push(format!("directory {DIR}"));
    }
    left
}

fn ip(args: &[&str]) -> Result {
    Cmd::new("ip").args(args).run()
}

/// node <-> ext over a veth created inside the namespaces, forwarding on.
fn topology() -> Result {
    sh::step("namespaces: node, ext, two pods");
    for ns in all_namespaces() {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n", NODE, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", EXT,
    ])?;
    ip(&["-n", NODE, "addr", "add", "192.0.2.1/24", "dev", "up0"])?;
    ip(&["-n", NODE, "link", "set", "up0", "up"])?;
    ip(&["-n", EXT, "addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
    ip(&["-n", EXT, "link", "set", "eth0", "up"])?;
    // The node's way out (its default route makes up0 the uplink); the
    // outside has no route to the pods.
    ip(&["-n", NODE, "route", "add", "default", "via", "192.0.2.2"])?;
    ip(&[
        "netns",
        "exec",
        NODE,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
}

/// The network config; `host_port` becomes the pod's `portMappings` (the
/// runtime's capability argument).
fn config(host_port: Option<u16>) -> String {
    let rc = host_port.map_or(String::new(), |p| {
        format!(
            r#","runtimeConfig":{{"portMappings":[{{"hostPort":{p},"containerPort":{PORT},"protocol":"tcp"}}]}}"#
        )
    });
    format!(
        r#"{{"cniVersion":"1.0.0","name":"demo","type":"cni-ebpf","bridge":"cni0","isGateway":true,"isDefaultGateway":true,"ipMasq":true,"pinPath":"{DIR}/bpf","stateDir":"{DIR}/state","logFile":"{DIR}/plugin.log","cgroupPath":"","ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.244.1.0/24"}}]],"dataDir":"{DIR}/ipam"}}{rc}}}"#
    )
}

/// Runs the plugin in the node namespace the way a runtime does; returns
/// stdout and the wall time.
fn cni(plugin: &Path, command: &str, pod: &Pod, conf: &str) -> Result<(String, Duration)> {
    let cmd = Cmd::new("nsenter")
        .arg(format!("--net={}", netns_path(NODE).display()))
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod.id)
        .env("CNI_NETNS", netns_path(pod.ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env_remove("CNI_ARGS")
        .stdin(conf);
    let t = Instant::now();
    let out = cmd.output()?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!("{} after {} ms", failure(&cmd, &out), took.as_millis()).into());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        println!("plugin stderr: {}", stderr.trim_end());
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
}

fn demo(plugin: &Path) -> Result {
    topology()?;
    std::fs::create_dir_all(DIR).context(|| format!("mkdir {DIR}"))?;
    println!(
        "\nnetwork config (stdin of pod1's ADD; pod2's maps hostPort {}):\n{}",
        PODS[1].host_port,
        pretty_json(&config(Some(PODS[0].host_port)))
    );

    let mut ips = Vec::new();
    let mut timings = Vec::new();
    for pod in &PODS {
        sh::step(&format!("ADD {} (hostPort {})", pod.name, pod.host_port));
        let (out, took) = cni(plugin, "ADD", pod, &config(Some(pod.host_port)))?;
        println!("{}", pretty_json(&out));
        println!("ADD {}: {} ms", pod.name, took.as_millis());
        timings.push(format!("ADD {} {} ms", pod.name, took.as_millis()));
        let ip = string_values(&out, "address")
            .iter()
            .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            .ok_or_else(|| format!("no IPv4 address in the ADD result of {}", pod.name))?;
        ips.push(IpAddr::V4(ip));
    }

    sh::step("hostPorts: ext -> nodeIP:hostPort -> each pod's TCP server on port 8080");
    let mut failures = Vec::new();
    let mut servers = Vec::new();
    for pod in &PODS {
        servers.push(serve_once(pod.ns, pod.name, PORT)?);
    }
    let targets: Vec<SocketAddr> = PODS
        .iter()
        .map(|p| SocketAddr::new(NODE_IP.into(), p.host_port))
        .collect();
    let replies = thread::spawn(move || -> io::Result<Vec<(io::Result<String>, Duration)>> {
        enter_netns(EXT)?;
        Ok(targets.iter().map(|t| request(t, CLIENT_TIMEOUT)).collect())
    })
    .join()
    .map_err(|_| "the client thread panicked")?
    .context(|| format!("client in {EXT}"))?;
    for ((pod, ip), (reply, took)) in PODS.iter().zip(&ips).zip(replies) {
        match reply {
            Ok(r) if !r.trim().is_empty() => println!(
                "ext -> {NODE_IP}:{} -> {ip}:{PORT} ({}): {:?} in {} ms",
                pod.host_port,
                pod.name,
                r.trim_end(),
                took.as_millis()
            ),
            Ok(_) => failures.push(format!(
                "{} ({ip}): connection closed without a reply",
                pod.name
            )),
            Err(e) => failures.push(format!(
                "{} ({ip}): {e} after {} ms",
                pod.name,
                took.as_millis()
            )),
        }
    }
    for (pod, server) in PODS.iter().zip(servers) {
        match server.join() {
            Ok(Ok(peer)) if peer == IpAddr::V4(EXT_IP) => {
                println!("{} server saw the client as {peer}", pod.name)
            }
            Ok(Ok(peer)) => failures.push(format!(
                "{} server saw the client as {peer}, not {EXT_IP}",
                pod.name
            )),
            Ok(Err(e)) => failures.push(format!("{} server: {e}", pod.name)),
            Err(_) => failures.push(format!("{} server thread panicked", pod.name)),
        }
    }

    sh::step(&format!(
        "masquerade: pod1 -> ext {EXT_IP}:{EXT_PORT} (ext has no route to the pods)"
    ));
    let server = serve_once(EXT, "ext", EXT_PORT)?;
    let to = SocketAddr::new(EXT_IP.into(), EXT_PORT);
    let (reply, took) = thread::spawn(move || {
        if let Err(e) = enter_netns(PODS[0].ns) {
            return (Err(e), Duration::ZERO);
        }
        request(&to, CLIENT_TIMEOUT)
    })
    .join()
    .map_err(|_| "the client thread panicked")?;
    match reply {
        Ok(r) => println!(
            "pod1 -> {to}: {:?} in {} ms",
            r.trim_end(),
            took.as_millis()
        ),
        Err(e) => failures.push(format!("pod1 -> {to}: {e}")),
    }
    match server.join() {
        Ok(Ok(peer)) if peer == IpAddr::V4(NODE_IP) => {
            println!("ext server saw pod1 as {peer} (the node: masqueraded)")
        }
        Ok(Ok(peer)) => failures.push(format!("ext server saw pod1 as {peer}, not {NODE_IP}")),
        Ok(Err(e)) => failures.push(format!("ext server: {e}")),
        Err(_) => failures.push("ext server thread panicked".into()),
    }

    sh::step("cni-ebpf inspect");
    inspect(plugin)?;
    let map = endpoints_map();
    match &map {
        Some(m) => {
            for name in ["endpoints", "portmap", "nat"] {
                sh::step(&format!(
                    "bpftool map dump ({name}: the entries that made it happen)"
                ));
                Cmd::new("bpftool")
                    .args(["map", "dump", "pinned"])
                    .arg(m.with_file_name(name))
                    .run()?;
            }
        }
        None => failures.push(format!("no pinned endpoints map under {DIR}/bpf")),
    }

    for pod in PODS.iter().rev() {
        sh::step(&format!("DEL {}", pod.name));
        // DEL needs no runtimeConfig: the mappings are found from the state.
        let (out, took) = cni(plugin, "DEL", pod, &config(None))?;
        if !out.trim().is_empty() {
            println!("{}", pretty_json(&out));
        }
        println!("DEL {}: {} ms", pod.name, took.as_millis());
        timings.push(format!("DEL {} {} ms", pod.name, took.as_millis()));
    }

    sh::step("after DEL");
    inspect(plugin)?;
    if let Some(m) = &map {
        let dump = Cmd::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(m)
            .read()?;
        if dump.trim() == "[]" {
            println!("ok: endpoints map is empty");
        } else {
            println!(
                "warning: endpoints map still has entries after DEL: {}",
                dump.trim()
            );
        }
    }
    let links = Cmd::new("ip").args(["-n", NODE, "-br", "link"]).read()?;
    println!("{}", links.trim_end());
    for dir in ["state", "ipam"] {
        let files = list_files(&Path::new(DIR).join(dir));
        println!(
            "{DIR}/{dir}: {}",
            if files.is_empty() {
                "(empty)".to_string()
            } else {
                files.join(" ")
            }
        );
    }

    sh::step(&format!("plugin log ({DIR}/plugin.log, last 40 lines)"));
    let log = std::fs::read_to_string(Path::new(DIR).join("plugin.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines[lines.len().saturating_sub(40)..] {
        println!("{l}");
    }

    println!("\ntimings: {}", timings.join(", "));
    if failures.is_empty() {
        println!("demo: every pod answered through its hostPort, and pod1 was masqueraded");
        Ok(())
    } else {
        Err(format!("demo failed: {}", failures.join("; ")).into())
    }
}

fn inspect(plugin: &Path) -> Result {
    Cmd::new("nsenter")
        .arg(format!("--net={}", netns_path(NODE).display()))
        .arg(plugin)
        .args(["inspect", "--pin-path"])
        .arg(format!("{DIR}/bpf"))
        .arg("--state-dir")
        .arg(format!("{DIR}/state"))
        .env_remove("CNI_COMMAND")
        .run()
}

/// `<DIR>/bpf/v<ABI>/maps/endpoints`, whatever the ABI version.
fn endpoints_map() -> Option<PathBuf> {
    std::fs::read_dir(Path::new(DIR).join("bpf"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('v'))
        .map(|e| e.path().join("maps/endpoints"))
        .find(|p| p.exists())
}

/// Files below `dir`, relative to it.
fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            }
        }
    }
    out.sort();
    out
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

const CLONE_NEWNET: i32 = 0x4000_0000;

/// Moves the calling thread (only) into network namespace `ns`.
pub(crate) fn enter_netns(ns: &str) -> io::Result<()> {
    let f = File::open(netns_path(ns))?;
    // SAFETY: `f` is an open namespace file for the duration of the call;
    // setns with CLONE_NEWNET only changes this thread's network namespace.
    if unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a thread in `ns` that listens on `port`, answers one connection
/// with `hello from <name>, you are <peer ip>` and returns the peer. Returns
/// once the socket is listening.
fn serve_once(
    ns: &'static str,
    name: &'static str,
    port: u16,
) -> Result<thread::JoinHandle<io::Result<IpAddr>>> {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || -> io::Result<IpAddr> {
        let listener = (|| {
            enter_netns(ns)?;
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
            l.set_nonblocking(true)?;
            Ok::<_, io::Error>(l)
        })();
        let listener = match listener {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return Err(e);
            }
        };
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false)?;
                    writeln!(s, "hello from {name}, you are {}", peer.ip())?;
                    return Ok(peer.ip());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no connection within {}s", SERVER_TIMEOUT.as_secs()),
                        ));
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
    });
    match rx.recv() {
        Ok(Ok(())) => {
            println!("{name}: listening on 0.0.0.0:{port} in {ns}");
            Ok(handle)
        }
        Ok(Err(e)) => Err(format!("server in {ns}: {e}").into()),
        Err(_) => Err(format!("server thread for {ns} died").into()),
    }
}

/// Connects to `to`, reads the reply until EOF.
fn request(to: &SocketAddr, timeout: Duration) -> (io::Result<String>, Duration) {
    let t = Instant::now();
    let res = (|| {
        let mut s = TcpStream::connect_timeout(to, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })();
    (res, t.elapsed())
}

/// The string values of every `"key": "..."` pair in a JSON text.
pub(crate) fn string_values(json: &str, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\"");
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        let Some(v) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(v) = v.trim_start().strip_prefix('"') else {
            continue;
        };
        let mut val = String::new();
        let mut esc = false;
        for c in v.chars() {
            match (esc, c) {
                (true, c) => {
                    val.push(c);
                    esc = false;
                }
                (false, '\\') => esc = true,
                (false, '"') => break,
                (false, c) => val.push(c),
            }
        }
        out.push(val);
    }
    out
}

/// Indents a compact JSON text (two spaces per level).
fn pretty_json(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut esc = false;
    let mut chars = s.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if let Some(&close @ ('}' | ']')) = chars.peek() {
                    chars.next();
                    out.push(c);
                    out.push(close);
                } else {
                    depth += 1;
                    out.push(c);
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_helpers() {
        let r = r#"{"cniVersion":"1.1.0","interfaces":[],"ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1"}],"dns":{}}"#;
        assert_eq!(string_values(r, "address"), vec!["10.244.1.2/24"]);
        assert_eq!(
            pretty_json(r),
            "{\n  \"cniVersion\": \"1.1.0\",\n  \"interfaces\": [],\n  \"ips\": [\n    {\n      \"address\": \"10.244.1.2/24\",\n      \"gateway\": \"10.244.1.1\"\n    }\n  ],\n  \"dns\": {}\n}"
        );
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), "/run/a b");
        assert_eq!(
            unescape_mountinfo("/run/cni-ebpf-demo/bpf"),
            "/run/cni-ebpf-demo/bpf"
        );
    }

    #[test]
    fn config_is_for_the_demo_dir() {
        let c = config(Some(30080));
        assert!(c.contains(r#""pinPath":"/run/cni-ebpf-demo/bpf""#));
        assert!(c.contains(r#""dataDir":"/run/cni-ebpf-demo/ipam""#));
        // Never the machine's root cgroup.
        assert!(c.contains(r#""cgroupPath":"""#));
        assert!(c.contains(r#""portMappings":[{"hostPort":30080,"containerPort":8080"#));
        assert!(!config(None).contains("runtimeConfig"));
    }
}
