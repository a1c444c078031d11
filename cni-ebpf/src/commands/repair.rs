//! Repair: bring every recorded attachment back onto the pinned data path
//! of this build. Runs when a build's programs are loaded ([`open`], from
//! ADD, STATUS and install) and from `cni-ebpf repair`:
//!
//! - after lost pins (a bpffs unmounted or emptied; maps and programs are
//!   new and empty, cls_bpf filters of the old programs may still be on the
//!   veths, TCX and cgroup links went with their pins);
//! - after an upgrade to a binary whose object differs (maps carried over,
//!   the old programs still attached);
//! - after a pinned map was re-created because its layout changed.
//!
//! For each complete state record whose host veth still exists it
//! republishes the endpoint and its hostPort mappings (unchanged entries are
//! left alone, so counters survive an upgrade) and puts this build's
//! programs on the veth in place of the old ones; then the uplinks and
//! socket hooks. Best effort: keeps going past a record it cannot restore.

use std::{collections::HashMap, net::IpAddr};

use crate::{
    cni::{code, CniError},
    config::NetConf,
    datapath::{AttachMode, Datapath, LoadReport, NodeSettings},
    info,
    netlink::{parse_mac, Netlink},
    state::{all_records, owner, Record},
    warn,
};

/// What a repair did.
#[derive(Debug, Default)]
pub struct Report {
    /// Attachments whose endpoint, mappings and programs are in place, as
    /// `container/ifname (host veth)`.
    pub restored: Vec<String>,
    /// Records left alone: incomplete (DEL or GC undoes them) or whose host
    /// veth is gone (GC removes them).
    pub skipped: Vec<String>,
    /// What failed.
    pub errors: Vec<String>,
}

/// The node-wide settings of `conf`.
pub fn node_settings(conf: &NetConf, reattach: bool) -> NodeSettings<'_> {
    NodeSettings {
        uplinks: conf.uplinks.as_deref(),
        no_masq: &conf.non_masquerade_cidrs,
        snat_ports: conf.snat_ports,
        est_quota: est_quota(conf.nat_map_entries),
        reserve_ports: conf.ip_masq,
        cgroup: conf.cgroup_path.as_deref(),
        attach_mode: conf.attach_mode,
        reattach,
    }
}

/// How many `nat_est` entries (two per established masqueraded flow) one
/// attachment may hold: an eighth of the map, so one pod's flood of
/// answered flows never takes the room other pods' established flows need.
pub fn est_quota(nat_map_entries: u32) -> u32 {
    (nat_map_entries / 8).max(64)
}

/// Opens the data path for `conf`, loading this build and repairing every
/// recorded attachment first when it is not ready (see
/// [`Datapath::open_or_load`]).
pub fn open(conf: &NetConf) -> Result<Datapath, CniError> {
    Datapath::open_or_load(
        &conf.pin_path,
        &conf.state_dir,
        conf.nat_map_entries,
        &mut |dp, load| {
            log_load(load);
            let r = run(dp, conf);
            for e in &r.errors {
                warn!("repair: {e}");
            }
            info!(
                "repair: {} attachment(s) restored, {} skipped, {} error(s)",
                r.restored.len(),
                r.skipped.len(),
                r.errors.len()
            );
        },
    )
    .map_err(|e| super::bpf_err("eBPF data path", e))
}

fn log_load(load: &LoadReport) {
    if load.maps_lost {
        info!("no pinned maps: loading the data path and restoring it from the state records");
    }
    for m in &load.migrated {
        warn!("{m}: refilled from the state records");
    }
}

/// Brings every recorded attachment under `conf.state_dir`, and the node's
/// uplinks and socket hooks, onto `dp`'s programs and maps.
pub fn run(dp: &Datapath, conf: &NetConf) -> Report {
    let mut r = Report::default();
    let links: HashMap<String, u32> = match Netlink::with(|nl| async move { nl.all_links().await })
    {
        Ok(l) => l.into_iter().map(|l| (l.name, l.index)).collect(),
        Err(e) => {
            r.errors.push(format!("list devices: {e}"));
            return r;
        }
    };
    for rec in all_records(&conf.state_dir) {
        let who = format!("{}/{} ({})", rec.container_id, rec.ifname, rec.host_veth);
        let (Some(mode), true) = (rec.attach_mode, rec.complete) else {
            r.skipped.push(format!("{who}: ADD did not finish"));
            continue;
        };
        let Some(&ifindex) = links.get(&rec.host_veth) else {
            r.skipped.push(format!("{who}: host veth is gone"));
            continue;
        };
        match restore(dp, &rec, ifindex, mode) {
            Ok(()) => r.restored.push(who),
            Err(e) => r.errors.push(format!("{who}: {e}")),
        }
    }
    if let Err(e) = dp.prepare_node(&node_settings(conf, true), &conf.state_dir) {
        r.errors.push(format!(
            "uplinks, node addresses, socket hooks: {}",
            crate::cni::error::chain(&e)
        ));
    }
    r
}

