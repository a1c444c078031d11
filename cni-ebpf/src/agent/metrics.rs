//! The metrics in the Prometheus text exposition format (0.0.4), read from
//! the pinned maps, the state records and the CNI call statistics file at
//! each scrape; and the health checks behind `/healthz` and `/readyz`.
//!
//! Names follow Prometheus conventions: a `cni_ebpf_` prefix, counters end
//! in `_total`, base units (`_bytes`, `_seconds`), gauges name what they
//! count. Per-endpoint series are labelled with the pod's namespace and name
//! (`K8S_POD_NAMESPACE`/`K8S_POD_NAME` of the ADD, empty outside
//! Kubernetes), the container ID, the interface and the network.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::Ordering,
    time::Instant,
};

use aya::maps::{HashMap, Map, MapData};
use cni_ebpf_common::{map, UplinkInfo};

use super::{Shared, HUNG_AFTER};
use crate::{callstats, datapath::Datapath};

/// Text of one scrape.
struct Out {
    s: String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.s, "# HELP {name} {help}");
        let _ = writeln!(self.s, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.s.push_str(name);
        if !labels.is_empty() {
            self.s.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                let _ = write!(self.s, "{k}=\"{}\"", escape(val));
            }
            self.s.push('}');
        }
        if v.is_infinite() {
            self.s.push_str(if v > 0.0 { " +Inf\n" } else { " -Inf\n" });
        } else {
            let _ = writeln!(self.s, " {v}");
        }
    }
}

/// BPF map types whose fill is meaningful (arrays are always full, a ring
/// buffer has no entries).
fn counts_entries(t: aya::maps::MapType) -> bool {
    use aya::maps::MapType as T;
    matches!(
        t,
        T::Hash | T::PerCpuHash | T::LruHash | T::LruPerCpuHash | T::LpmTrie
    )
}

