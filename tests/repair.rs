//! Repair and upgrade, end to end: pods serving through hostPorts while the
//! pins are lost (the topology's bpffs unmounted) or the binary's eBPF object
//! changes; STATUS, `cni-ebpf status`, `cni-ebpf repair` and a plain ADD
//! bring every old pod back through its hostPort.

mod harness;

use std::net::IpAddr;

use harness::*;
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Pod `i`: serves TCP on port 80 behind hostPort 18000+i.
fn pod_conf(t: &Topo, i: u16) -> Value {
    t.conf(json!({
        "cniVersion": "1.1.0",
        "runtimeConfig": {"portMappings": [{"hostPort": 18000 + i, "containerPort": 80}]},
    }))
}

/// Starts pods 1..=n with servers; returns their namespaces and servers.
fn serving_pods(t: &Topo, n: u16) -> (Vec<String>, Vec<TcpServer>) {
    let mut nss = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=n {
        let ns = t.pod(&format!("p{i}"));
        t.add(&pod_conf(t, i), &format!("pod{i}"), Some(&ns), "eth0");
        servers.push(TcpServer::start(&ns, "::", 80, &format!("pod{i}")));
        nss.push(ns);
    }
    (nss, servers)
}

/// Every pod 1..=n answers from outside through its hostPort.
#[track_caller]
fn assert_all_serve(t: &Topo, n: u16) {
    for i in 1..=n {
        assert_reply(
            &t.ext,
            ip(NODE_IP),
            18000 + i,
            &format!("pod{i} ::ffff:{EXT_IP}"),
        );
    }
}

fn status(t: &Topo) -> CniOut {
    t.cni("STATUS", &pod_conf(t, 0), "", None, "")
}

/// The pod's host veth (from its state record).
fn host_veth(t: &Topo, cid: &str) -> String {
    let rec = read(&t.dir.join(format!("state/testnet/{cid}:eth0.json")));
    let v: Value = serde_json::from_str(&rec).unwrap();
    v["hostVeth"].as_str().unwrap().to_string()
}

