//! Opening the data path for a network, and bringing every recorded
//! attachment back onto it when this build's programs are loaded:
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
//! ADD, STATUS, install and the agent open the data path with [`open`];
//! `cni-ebpf repair` (commands/repair.rs) runs [`restore_all`] itself.

use std::{collections::HashMap, net::IpAddr};

use super::{AttachMode, BpfError, Datapath, LoadReport, NodeSettings};
use crate::{
    config::NetConf,
    info,
    netlink::{parse_mac, Netlink},
    state::{all_records, owner, Record},
    warn,
};

/// What a repair did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Attachments whose endpoint, mappings and programs are in place, as
    /// `container/ifname (host veth)`.
    pub restored: Vec<String>,
    /// Records left alone: incomplete (DEL or GC undoes them) or whose host
    /// veth is gone (GC removes them).
    pub skipped: Vec<String>,
    /// What failed.
    pub errors: Vec<String>,
}

impl RestoreReport {
    /// Logs each error (warn) and the counts (info).
    pub fn log(&self) {
        for e in &self.errors {
            warn!("repair: {e}");
        }
        info!(
            "repair: {} attachment(s) restored, {} skipped, {} error(s)",
            self.restored.len(),
            self.skipped.len(),
            self.errors.len()
        );
    }
}

/// How many `nat_est` entries (two per established masqueraded flow) one
/// attachment may hold: an eighth of the map, so one pod's flood of
/// answered flows never takes the room other pods' established flows need.
pub fn est_quota(nat_map_entries: u32) -> u32 {
    (nat_map_entries / 8).max(64)
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

/// Opens the data path for `conf`, loading this build and restoring every
/// recorded attachment first when it is not ready (see
/// [`Datapath::open_or_load`]).
pub fn open(conf: &NetConf) -> Result<Datapath, BpfError> {
    Datapath::open_or_load(
        &conf.pin_path,
        &conf.state_dir,
        conf.nat_map_entries,
        &mut |dp, load| {
            log_load(load);
            restore_all(dp, conf).log();
        },
    )
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
pub fn restore_all(dp: &Datapath, conf: &NetConf) -> RestoreReport {
    let mut r = RestoreReport::default();
    let nl = match super::node_netlink() {
        Ok(nl) => nl,
        Err(e) => {
            r.errors.push(format!("list devices: {e}"));
            return r;
        }
    };
    let links: HashMap<String, u32> = match nl.call(nl.all_links()) {
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
        match restore(dp, &nl, &rec, ifindex, mode) {
            Ok(()) => r.restored.push(who),
            Err(e) => r.errors.push(format!("{who}: {e}")),
        }
    }
    let res = super::node_netlink()
        .and_then(|nl| dp.prepare_node(&nl, &node_settings(conf, true), &conf.state_dir));
    if let Err(e) = res {
        r.errors.push(format!(
            "uplinks, node addresses, socket hooks: {}",
            crate::cni::error::chain(&e)
        ));
    }
    r
}

/// One attachment: endpoint entries and mappings first (the moment the new
/// programs run on the veth they find them), then the programs.
fn restore(
    dp: &Datapath,
    nl: &Netlink,
    rec: &Record,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(), String> {
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
    dp.reattach_endpoint(nl, &rec.host_veth, mode)
        .map_err(|e| format!("programs: {}", chain(&e)))?;
    Ok(())
}
