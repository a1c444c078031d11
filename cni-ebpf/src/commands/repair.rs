//! Repair as the commands see it: opening the data path with CNI errors
//! (STATUS, install, the agent), `cni-ebpf repair`'s walk over the records
//! (datapath/restore.rs does the work), and what STATUS reports as lost.

use crate::{
    cni::{code, CniError},
    config::NetConf,
    datapath::Datapath,
    netlink::Netlink,
    state::{all_records, owner, Record},
};

pub use crate::datapath::{node_settings, restore_all as run, RestoreReport as Report};

/// Opens the data path for `conf`, loading this build and repairing every
/// recorded attachment first when it is not ready.
pub fn open(conf: &NetConf) -> Result<Datapath, CniError> {
    crate::datapath::open(conf).map_err(|e| super::bpf_err("eBPF data path", e))
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
