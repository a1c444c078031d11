//! DEL: best-effort, complete, idempotent. Works with no state record, no
//! netns, no prevResult, no runtimeConfig, and any number of repeats; keeps
//! going past errors and reports them all at the end.

use super::{addrs, nl_err};
use crate::{
    cni::{CniEnv, CniError},
    config::{Mode, NetConf},
    datapath::Datapath,
    info,
    ipam::Ipam,
    netlink::Netlink,
    netns::Netns,
    state::{host_veth_name, Record, Store},
    warn,
};

/// Runs DEL.
pub fn exec(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let store = Store::open(&conf.state_dir, &conf.name, false)?;
    teardown(
        &store,
        conf,
        &env.container_id,
        &env.ifname,
        env.netns.as_deref().map(|p| p.display().to_string()),
        &env.path,
    )
}

/// Undoes everything an ADD of (container, ifname) did, as far as it got.
/// Shared by DEL and GC.
pub fn teardown(
    store: &Store,
    conf: &NetConf,
    container_id: &str,
    ifname: &str,
    netns: Option<String>,
    cni_path: &str,
) -> Result<(), CniError> {
    let mut errors: Vec<String> = Vec::new();
    // A corrupt record is treated as absent (everything is then found by the
    // derived names and the owner tag) and removed at the end.
    let record: Option<Record> = match store.load(container_id, ifname) {
        Ok(r) => r,
        Err(e) => {
            warn!("ignoring unreadable state record: {e}");
            None
        }
    };
    let mode = record.as_ref().map_or(conf.mode, |r| r.mode);
    let host = record
        .as_ref()
        .map(|r| r.host_veth.clone())
        .unwrap_or_else(|| host_veth_name(container_id, ifname));
    let owner = crate::state::owner(container_id, ifname);

    // Interfaces we created.
    if mode != Mode::Chained {
        let h = host.clone();
        if let Err(e) = Netlink::with(|nl| async move { nl.del_veth(&h).await }) {
            errors.push(nl_err("delete host veth", e).to_string());
        }
        // If the host side was already gone but the pod still has our veth
        // (a half-finished ADD moved on), remove it inside the pod. A missing
        // netns is normal for DEL.
        let ns_path = netns
            .or_else(|| record.as_ref().map(|r| r.netns.clone()))
            .filter(|p| !p.is_empty());
        if let Some(p) = ns_path {
            if let Ok(ns) = Netns::open(std::path::Path::new(&p)) {
                if !ns.is_current() {
                    let ifn = ifname.to_string();
                    let r = ns.run(|| Netlink::with(|nl| async move { nl.del_veth(&ifn).await }));
                    if let Ok(Err(e)) = r {
                        errors.push(nl_err("delete container veth", e).to_string());
                    }
                }
            }
        }
    }

    // Programs and map entries, if the data path exists at all (DEL never
    // loads it). After the veth is gone: removing a TCX link pin of a deleted
    // device costs nothing, detaching a live one waits for an RCU grace period.
    let dp = Datapath::layout(&conf.pin_path);
    if dp.map_path(cni_ebpf_common::map::ENDPOINTS).exists() {
        // Unpins TCX links, removes our filters where the device stays
        // (chained mode); both are no-ops when already gone.
        dp.detach_endpoint(&host);
        let res = match &record {
            Some(r) => dp.remove_endpoint(&addrs(&r.ips), r.host_ifindex, owner),
            // No record: find what this owner holds by scanning (rare path).
            None => dp.remove_owner(owner).map(drop),
        };
        if let Err(e) = res {
            errors.push(super::bpf_err("remove endpoint entries", e).to_string());
        }
        // hostPorts: from the record (DEL needs no runtimeConfig), else by owner.
        let ips = record.as_ref().map(|r| addrs(&r.ips)).unwrap_or_default();
        let known = record
            .as_ref()
            .map(|r| (r.port_mappings.as_slice(), ips.as_slice()));
        if let Err(e) = dp.release_ports(known, owner) {
            errors.push(super::bpf_err("remove hostPort mappings", e).to_string());
        }
    }

    // Addresses last: once released, an address can be handed to a new pod,
    // whose map entries must not be the ones removed above.
    if mode != Mode::Chained {
        match Ipam::from_conf(conf) {
            Ok(Some(ipam)) => {
                if let Err(e) = ipam.del(conf, container_id, ifname, cni_path) {
                    errors.push(format!("IPAM release: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("IPAM config: {e}")),
        }
    }

    // The record stays while anything is left, so a retried DEL knows what.
    super::teardown_result(&format!("DEL {container_id}/{ifname}"), &errors)?;
    store.remove(container_id, ifname)?;
    info!("DEL done: {container_id}/{ifname} ({host})");
    Ok(())
}
