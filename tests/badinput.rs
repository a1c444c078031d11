//! Hostile and broken input, and what the plugin leaves on disk.
//!
//! Bad input: every case is answered by the spec's error JSON
//! with the right code and a message naming the offending key or value, and
//! leaves the node exactly as it was (links, addresses, routes, filters,
//! files with their modes and contents, map entries), next to a pod that
//! keeps its hostPort and addresses.

mod harness;

use harness::*;
use serde_json::{json, Value};

/// One bad call: what it is, its environment and stdin, the expected code
/// and the words the message must contain.
struct Case {
    what: &'static str,
    cmd: &'static str,
    cid: String,
    ifname: String,
    netns: Option<String>,
    path: Option<String>,
    args: Option<String>,
    stdin: Vec<u8>,
    code: u64,
    needles: Vec<String>,
}

impl Case {
    /// An ADD of container `c1` / `eth0` into `pod` with `stdin`.
    fn add(what: &'static str, pod: &str, stdin: Vec<u8>, code: u64, needles: &[&str]) -> Self {
        Case {
            what,
            cmd: "ADD",
            cid: "c1".into(),
            ifname: "eth0".into(),
            netns: Some(format!("/run/netns/{pod}")),
            path: None,
            args: None,
            stdin,
            code,
            needles: needles.iter().map(|s| s.to_string()).collect(),
        }
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[test]
fn every_bad_input_is_a_spec_error_and_changes_nothing() {
    let t = Topo::new("bad");
    let steady = t.pod("steady");
    let pod = t.pod("p");
    let busy = t.pod("busy");
    ip_n(
        &busy,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ],
    );

    // A pod that holds the only address of the exhaustion case's range, a
    // hostPort and masquerade: the bad calls must not disturb any of it.
    let conf = t.conf(json!({"ipMasq": true}));
    let steady_conf = merged(
        &conf,
        json!({"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}),
    );
    let r = t.add(&steady_conf, "steady", Some(&steady), "eth0");
    assert_eq!(result_ip(&r, false).to_string(), "10.1.0.2");

    let regular_file = t.dir.join("regular-file");
    std::fs::write(&regular_file, "x").unwrap();
    let c = |extra: Value| bytes(&merged(&conf, extra));
    let mut big = conf.clone();
    big["padding"] = "x".repeat(1 << 20).into();
    let mut nul = conf.to_string().into_bytes();
    nul.insert(1, 0);
    let mut bad_utf8 = conf.to_string().into_bytes();
    bad_utf8.splice(1..1, [0xc3, 0x28]);

    let mut cases = vec![
        Case::add("stdin over 1 MiB", &pod, bytes(&big), 6, &["1048576"]),
        Case::add(
            "deeply nested JSON",
            &pod,
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            6,
            &["recursion limit"],
        ),
        Case::add("invalid UTF-8", &pod, bad_utf8, 6, &["UTF-8", "byte 1"]),
        Case::add("NUL byte", &pod, nul, 6, &["NUL", "byte 1"]),
        Case::add(
            "NUL inside a JSON string",
            &pod,
            c(json!({"name": "net\u{0}work"})),
            7,
            &["network name", "net\\0work"],
        ),
        Case::add(
            "not JSON",
            &pod,
            b"{not json".to_vec(),
            6,
            &["key must be a string"],
        ),
        Case::add(
            "not an object",
            &pod,
            b"[1]".to_vec(),
            6,
            &["not a JSON object"],
        ),
        Case::add(
            "unsupported version",
            &pod,
            c(json!({"cniVersion": "9.9.9"})),
            1,
            &["9.9.9"],
        ),
        Case::add(
            "name escaping",
            &pod,
            c(json!({"name": "../../etc"})),
            7,
            &["network name", "../../etc"],
        ),
        Case::add(
            "name with /",
            &pod,
            c(json!({"name": "a/b"})),
            7,
            &["network name", "a/b"],
        ),
        Case::add(
            "name ..",
            &pod,
            c(json!({"name": ".."})),
            7,
            &["network name", "\"..\""],
        ),
        Case::add(
            "name not a string",
            &pod,
            c(json!({"name": 5})),
            7,
            &["name", "5"],
        ),
        Case::add(
            "stateDir with ..",
            &pod,
            c(json!({"stateDir": format!("{}/x/../state2", t.dir.display())})),
            7,
            &["stateDir", "/x/../state2"],
        ),
        Case::add(
            "relative pinPath",
            &pod,
            c(json!({"pinPath": "bpf"})),
            7,
            &["pinPath", "\"bpf\""],
        ),
        Case::add(
            "relative ipam.dataDir",
            &pod,
            c(json!({"ipam": {"dataDir": "ipam"}})),
            7,
            &["ipam.dataDir", "\"ipam\""],
        ),
        Case::add(
            "ipam.dataDir with ..",
            &pod,
            c(json!({"ipam": {"dataDir": format!("{}/x/../ipam2", t.dir.display())}})),
            7,
            &["ipam.dataDir", "/x/../ipam2"],
        ),
        Case::add("bad mtu", &pod, c(json!({"mtu": 10})), 7, &["mtu", "10"]),
        Case::add(
            "bad mode",
            &pod,
            c(json!({"mode": "fast"})),
            7,
            &["mode", "fast"],
        ),
        Case::add(
            "bad subnet",
            &pod,
            c(json!({"ipam": {"ranges": [[{"subnet": "10.1.0.0/33"}]]}})),
            7,
            &["10.1.0.0/33"],
        ),
        Case::add(
            "ipam.type not on CNI_PATH",
            &pod,
            c(json!({"ipam": {"type": "no-such-ipam"}})),
            7,
            &["no-such-ipam"],
        ),
        Case::add(
            "ipam.type with a path",
            &pod,
            c(json!({"ipam": {"type": "../bin/sh"}})),
            7,
            &["../bin/sh"],
        ),
        Case::add(
            "hostPort 0",
            &pod,
            c(json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}})),
            7,
            &["hostPort", " 0"],
        ),
        Case::add(
            "hostPort 65536",
            &pod,
            c(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 65536, "containerPort": 80}]}}),
            ),
            7,
            &["hostPort", "65536"],
        ),
        Case::add(
            "hostPort beyond u32",
            &pod,
            c(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 5_000_000_000u64, "containerPort": 80}]}}),
            ),
            7,
            &["portMappings", "5000000000"],
        ),
        Case::add(
            "containerPort 0",
            &pod,
            c(json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 0}]}})),
            7,
            &["containerPort", " 0"],
        ),
        Case::add(
            "unknown protocol",
            &pod,
            c(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}}),
            ),
            7,
            &["protocol", "icmp"],
        ),
        Case::add(
            "bad hostIP",
            &pod,
            c(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "nodeip"}]}}),
            ),
            7,
            &["hostIP", "nodeip"],
        ),
        Case::add(
            "SCTP with a port change",
            &pod,
            c(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 9000, "containerPort": 80, "protocol": "sctp"}]}}),
            ),
            7,
            &["SCTP", "9000"],
        ),
        Case::add(
            "hostPort owned by another container",
            &pod,
            c(
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}),
            ),
            102,
            &["8080", "steady"],
        ),
        Case::add(
            "exhausted range",
            &pod,
            c(
                json!({"ipam": {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.2"}]]}}),
            ),
            100,
            &["10.1.0.2"],
        ),
        Case::add(
            "requested address taken",
            &pod,
            c(json!({"runtimeConfig": {"ips": ["10.1.0.2"]}})),
            101,
            &["10.1.0.2"],
        ),
        Case::add(
            "unmountable bpffs (pinPath under a regular file)",
            &pod,
            c(json!({"pinPath": regular_file.join("bpf")})),
            5,
            &["bpffs", "regular-file/bpf"],
        ),
        Case::add(
            "bad MAC",
            &pod,
            c(json!({"runtimeConfig": {"mac": "ff:ff:ff:ff:ff:ff"}})),
            7,
            &["MAC", "ff:ff:ff:ff:ff:ff"],
        ),
        Case::add(
            "ifname already in the pod",
            &busy,
            bytes(&conf),
            4,
            &["CNI_IFNAME", "eth0", "already exists"],
        ),
        Case {
            netns: Some(regular_file.display().to_string()),
            ..Case::add(
                "CNI_NETNS a regular file",
                &pod,
                bytes(&conf),
                4,
                &["CNI_NETNS", "regular-file"],
            )
        },
        Case {
            netns: Some(format!("/run/netns/{}", t.node)),
            ..Case::add(
                "CNI_NETNS the node's own",
                &pod,
                bytes(&conf),
                4,
                &["CNI_NETNS", "node's own network namespace"],
            )
        },
        Case {
            netns: Some("/nonexistent/ns".into()),
            ..Case::add(
                "CNI_NETNS missing file",
                &pod,
                bytes(&conf),
                4,
                &["CNI_NETNS", "/nonexistent/ns"],
            )
        },
        Case {
            netns: Some("run/netns/x".into()),
            ..Case::add(
                "CNI_NETNS relative",
                &pod,
                bytes(&conf),
                4,
                &["CNI_NETNS", "run/netns/x"],
            )
        },
        Case {
            netns: None,
            ..Case::add("CNI_NETNS missing", &pod, bytes(&conf), 4, &["CNI_NETNS"])
        },
        Case {
            path: Some("relative/bin".into()),
            ..Case::add(
                "CNI_PATH relative",
                &pod,
                bytes(&conf),
                4,
                &["CNI_PATH", "relative/bin"],
            )
        },
        Case {
            path: Some(format!("{}:bin", t.dir.join("bin").display())),
            ..Case::add(
                "CNI_PATH with a relative entry",
                &pod,
                bytes(&conf),
                4,
                &["CNI_PATH", "\"bin\""],
            )
        },
        Case {
            path: Some(String::new()),
            ..Case::add("CNI_PATH missing", &pod, bytes(&conf), 4, &["CNI_PATH"])
        },
        Case {
            args: Some("FOO=bar".into()),
            ..Case::add(
                "unknown CNI_ARGS key",
                &pod,
                bytes(&conf),
                4,
                &["CNI_ARGS", "FOO"],
            )
        },
        Case {
            args: Some("IP=10.1.0.300".into()),
            ..Case::add(
                "bad CNI_ARGS IP",
                &pod,
                bytes(&conf),
                4,
                &["CNI_ARGS", "10.1.0.300"],
            )
        },
        Case {
            cmd: "BOGUS",
            ..Case::add(
                "unknown CNI_COMMAND",
                &pod,
                bytes(&conf),
                4,
                &["CNI_COMMAND", "BOGUS"],
            )
        },
        Case {
            cmd: "CHECK",
            ..Case::add(
                "CHECK below 0.4.0",
                &pod,
                c(json!({"cniVersion": "0.3.1"})),
                1,
                &["CHECK", "0.3.1"],
            )
        },
        Case {
            cmd: "GC",
            ..Case::add(
                "GC below 1.1.0",
                &pod,
                c(json!({"cniVersion": "1.0.0"})),
                1,
                &["GC", "1.0.0"],
            )
        },
    ];
    for cid in ["a/b", "..", "a b", "-abc", "a;b"] {
        cases.push(Case {
            cid: cid.into(),
            ..Case::add(
                "bad container ID",
                &pod,
                bytes(&conf),
                4,
                &["CNI_CONTAINERID", cid],
            )
        });
    }
    cases.push(Case {
        cid: "a".repeat(600),
        ..Case::add(
            "over-long container ID",
            &pod,
            bytes(&conf),
            4,
            &["CNI_CONTAINERID", "512"],
        )
    });
    for ifname in ["a/b", "..", ".", "eth 0", "a:b", "abcdefghijklmnop"] {
        cases.push(Case {
            ifname: ifname.into(),
            ..Case::add("bad ifname", &pod, bytes(&conf), 4, &["CNI_IFNAME", ifname])
        });
    }

    let pods = [steady.as_str(), pod.as_str(), busy.as_str()];
    let before = Snapshot::take(&t, &pods);
    let mut failures = Vec::new();
    for case in &cases {
        let call = Call {
            cmd: case.cmd,
            cid: &case.cid,
            netns: case.netns.clone(),
            ifname: &case.ifname,
            args: case.args.as_deref(),
            path: case.path.clone(),
            ..Default::default()
        };
        let out = t.exec(BIN, &call, &case.stdin);
        let what = format!("{} ({}): {}", case.what, case.cmd, out.stdout.trim());
        let j = out.json.clone().unwrap_or_default();
        if out.code == 0 || j["code"].as_u64() != Some(case.code) {
            failures.push(format!("want code {}: {what}", case.code));
        }
        if out.stdout.trim().lines().count() != 1 || !j["cniVersion"].is_string() {
            failures.push(format!("not one error document: {what}"));
        }
        let msg = out.msg();
        for n in case.needles.iter().filter(|n| !msg.contains(n.as_str())) {
            failures.push(format!("message should name {n:?}: {what}"));
        }
        if let Some(diff) = before.diff(&Snapshot::take(&t, &pods)) {
            failures.push(format!("{what}: the node changed:\n{diff}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} bad inputs rejected, node unchanged after each",
        cases.len()
    );

    // The steady pod still works and then goes away completely.
    let _srv = TcpServer::start(&steady, "0.0.0.0", 80, "steady");
    assert_reply(
        &t.ext,
        NODE_IP.parse().unwrap(),
        8080,
        &format!("steady {EXT_IP}"),
    );
    t.del(&steady_conf, "steady", Some(&steady), "eth0");
    let eps = t.inspect()["endpoints"].as_array().unwrap().len();
    assert_eq!(eps, 0);
}

/// Everything the plugin creates on disk (state records, IPAM reservations,
/// lock files, the log, the bpffs pin tree) is root's alone: directories
/// 0700, files 0600, owned by root, even under a runtime's umask of 0.
#[test]
fn files_and_pins_are_private_to_root() {
    use std::os::unix::fs::MetadataExt;
    let t = Topo::new("perm");
    let pod = t.pod("p");
    let conf = t.conf(json!({
        "ipMasq": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
    }));
    let call = Call {
        cmd: "ADD",
        cid: "c1",
        netns: Some(format!("/run/netns/{pod}")),
        ifname: "eth0",
        umask: Some(0),
        ..Default::default()
    };
    t.exec(BIN, &call, conf.to_string().as_bytes()).ok();
    let mut seen = (0, 0);
    let mut wrong = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = ["state", "ipam", "bpf", "cni.log"]
        .iter()
        .map(|s| t.dir.join(s))
        .collect();
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let (want, kind) = if m.is_dir() {
            seen.0 += 1;
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            (0o700, "directory")
        } else {
            seen.1 += 1;
            (0o600, "file")
        };
        // The kernel's own entries at the bpffs root: the mount root is
        // sticky (1700 from mode=0700), `maps.debug`/`progs.debug` are its
        // read-only iterators (0400). Neither lets anyone else in.
        let kernel = p == t.pin()
            || (p.parent() == Some(&t.pin()) && p.extension().is_some_and(|x| x == "debug"));
        let ok = if kernel {
            m.mode() & 0o077 == 0
        } else {
            m.mode() & 0o7777 == want
        };
        if !ok || m.uid() != 0 || m.gid() != 0 {
            wrong.push(format!(
                "{kind} {} mode {:o} uid {} gid {}",
                p.display(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "not private to root:\n{}",
        wrong.join("\n")
    );
    // The tree really was there: state, reservations, locks, maps, programs, links.
    assert!(seen.0 >= 8 && seen.1 >= 20, "{seen:?}");
    eprintln!("{} directories and {} files checked", seen.0, seen.1);
    t.del(&conf, "c1", Some(&pod), "eth0");
}

/// libcni's `GetVersionInfo`, exactly as podman runs it to validate a
/// network (and drops the network when it fails): `CNI_COMMAND=VERSION`,
/// `CNI_CONTAINERID` empty, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` all
/// `dummy`, and a config holding only `cniVersion` on stdin. Then the same
/// with garbage in every variable VERSION does not use.
#[test]
fn libcni_version_probe_succeeds() {
    require_root();
    let probe = [
        ("CNI_CONTAINERID", ""),
        ("CNI_NETNS", "dummy"),
        ("CNI_IFNAME", "dummy"),
        ("CNI_PATH", "dummy"),
    ];
    let garbage = [
        ("CNI_CONTAINERID", "../../etc/passwd"),
        ("CNI_NETNS", "relative/netns"),
        ("CNI_IFNAME", "far-too-long-for-an-ifname/"),
        ("CNI_PATH", "bin::x"),
        ("CNI_ARGS", "UNKNOWN=1;novalue"),
    ];
    // libcni 1.0 and 1.1+ send their own version.Current().
    for (vars, stdin) in [
        (&probe[..], r#"{"cniVersion":"1.0.0"}"#),
        (&probe[..], r#"{"cniVersion":"1.1.0"}"#),
        (&garbage[..], r#"{"cniVersion":"1.1.0"}"#),
    ] {
        // A private mount namespace with its own /var/log: the probe carries
        // no logFile, so the plugin writes to the default log file, which a
        // test must not leave lines in.
        let mut cmd = std::process::Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /var/log && exec \"$0\"",
            BIN,
        ]);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", "VERSION");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(stdin.as_bytes())?;
                child.wait_with_output()
            })
            .expect("run the plugin");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{vars:?} {stdin}: {:?} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.trim()).expect("VERSION prints JSON");
        let want: Value = serde_json::from_str(stdin).unwrap();
        assert_eq!(v["cniVersion"], want["cniVersion"], "{stdout}");
        let supported = v["supportedVersions"]
            .as_array()
            .expect("supportedVersions");
        for need in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(supported.contains(&need.into()), "{need} in {stdout}");
        }
    }
}

/// ADD as containerd calls it: go-cni marshals its `PortMapping` and `DNS`
/// structs without JSON tags, so the capabilities arrive Pascal-cased, and
/// libcni passes the pod's CNI_ARGS. The hostPort then carries a real TCP
/// connection from outside the node; STATUS and GC ignore the attachment
/// variables; DEL with a netns that no longer exists removes the hostPort.
#[test]
fn containerd_pascal_case_capabilities_carry_traffic() {
    let t = Topo::new("gocmp");
    let pod = t.pod("p");
    let conf = t.conf(json!({
        "cniVersion": "1.1.0",
        "runtimeConfig": {
            "portMappings": [{"HostPort": 18080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}],
            "dns": {"Servers": ["10.96.0.10"], "Searches": ["default.svc.cluster.local"], "Options": ["ndots:5"]},
        },
    }));
    let netns = format!("/run/netns/{pod}");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=0a1b";
    let call = |cmd| Call {
        cmd,
        cid: "c1",
        netns: Some(netns.clone()),
        ifname: "eth0",
        args: Some(args),
        ..Default::default()
    };
    let r = t
        .exec(BIN, &call("ADD"), conf.to_string().as_bytes())
        .ok()
        .json
        .expect("ADD prints a result");
    let pod_ip = result_ip(&r, false);
    let _srv = TcpServer::start(&pod, "::", 80, "web");
    let node: std::net::IpAddr = NODE_IP.parse().unwrap();
    assert_reply(&t.ext, node, 18080, &format!("web ::ffff:{EXT_IP}"));
    // The pod itself is reached on containerPort, from the node.
    assert_reply(&t.node, pod_ip, 80, "web ::ffff:10.1.0.1");

    // STATUS and GC as libcni sends them: attachment variables empty or
    // anything at all.
    let junk = |cmd| Call {
        cmd,
        netns: Some("dummy".into()),
        ifname: "dummy",
        args: Some("NOT=known"),
        ..Default::default()
    };
    t.exec(BIN, &junk("STATUS"), conf.to_string().as_bytes())
        .ok();
    let gc_conf = merged(
        &conf,
        json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}),
    );
    t.exec(BIN, &junk("GC"), gc_conf.to_string().as_bytes())
        .ok();
    assert_reply(&t.ext, node, 18080, &format!("web ::ffff:{EXT_IP}"));

    // The pod's netns is gone before DEL (the runtime removed it).
    drop(_srv);
    t.del_ns(&pod);
    t.exec(BIN, &call("DEL"), conf.to_string().as_bytes()).ok();
    let _other = TcpServer::start(&t.node, "::", 18080, "node");
    // The hostPort is the node's own again: nothing is redirected.
    assert_reply(&t.ext, node, 18080, &format!("node ::ffff:{EXT_IP}"));
    let records: Vec<String> = t
        .files("state/testnet")
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .collect();
    assert!(records.is_empty(), "state records left: {records:?}");
}