#[test]
fn lost_pins_status_then_repair_restores_every_host_port() {
    let t = Topo::new("rpl");
    let (_nss, _servers) = serving_pods(&t, 3);
    assert_all_serve(&t, 3);
    status(&t).ok();
    let conf_file = t.conf_file("net.conf", &pod_conf(&t, 0));
    let conf_arg = conf_file.to_str().unwrap();

    t.lose_pins();
    let st = status(&t);
    assert_eq!(st.err_code(), 51, "STATUS after lost pins: {}", st.stdout);
    for want in ["pins missing", "maps/endpoints", "3 attachment(s)"] {
        assert!(
            st.msg().contains(want),
            "STATUS message lacks {want:?}: {}",
            st.msg()
        );
    }
    let (code, out) = t.cli(None, &["status", "--conf", conf_arg]);
    assert_eq!(code, 1, "cni-ebpf status after lost pins: {out}");
    assert!(
        out.contains("code 51") && out.contains("pins missing"),
        "{out}"
    );

    let (code, out) = t.cli(None, &["repair", "--conf", conf_arg]);
    assert_eq!(code, 0, "cni-ebpf repair: {out}");
    assert!(out.contains("3 restored, 0 skipped, 0 error(s)"), "{out}");
    status(&t).ok();
    let (code, out) = t.cli(None, &["status", "--conf", conf_arg]);
    assert_eq!((code, out.trim()), (0, "ready"));
    // Every endpoint and mapping is back in the new maps, and the old veths
    // run the newly loaded programs (the uplink's old filter was replaced
    // too, so without the restored entries no hostPort would answer).
    let ins = t.inspect();
    assert_eq!(ins["portmaps"].as_array().unwrap().len(), 6, "{ins}");
    assert_eq!(ins["endpoints"].as_array().unwrap().len(), 3, "{ins}");
    let new_prog = t.pinned_prog_ids("from_container");
    assert_eq!(new_prog.len(), 1, "one build pinned: {new_prog:?}");
    assert_eq!(
        t.attached_prog_id(&host_veth(&t, "pod1"), "ingress"),
        Some(new_prog[0]),
        "pod1's veth runs the reloaded from_container"
    );
    assert_all_serve(&t, 3);
    // A second repair finds everything in place and changes nothing.
    let (code, out) = t.cli(
        None,
        &[
            "repair",
            "--conf",
            conf_arg,
            "--pin-path",
            t.pin().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 restored"), "{out}");
    assert_all_serve(&t, 3);

    // Lost again: this time a plain ADD of a new pod repairs the old ones.
    t.lose_pins();
    assert_eq!(status(&t).err_code(), 51);
    let p4 = t.pod("p4");
    t.add(&pod_conf(&t, 4), "pod4", Some(&p4), "eth0");
    let _s4 = TcpServer::start(&p4, "::", 80, "pod4");
    assert_all_serve(&t, 4);
    status(&t).ok();
    let log = read(&t.dir.join("cni.log"));
    assert!(
        log.contains("repair: 3 attachment(s) restored, 0 skipped, 0 error(s)"),
        "ADD's repair not logged"
    );

    // DEL still cleans up a repaired pod completely.
    t.del(&pod_conf(&t, 1), "pod1", Some(&_nss[0]), "eth0");
    let ins = t.inspect();
    assert!(
        !ins["portmaps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["hostPort"] == 18001),
        "{ins}"
    );
}

#[test]
fn repair_skips_records_whose_veth_is_gone_and_status_ignores_them() {
    let t = Topo::new("rps");
    let (nss, mut servers) = serving_pods(&t, 2);
    t.lose_pins();
    // pod2's namespace (and so its veth pair) disappears, as after a crash;
    // its server's thread holds the namespace until it stops.
    drop(servers.pop());
    t.del_ns(&nss[1]);
    let gone = host_veth(&t, "pod2");
    for _ in 0..100 {
        if !t.node_links().contains(&gone) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!t.node_links().contains(&gone), "{gone} still there");
    let st = status(&t);
    assert_eq!(st.err_code(), 51, "{}", st.stdout);
    assert!(st.msg().contains("1 attachment(s)"), "{}", st.msg());
    let conf_file = t.conf_file("net.conf", &pod_conf(&t, 0));
    let (code, out) = t.cli(None, &["repair", "--conf", conf_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 restored, 1 skipped"), "{out}");
    assert!(out.contains("host veth is gone"), "{out}");
    assert_all_serve(&t, 1);
    status(&t).ok();
}

/// An echo server for one long-lived connection: every line comes back
/// prefixed with `name`.
fn echo_server(ns: &str, port: u16, name: &'static str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = in_ns(ns, move || {
        let l = std::net::TcpListener::bind(("::", port)).unwrap();
        tx.send(()).unwrap();
        if let Ok((c, _)) = l.accept() {
            use std::io::{BufRead, Write};
            let mut w = c.try_clone().unwrap();
            for line in std::io::BufReader::new(c).lines() {
                let Ok(line) = line else { break };
                if writeln!(w, "{name} {line}").is_err() {
                    break;
                }
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
}

/// One round trip on the long-lived connection.
#[track_caller]
fn exchange(conn: &mut std::io::BufReader<std::net::TcpStream>, msg: &str) -> String {
    use std::io::{BufRead, Write};
    writeln!(conn.get_mut(), "{msg}").expect("write on the long-lived connection");
    let mut line = String::new();
    conn.read_line(&mut line)
        .expect("read on the long-lived connection");
    line.trim().to_string()
}

fn prog_tag(id: u64) -> String {
    let out = sh(&["bpftool", "-j", "prog", "show", "id", &id.to_string()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["tag"].as_str().unwrap().to_string()
}

#[test]
fn live_upgrade_to_a_changed_object_keeps_connections_and_mappings() {
    let variant = upgrade_variant_object();
    let t = Topo::new("rpu");
    let (nss, _servers) = serving_pods(&t, 2);
    // A long-lived connection through pod1's second hostPort.
    let c = t.conf(json!({
        "cniVersion": "1.1.0",
        "runtimeConfig": {"portMappings": [{"hostPort": 18100, "containerPort": 81}]},
    }));
    let pe = t.pod("pe");
    t.add(&c, "podecho", Some(&pe), "eth0");
    echo_server(&pe, 81, "echo");
    let stream = in_ns(&t.ext, || {
        std::net::TcpStream::connect_timeout(
            &(NODE_IP.parse::<IpAddr>().unwrap(), 18100).into(),
            std::time::Duration::from_secs(3),
        )
    })
    .join()
    .unwrap()
    .expect("connect to the echo hostPort");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut conn = std::io::BufReader::new(stream);
    assert_eq!(exchange(&mut conn, "before"), "echo before");

    let old_veth = host_veth(&t, "pod1");
    let old_id = t
        .attached_prog_id(&old_veth, "ingress")
        .expect("pod1 attached");
    let old_up = t
        .attached_prog_id("up0", "ingress")
        .expect("uplink attached");
    let old_tag = prog_tag(old_id);

    // The upgrade: the runtime now runs a binary whose object differs; its
    // first ADD loads the new programs and moves everything onto them.
    let new_bin = t.binary_with_object(&variant);
    let p3 = t.pod("p3");
    let call = Call {
        cmd: "ADD",
        cid: "pod3",
        netns: Some(format!("/run/netns/{p3}")),
        ifname: "eth0",
        ..Default::default()
    };
    t.exec(
        new_bin.to_str().unwrap(),
        &call,
        pod_conf(&t, 3).to_string().as_bytes(),
    )
    .ok();
    let _s3 = TcpServer::start(&p3, "::", 80, "pod3");

    let ids = t.pinned_prog_ids("from_container");
    assert_eq!(ids.len(), 2, "both builds pinned side by side: {ids:?}");
    let new_id = t
        .attached_prog_id(&host_veth(&t, "pod3"), "ingress")
        .unwrap();
    assert_ne!(new_id, old_id);
    assert_ne!(
        prog_tag(new_id),
        old_tag,
        "the new pod runs the changed program"
    );
    assert!(ids.contains(&new_id));
    // Every old veth and the uplink were moved onto the new programs too.
    assert_eq!(t.attached_prog_id(&old_veth, "ingress"), Some(new_id));
    let new_up = t.attached_prog_id("up0", "ingress").unwrap();
    assert_ne!(new_up, old_up, "uplink program replaced");

    // The connection lived through it, and every mapping answers.
    assert_eq!(exchange(&mut conn, "after"), "echo after");
    assert_all_serve(&t, 3);
    let ins = t.inspect();
    assert_eq!(ins["portmaps"].as_array().unwrap().len(), 8, "{ins}");
    assert_eq!(exchange(&mut conn, "still"), "echo still");
    status(&t).ok();
    drop(nss);
}

#[test]
fn incompatible_pinned_map_is_detected_and_migrated_by_add() {
    let t = Topo::new("rpm");
    let (_nss, _servers) = serving_pods(&t, 2);
    // The pins are lost and a `portmap` with the wrong value size (an older
    // layout) sits at the expected path.
    t.lose_pins();
    let pin = t.pin();
    sh(&[
        "mount",
        "-t",
        "bpf",
        "-o",
        "mode=0700",
        "bpf",
        pin.to_str().unwrap(),
    ]);
    let maps = t.dir.join(t.abi_dir()).join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let bad = maps.join("portmap");
    sh(&[
        "bpftool",
        "map",
        "create",
        bad.to_str().unwrap(),
        "type",
        "hash",
        "key",
        "20",
        "value",
        "8",
        "entries",
        "16",
        "name",
        "portmap",
    ]);
    let info = |p: &std::path::Path| -> Value {
        serde_json::from_str(&sh(&[
            "bpftool",
            "-j",
            "map",
            "show",
            "pinned",
            p.to_str().unwrap(),
        ]))
        .unwrap()
    };
    assert_eq!(info(&bad)["bytes_value"], 8);

    let p3 = t.pod("p3");
    t.add(&pod_conf(&t, 3), "pod3", Some(&p3), "eth0");
    let _s3 = TcpServer::start(&p3, "::", 80, "pod3");
    let now = info(&bad);
    assert_eq!(
        (now["bytes_key"].as_u64(), now["bytes_value"].as_u64()),
        (Some(20), Some(32)),
        "portmap re-created with the object's layout: {now}"
    );
    let log = read(&t.dir.join("cni.log"));
    assert!(
        log.contains("map portmap re-created: pinned type 1 key 20 value 8 bytes"),
        "migration not logged"
    );
    // The old pods' mappings were refilled from their state records.
    assert_all_serve(&t, 3);
    status(&t).ok();
}