/// Number of keys of a map (`BPF_MAP_GET_NEXT_KEY` walk, any key size).
fn count_keys(m: &MapData, key_size: usize, cap: u32) -> u64 {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    let fd = m.fd().as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n: u64 = 0;
    let mut first = true;
    // A map being written may be walked more than once from the start;
    // never loop past twice its capacity.
    while n <= 2 * u64::from(cap) {
        let attr = Attr {
            map_fd: fd as u32,
            pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` points at buffers of the map's key size, alive for
        // the call; the kernel reads `size_of::<Attr>()` bytes of it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                4, // BPF_MAP_GET_NEXT_KEY
                &attr as *const Attr,
                std::mem::size_of::<Attr>() as u32,
            )
        };
        if r != 0 {
            break;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    n
}

/// (map, entries, max entries) of every pinned map whose fill means something.
fn map_fill(dp: &Datapath) -> Vec<(&'static str, u64, u32)> {
    let mut out = Vec::new();
    for name in map::ALL {
        let Ok(m) = MapData::from_pin(dp.map_path(name)) else {
            continue;
        };
        let Ok(info) = m.info() else { continue };
        if !info.map_type().is_ok_and(counts_entries) {
            continue;
        }
        let max = info.max_entries();
        out.push((name, count_keys(&m, info.key_size() as usize, max), max));
    }
    out
}

/// Removes the `uplinks` entries of devices that no longer exist (their
/// ifindex may be reused by an unrelated device).
pub fn forget_gone_uplinks(dp: &Datapath) {
    let Ok(data) = MapData::from_pin(dp.map_path(map::UPLINKS)) else {
        return;
    };
    let Ok(mut m) =
        Map::from_map_data(data).and_then(HashMap::<MapData, u32, UplinkInfo>::try_from)
    else {
        return;
    };
    let gone: Vec<u32> = m
        .keys()
        .filter_map(Result::ok)
        // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into buf.
        .filter(|i| {
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            unsafe { libc::if_indextoname(*i, buf.as_mut_ptr()) }.is_null()
        })
        .collect();
    for i in gone {
        let _ = m.remove(&i);
        crate::info!("uplink ifindex {i} is gone: its entry removed");
    }
}

/// `/healthz`: the loop goes round.
pub fn healthz(s: &Shared) -> Result<(), String> {
    let beat = *s.heartbeat.lock().unwrap_or_else(|e| e.into_inner());
    let age = Instant::now().saturating_duration_since(beat);
    if age > HUNG_AFTER {
        return Err(format!("agent loop stuck: no pass for {age:?}"));
    }
    Ok(())
}

/// `/readyz`: what CNI STATUS checks (pins, recorded attachments, IPAM),
/// and the last sync of node addresses and uplinks succeeded.
pub fn readyz(s: &Shared) -> Result<(), String> {
    healthz(s)?;
    crate::commands::status::exec(&s.conf)
        .map_err(|e| format!("not ready (code {}): {}", e.code, e.msg))?;
    if let Some(e) = s
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        return Err(format!("node addresses and uplinks: {e}"));
    }
    Ok(())
}

/// One scrape.
pub fn render(s: &Shared) -> String {
    let conf = &s.conf;
    let dp = Datapath::layout(&conf.pin_path);
    let mut o = Out { s: String::new() };
    endpoints(&mut o, &dp, conf);
    node_counters(&mut o, &dp);
    nat(&mut o, &dp);

    o.family(
        "cni_ebpf_host_port_mappings",
        "gauge",
        "hostPort mappings in the portmap map.",
    );
    o.sample(
        "cni_ebpf_host_port_mappings",
        &[],
        dp.port_entries().map(|p| p.len()).unwrap_or(0) as f64,
    );

    let fill = map_fill(&dp);
    o.family(
        "cni_ebpf_map_entries",
        "gauge",
        "Entries in a pinned eBPF map (hash, LRU and LPM maps).",
    );
    for (m, n, _) in &fill {
        o.sample("cni_ebpf_map_entries", &[("map", m)], *n as f64);
    }
    o.family(
        "cni_ebpf_map_max_entries",
        "gauge",
        "Capacity of a pinned eBPF map.",
    );
    for (m, _, max) in &fill {
        o.sample("cni_ebpf_map_max_entries", &[("map", m)], f64::from(*max));
    }
    o.family(
        "cni_ebpf_map_fill_ratio",
        "gauge",
        "Entries over capacity of a pinned eBPF map (an LRU map evicts at 1).",
    );
    for (m, n, max) in &fill {
        let r = if *max == 0 {
            0.0
        } else {
            *n as f64 / f64::from(*max)
        };
        o.sample("cni_ebpf_map_fill_ratio", &[("map", m)], r);
    }

    cni_calls(&mut o, conf);
    agent(&mut o, s);
    o.s
}

/// The labels of one attachment's series: its record's pod, container,
/// interface and network. An endpoint without a record here (one of a
/// network with another state directory, or leaked) gets empty ones and its
/// owner tag, so two of them are still two series: Prometheus drops all but
/// one sample of a label set that repeats in a scrape.
fn endpoint_labels(owner: u64, r: Option<&crate::state::Record>) -> Vec<(&'static str, String)> {
    let f = |g: fn(&crate::state::Record) -> &String| r.map(|r| g(r).clone()).unwrap_or_default();
    let mut labels = vec![
        ("namespace", f(|r| &r.pod_namespace)),
        ("pod", f(|r| &r.pod_name)),
        ("container_id", f(|r| &r.container_id)),
        ("interface", f(|r| &r.ifname)),
        ("network", f(|r| &r.network)),
    ];
    if r.is_none() {
        labels.push(("owner", format!("{owner:016x}")));
    }
    labels
}

fn endpoints(o: &mut Out, dp: &Datapath, conf: &crate::config::NetConf) {
    let records = crate::state::owners(&conf.state_dir);
    // One series set per attachment (owner), whatever its address count.
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for e in dp.endpoint_entries().unwrap_or_default() {
        seen.entry(e.info.owner).or_insert(e.info.ifindex);
    }
    type Row = (Vec<(&'static str, String)>, cni_ebpf_common::EndpointStats);
    let rows: Vec<Row> = seen
        .iter()
        .map(|(owner, ifindex)| {
            (
                endpoint_labels(*owner, records.get(owner)),
                dp.endpoint_stats(*ifindex).unwrap_or_default(),
            )
        })
        .collect();
    let lab = |l: &[(&'static str, String)], extra: Option<(&'static str, &'static str)>| {
        let mut v: Vec<(&str, String)> = l.iter().map(|(k, v)| (*k, v.clone())).collect();
        if let Some((k, x)) = extra {
            v.push((k, x.to_string()));
        }
        v
    };
    let emit = |o: &mut Out, name: &str, l: Vec<(&str, String)>, v: u64| {
        let refs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        o.sample(name, &refs, v as f64);
    };
    o.family(
        "cni_ebpf_endpoint_packets_total",
        "counter",
        "Packets a pod sent (direction=from_pod) or was delivered (to_pod).",
    );
    for (l, st) in &rows {
        let n = "cni_ebpf_endpoint_packets_total";
        emit(
            o,
            n,
            lab(l, Some(("direction", "from_pod"))),
            st.from_packets,
        );
        emit(o, n, lab(l, Some(("direction", "to_pod"))), st.to_packets);
    }
    o.family(
        "cni_ebpf_endpoint_bytes_total",
        "counter",
        "Bytes a pod sent (direction=from_pod) or was delivered (to_pod).",
    );
    for (l, st) in &rows {
        let n = "cni_ebpf_endpoint_bytes_total";
        emit(o, n, lab(l, Some(("direction", "from_pod"))), st.from_bytes);
        emit(o, n, lab(l, Some(("direction", "to_pod"))), st.to_bytes);
    }
    o.family(
        "cni_ebpf_endpoint_translated_packets_total",
        "counter",
        "Packets of a pod translated (hostPort, hairpin, masquerade).",
    );
    for (l, st) in &rows {
        emit(
            o,
            "cni_ebpf_endpoint_translated_packets_total",
            lab(l, None),
            st.translated,
        );
    }
    o.family(
        "cni_ebpf_endpoint_dropped_packets_total",
        "counter",
        "Packets of a pod dropped, by reason (spoofed source; masquerade refused: no free port, or the pod's share of the ports to that destination used up).",
    );
    for (l, st) in &rows {
        let n = "cni_ebpf_endpoint_dropped_packets_total";
        emit(o, n, lab(l, Some(("reason", "spoofed"))), st.drop_spoofed);
        emit(o, n, lab(l, Some(("reason", "nat_refused"))), st.drop_nat);
    }
    o.family(
        "cni_ebpf_endpoints",
        "gauge",
        "Pod attachments published in the endpoints map.",
    );
    o.sample("cni_ebpf_endpoints", &[], rows.len() as f64);
}

fn node_counters(o: &mut Out, dp: &Datapath) {
    let counters = dp.counters().unwrap_or_default();
    o.family(
        "cni_ebpf_dropped_packets_total",
        "counter",
        "Packets the data path dropped on this node, by reason.",
    );
    for (name, v) in &counters {
        if let Some(reason) = name.strip_prefix("drop_") {
            o.sample(
                "cni_ebpf_dropped_packets_total",
                &[("reason", reason)],
                *v as f64,
            );
        }
    }
    o.family(
        "cni_ebpf_datapath_events_total",
        "counter",
        "Node-wide data path counters other than drops (passed packets, translations, socket redirects), by event.",
    );
    for (name, v) in &counters {
        if !name.starts_with("drop_") {
            o.sample(
                "cni_ebpf_datapath_events_total",
                &[("event", name)],
                *v as f64,
            );
        }
    }
}

fn nat(o: &mut Out, dp: &Datapath) {
    let entries = dp.nat_entries().unwrap_or_default();
    let mut by_kind: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for k in [
        "hostport-reply",
        "hairpin-reply",
        "masquerade",
        "masquerade-reply",
    ] {
        by_kind.insert((k, "live"), 0);
    }
    let mut ports: BTreeMap<(String, &str), BTreeSet<u16>> = BTreeMap::new();
    for e in &entries {
        let state = if e.live { "live" } else { "stale" };
        *by_kind.entry((e.kind, state)).or_default() += 1;
        if e.kind == "masquerade" && e.live {
            ports
                .entry((
                    e.to.0.ip().to_string(),
                    crate::datapath::proto_name(e.proto),
                ))
                .or_default()
                .insert(e.to.0.port());
        }
    }
    o.family(
        "cni_ebpf_nat_translations",
        "gauge",
        "Translations in the nat map, by kind, live or stale (pod gone; pruned by the agent).",
    );
    for ((kind, state), n) in &by_kind {
        o.sample(
            "cni_ebpf_nat_translations",
            &[("kind", kind), ("state", state)],
            *n as f64,
        );
    }
    o.family(
        "cni_ebpf_masquerade_ports_in_use",
        "gauge",
        "Masquerade source ports held by live flows, per uplink address and protocol.",
    );
    for ((addr, proto), set) in &ports {
        o.sample(
            "cni_ebpf_masquerade_ports_in_use",
            &[("address", addr), ("protocol", proto)],
            set.len() as f64,
        );
    }
}

fn cni_calls(o: &mut Out, conf: &crate::config::NetConf) {
    // Combinations never seen are left out (Prometheus treats a missing
    // series as zero).
    let table: callstats::Table = callstats::read(&conf.state_dir)
        .into_iter()
        .filter(|(_, _, s)| s.count > 0)
        .collect();
    o.family(
        "cni_ebpf_cni_calls_total",
        "counter",
        "CNI calls of the plugin binary on this node, by command and result.",
    );
    for (c, r, slot) in &table {
        o.sample(
            "cni_ebpf_cni_calls_total",
            &[("command", c), ("result", r)],
            slot.count as f64,
        );
    }
    let h = "cni_ebpf_cni_call_duration_seconds";
    o.family(
        h,
        "histogram",
        "Duration of CNI calls of the plugin binary, by command and result.",
    );
    for (c, r, slot) in &table {
        let mut cum = 0u64;
        for (i, n) in slot.buckets.iter().enumerate() {
            cum += n;
            let le = callstats::BUCKETS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            o.sample(
                &format!("{h}_bucket"),
                &[("command", c), ("result", r), ("le", &le)],
                cum as f64,
            );
        }
        o.sample(
            &format!("{h}_sum"),
            &[("command", c), ("result", r)],
            slot.sum_seconds,
        );
        o.sample(
            &format!("{h}_count"),
            &[("command", c), ("result", r)],
            cum as f64,
        );
    }
}

fn agent(o: &mut Out, s: &Shared) {
    let st = &s.stats;
    for (name, help, v) in [
        (
            "cni_ebpf_agent_netlink_events_total",
            "rtnetlink address, link and route messages the agent received.",
            st.events.load(Ordering::Relaxed),
        ),
        (
            "cni_ebpf_agent_syncs_total",
            "Syncs of node addresses and uplinks.",
            st.syncs.load(Ordering::Relaxed),
        ),
        (
            "cni_ebpf_agent_sync_errors_total",
            "Syncs of node addresses and uplinks that failed.",
            st.sync_errors.load(Ordering::Relaxed),
        ),
        (
            "cni_ebpf_agent_repairs_total",
            "Repairs run after lost pins or endpoints.",
            st.repairs.load(Ordering::Relaxed),
        ),
        (
            "cni_ebpf_agent_nat_pruned_total",
            "Dead nat entries the agent removed.",
            st.nat_pruned.load(Ordering::Relaxed),
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], v as f64);
    }
    o.family(
        "cni_ebpf_agent_last_sync_duration_seconds",
        "gauge",
        "Duration of the last sync of node addresses and uplinks.",
    );
    o.sample(
        "cni_ebpf_agent_last_sync_duration_seconds",
        &[],
        st.last_sync_ns.load(Ordering::Relaxed) as f64 / 1e9,
    );
    o.family(
        "cni_ebpf_agent_start_time_seconds",
        "gauge",
        "When the agent started, seconds since the epoch.",
    );
    o.sample(
        "cni_ebpf_agent_start_time_seconds",
        &[],
        s.started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_record_are_distinct_series() {
        let a = endpoint_labels(1, None);
        let b = endpoint_labels(2, None);
        assert_ne!(a, b);
        assert_eq!(
            a.last().unwrap(),
            &("owner", "0000000000000001".to_string())
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut o = Out { s: String::new() };
        o.sample("m", &[("pod", "a\"b\\c\nd")], 1.0);
        assert_eq!(o.s, "m{pod=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
