//! Crash safety: an ADD killed after any of its steps (a debug build's
//! `CNI_EBPF_FAILPOINT` aborts the process, with no rollback) is cleaned up
//! by DEL and GC to exactly the node it found, and a new ADD of the same
//! container then succeeds and serves traffic.

mod harness;

use harness::*;
use serde_json::json;

/// A snapshot without host-local's round-robin cursor, which any ADD moves
/// (as the reference host-local's does) and no DEL moves back.
fn snapshot(t: &Topo, pods: &[&str]) -> Snapshot {
    let mut s = Snapshot::take(t, pods);
    if let Some(files) = s.sections.get_mut("files") {
        files.retain(|l| !l.contains("last_reserved_ip"));
    }
    s
}

/// The differences between `before` and the node, once it settled: the
/// kernel drops a port-less bridge's carrier (and with it its IPv6 routes)
/// a moment after the last veth is gone.
fn settled_diff(t: &Topo, pods: &[&str], before: &Snapshot) -> Option<String> {
    let mut d = None;
    for _ in 0..30 {
        d = before.diff(&snapshot(t, pods));
        if d.is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    d
}

#[test]
fn every_add_step_survives_a_crash() {
    let t = Topo::new("crash");
    let pod = t.pod("p");
    let conf = t.conf(json!({
        "cniVersion": "1.1.0",
        "ipMasq": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
    }));
    // The node as a first pod leaves it (bridge, programs, uplinks), without pods.
    t.add(&conf, "warmup", Some(&pod), "eth0");
    t.del(&conf, "warmup", Some(&pod), "eth0");
    let netns = Some(format!("/run/netns/{pod}"));
    let gc = merged(&conf, json!({"cni.dev/valid-attachments": []}));
    let mut crashes = 0;
    let mut leftovers = Vec::new();
    // The plugin's own list: a step added there is crashed here too.
    for step in cni_ebpf::failpoint::STEPS {
        let before = snapshot(&t, &[&pod]);
        let call = Call {
            cmd: "ADD",
            cid: "c1",
            netns: netns.clone(),
            ifname: "eth0",
            failpoint: Some(step),
            ..Default::default()
        };
        let out = t.exec(BIN, &call, conf.to_string().as_bytes());
        assert_eq!(
            out.code, -1,
            "{step}: the ADD should have been killed by abort(): {} {}",
            out.stdout, out.stderr
        );
        assert!(out.stdout.is_empty(), "{step}: {}", out.stdout);
        crashes += 1;
        // The crash did leave something behind for DEL and GC to find.
        let left = before
            .diff(&snapshot(&t, &[&pod]))
            .unwrap_or_else(|| panic!("{step}: the crash left nothing to clean up"));
        leftovers.push(format!("{step}: {}", left.lines().count()));
        // What the runtime does next: DEL, then GC without the attachment.
        t.del(&conf, "c1", Some(&pod), "eth0");
        t.gc(&gc).ok();
        if let Some(d) = settled_diff(&t, &[&pod], &before) {
            panic!("after a crash {step}, DEL and GC left the node changed:\n{d}");
        }
        // The same container again: it works and serves.
        let r = t.add(&conf, "c1", Some(&pod), "eth0");
        let srv = TcpServer::start(&pod, "0.0.0.0", 80, "c1");
        let ip = result_ip(&r, false);
        assert_reply(&t.ext, ip, 80, &format!("c1 {EXT_IP}"));
        assert_reply(
            &t.ext,
            NODE_IP.parse().unwrap(),
            8080,
            &format!("c1 {EXT_IP}"),
        );
        drop(srv);
        t.del(&conf, "c1", Some(&pod), "eth0");
        if let Some(d) = settled_diff(&t, &[&pod], &before) {
            panic!("{step}: the ADD/DEL after the crash left the node changed:\n{d}");
        }
    }
    eprintln!(
        "{crashes} crashes survived; differences each left before DEL and GC: {}",
        leftovers.join(", ")
    );
}
