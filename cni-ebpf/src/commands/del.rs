//! DEL: best-effort, complete, idempotent. Works with no state record, no
//! netns, no prevResult, no runtimeConfig, and any number of repeats; keeps
//! going past errors and reports them all at the end.

use super::{addrs, nl_err};
use crate::{
    cni::{CniEnv, CniError},
    config::{Mode, NetConf},
    datapath::{AttachMode, Datapath},
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
    let own = host_veth_name(container_id, ifname);
    let host = record
        .as_ref()
        .map(|r| r.host_veth.clone())
        .unwrap_or_else(|| own.clone());
    // The veth ADD made is always named after the attachment: a record that
    // names any other link (edited, copied from another node, or the
    // chained plugin's veth under a forged mode) never gets it deleted.
    let host = if mode != Mode::Chained && host != own {
        warn!("state record of {container_id}/{ifname} names link {host}, not its veth {own}: leaving {host} alone");
        own
    } else {
        host
    };
    let owner = crate::state::owner(container_id, ifname);

    // Interfaces we created.
    let mut tomb = None;
    if mode != Mode::Chained {
        let ns_path = netns
            .or_else(|| record.as_ref().map(|r| r.netns.clone()))
            .filter(|p| !p.is_empty());
        // TCX links must be unpinned after their device is gone (detaching
        // from a live device waits for RCU), so only netlink attachments
        // can leave the deletion to the reaper.
        let deferred = record
            .as_ref()
            .is_some_and(|r| r.attach_mode == Some(AttachMode::Netlink));
        match remove_veth(&host, ifname, ns_path.as_deref(), deferred) {
            Ok(t) => tomb = t,
            Err(e) => errors.push(e),
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

    // The node's neighbour entries of the pod's addresses on the bridge: ADD
    // sets them (so a reused address never keeps an old MAC), and with the
    // bridge up they would otherwise stay until the kernel's neighbour GC,
    // which the node-wide table limit (gc_thresh3) can reach first. Before
    // the release below, so no new pod holds these addresses yet.
    if mode == Mode::Bridge {
        if let Some(r) = record.as_ref().filter(|r| !r.ips.is_empty()) {
            let (bridge, ips) = (conf.bridge.clone(), addrs(&r.ips));
            let res = Netlink::with(|nl| async move {
                if let Some(br) = nl.link_by_name(&bridge).await? {
                    for ip in ips {
                        nl.del_neigh(br.index, ip).await?;
                    }
                }
                Ok(())
            });
            if let Err(e) = res {
                errors.push(nl_err("delete the pod's neighbour entries", e).to_string());
            }
        }
    }

    // Addresses last: once released, an address can be handed to a new pod,
    // whose map entries must not be the ones removed above.
    if mode != Mode::Chained {
        match Ipam::from_conf(conf) {
            Ok(Some(ipam)) => {
                let known = record.as_ref().map(|r| addrs(&r.ips)).unwrap_or_default();
                if let Err(e) = ipam.del(conf, container_id, ifname, &known, cni_path) {
                    errors.push(format!("IPAM release: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("IPAM config: {e}")),
        }
    }

    // Last, so its deletion (which holds the RTNL lock for a while) does not
    // slow the steps above.
    if let Some(t) = tomb {
        reap(t);
    }
    // The record stays while anything is left, so a retried DEL knows what.
    super::teardown_result(&format!("DEL {container_id}/{ifname}"), &errors)?;
    store.remove(container_id, ifname)?;
    info!("DEL done: {container_id}/{ifname} ({host})");
    Ok(())
}

/// Deletes a retired veth pair: in a reaper after DEL returns, or here if
/// none starts.
fn reap(tomb: String) {
    if crate::reaper::spawn(std::slice::from_ref(&tomb)) {
        return;
    }
    warn!("could not start the reaper: deleting {tomb} in place");
    if let Err(e) = Netlink::with(|nl| async move { nl.del_veth(&tomb).await }) {
        // Still down and renamed; GC deletes it.
        warn!("{}", nl_err("delete retired veth", e));
    }
}

/// Removes the veth pair of an attachment: the host side `host` in this
/// namespace, the pod side `ifname` in `netns`. With `deferred`, both are
/// only retired (down, renamed), which frees their names at once, and the
/// tombstone name to [`reap`] is returned; otherwise they are deleted here.
fn remove_veth(
    host: &str,
    ifname: &str,
    netns: Option<&str>,
    deferred: bool,
) -> Result<Option<String>, String> {
    let pod_ns = netns
        .and_then(|p| Netns::open(std::path::Path::new(p)).ok())
        .filter(|ns| !ns.is_current());
    if deferred {
        let h = host.to_string();
        let retired = Netlink::with(|nl| async move { nl.retire_veth(&h).await })
            .map_err(|e| nl_err("retire host veth", e).to_string())?;
        if let Some(tomb) = retired {
            // The pod side keeps its name until the pair is deleted: free it
            // for an ADD into the same namespace (podman reconnects do that).
            // If that fails, deleting the pair here frees it too.
            if let Some(ns) = &pod_ns {
                let ifn = ifname.to_string();
                let r = ns.run(|| Netlink::with(|nl| async move { nl.retire_veth(&ifn).await }));
                if !matches!(r, Ok(Ok(_))) {
                    warn!("could not retire {ifname} in the container: deleting the pair");
                    return Netlink::with(|nl| async move { nl.del_veth(&tomb).await })
                        .map(|()| None)
                        .map_err(|e| nl_err("delete host veth", e).to_string());
                }
            }
            return Ok(Some(tomb));
        }
    }
    let h = host.to_string();
    Netlink::with(|nl| async move { nl.del_veth(&h).await })
        .map_err(|e| nl_err("delete host veth", e).to_string())?;
    // If the host side was already gone but the pod still has our veth (a
    // half-finished ADD moved on), remove it inside the pod. A missing netns
    // is normal for DEL.
    if let Some(ns) = pod_ns {
        let ifn = ifname.to_string();
        if let Ok(Err(e)) = ns.run(|| Netlink::with(|nl| async move { nl.del_veth(&ifn).await })) {
            return Err(nl_err("delete container veth", e).to_string());
        }
    }
    Ok(None)
}