/// One attachment: endpoint entries and mappings first (the moment the new
/// programs run on the veth they find them), then the programs.
fn restore(dp: &Datapath, rec: &Record, ifindex: u32, mode: AttachMode) -> Result<(), String> {
    let chain = |e: &dyn std::error::Error| crate::cni::error::chain(e);
    let owner = owner(&rec.container_id, &rec.ifname);
    let nets = if rec.endpoint_nets.is_empty() {
        &rec.ips
    } else {
        &rec.endpoint_nets
    };
    let mac = parse_mac(&rec.mac).unwrap_or([0; 6]);
    if !dp.has_endpoint(nets, ifindex, mac, owner, rec.ip_masq) {
        dp.add_endpoint(
            nets,
            ifindex,
            mac,
            owner,
            rec.ip_masq,
            rec.allow_router_messages,
        )
        .map_err(|e| format!("endpoint: {}", chain(&e)))?;
    }
    let ips: Vec<IpAddr> = rec.ips.iter().map(|n| n.addr()).collect();
    dp.claim_ports(&rec.port_mappings, &ips, owner)
        .map_err(|e| format!("hostPort mappings: {}", chain(&e)))?;
    dp.reattach_endpoint(&rec.host_veth, mode)
        .map_err(|e| format!("programs: {}", chain(&e)))?;
    Ok(())
}

/// Why the data path cannot serve the recorded attachments as it is (STATUS):
/// pins missing while records of live attachments exist, or such a record's
/// endpoint missing from the map. `None` when nothing is lost.
pub fn lost(conf: &NetConf) -> Option<CniError> {
    let dp = Datapath::layout(&conf.pin_path);
    let missing = dp.missing();
    // Only this build's programs missing: an upgrade, which the next load
    // carries out; not a loss.
    if !missing.is_empty() && !dp.maps_lost() && !missing.iter().any(|m| m.starts_with("maps/")) {
        return None;
    }
    let records: Vec<Record> = all_records(&conf.state_dir)
        .into_iter()
        .filter(|r| r.complete)
        .collect();
    if records.is_empty() {
        return None;
    }
    let links: Vec<String> = Netlink::with(|nl| async move { nl.all_links().await })
        .map(|l| l.into_iter().map(|l| l.name).collect())
        .unwrap_or_default();
    let live: Vec<&Record> = records
        .iter()
        .filter(|r| links.contains(&r.host_veth))
        .collect();
    let first = live.first()?;
    let repair = "run `cni-ebpf repair` (or the next ADD restores them)";
    if !missing.is_empty() {
        let what = if missing.len() > 3 {
            format!(
                "{}, … {} pins in all",
                missing[..3].join(", "),
                missing.len()
            )
        } else {
            missing.join(", ")
        };
        return Some(CniError::new(
            code::LIMITED_CONNECTIVITY,
            format!(
                "eBPF data path pins missing under {} ({}) while {} attachment(s) have state records in {}, e.g. container {} ifname {}: their hostPorts and masquerade may not work; {repair}",
                dp.dir.display(),
                what,
                live.len(),
                conf.state_dir.display(),
                first.container_id,
                first.ifname
            ),
        ));
    }
    let entries = dp.endpoint_entries().unwrap_or_default();
    let unpublished: Vec<&&Record> = live
        .iter()
        .filter(|r| {
            let o = owner(&r.container_id, &r.ifname);
            !r.ips.iter().all(|n| {
                entries
                    .iter()
                    .any(|e| e.ip == n.addr() && e.info.owner == o)
            })
        })
        .collect();
    let r = unpublished.first()?;
    Some(CniError::new(
        code::LIMITED_CONNECTIVITY,
        format!(
            "{} attachment(s) with state records have no entry in the pinned endpoints map, e.g. container {} ifname {} ({}): {repair}",
            unpublished.len(),
            r.container_id,
            r.ifname,
            r.ips
                .iter()
                .map(|n| n.addr().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}
