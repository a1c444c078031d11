//! The views as aligned text tables.

use serde_json::Value;

use super::{Endpoint, Link, Nat, PortMap};

/// Prints `rows` under `headers`, each column as wide as its widest cell.
fn print(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let s: Vec<String> = cells
            .zip(&w)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

pub(super) fn endpoints(eps: &[Endpoint]) {
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            let ports: Vec<String> = e
                .host_ports
                .iter()
                .map(|p| {
                    let on = if p.host_ip.is_empty() {
                        String::new()
                    } else if p.host_ip.contains(':') {
                        format!("[{}]:", p.host_ip)
                    } else {
                        format!("{}:", p.host_ip)
                    };
                    format!("{on}{}/{}->{}", p.host_port, p.protocol, p.container_port)
                })
                .collect();
            vec![
                e.who.short_id(),
                e.who.pod(),
                or_dash(&e.who.ifname),
                e.ips.join(","),
                e.host_veth.clone(),
                or_dash(&ports.join(",")),
                if e.masquerade { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    print(
        &[
            "CONTAINER",
            "POD",
            "IFNAME",
            "IPS",
            "HOST_VETH",
            "HOSTPORTS",
            "MASQ",
        ],
        &rows,
    );
}

pub(super) fn portmaps(ports: &[PortMap]) {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.protocol.clone(),
                if p.host_ip.is_empty() {
                    "*".into()
                } else {
                    p.host_ip.clone()
                },
                p.host_port.to_string(),
                p.pod_ip.clone(),
                p.container_port.to_string(),
                p.who.short_id(),
                p.who.pod(),
            ]
        })
        .collect();
    print(
        &[
            "PROTO",
            "HOST_IP",
            "HOSTPORT",
            "POD_IP",
            "PORT",
            "CONTAINER",
            "POD",
        ],
        &rows,
    );
}

pub(super) fn nat(entries: &[Nat]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|n| {
            vec![
                n.kind.clone(),
                n.scope.clone(),
                n.proto.clone(),
                n.from.clone(),
                n.to.clone(),
                n.who.short_id(),
                n.who.pod(),
            ]
        })
        .collect();
    print(
        &[
            "NAT",
            "SCOPE",
            "PROTO",
            "FLOW",
            "BECOMES",
            "CONTAINER",
            "POD",
        ],
        &rows,
    );
}

/// `counters`: the view's JSON (`node` and `endpoints`).
pub(super) fn counters(c: &Value) {
    let s = |v: &Value, k: &str| match &v[k] {
        Value::String(s) => or_dash(s),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let cols = [
        "fromPackets",
        "fromBytes",
        "toPackets",
        "toBytes",
        "dropSpoofed",
        "translated",
        "dropNat",
    ];
    let rows: Vec<Vec<String>> = c["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let pod = if s(e, "podName") == "-" {
                "-".into()
            } else {
                format!("{}/{}", s(e, "podNamespace"), s(e, "podName"))
            };
            let mut r = vec![
                s(e, "containerID").chars().take(12).collect(),
                pod,
                s(e, "hostVeth"),
            ];
            r.extend(cols.iter().map(|k| s(e, k)));
            r
        })
        .collect();
    print(
        &[
            "CONTAINER",
            "POD",
            "HOST_VETH",
            "FROM_PKTS",
            "FROM_BYTES",
            "TO_PKTS",
            "TO_BYTES",
            "SPOOFED",
            "TRANSLATED",
            "DROP_NAT",
        ],
        &rows,
    );
    println!();
    let rows: Vec<Vec<String>> = c["node"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    print(&["NODE COUNTER", "COUNT"], &rows);
}

pub(super) fn links(links: &[Link]) {
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|l| {
            vec![
                l.interface.clone(),
                if l.ifindex == 0 {
                    "-".into()
                } else {
                    l.ifindex.to_string()
                },
                l.hook.clone(),
                l.program.clone(),
                l.attach.clone(),
                l.prog_id.map_or("-".into(), |i| i.to_string()),
                l.who.short_id(),
                l.who.pod(),
            ]
        })
        .collect();
    print(
        &[
            "INTERFACE",
            "IFINDEX",
            "HOOK",
            "PROGRAM",
            "ATTACH",
            "PROG_ID",
            "CONTAINER",
            "POD",
        ],
        &rows,
    );
}
