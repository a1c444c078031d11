//! DEL, as the reference plugins' `cmdDel`: best-effort, complete,
//! idempotent. Works with no state record, no netns, no prevResult, no
//! runtimeConfig, and any number of repeats; keeps going past errors and
//! reports them all at the end. The walk: the driver's teardown
//! (interfaces), the data path (programs, map entries, hostPorts), IPAM,
//! then the state record.

use super::{addrs, nl_err, TeardownError};
use crate::{
    cni::{CniEnv, CniError},
    config::{Mode, NetConf},
    datapath::{AttachMode, Datapath},
    info,
    ipam::Ipam,
    netlink::Netlink,
    network::{self, Teardown},
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
    let mut errors: Vec<TeardownError> = Vec::new();
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

    // Interfaces, by the driver that made them.
    let mut tomb = None;
    let nl = Netlink::open();
    // What a delegated IPAM plugin is told (GC passes the record's).
    let ipam_netns = netns.clone();
    match &nl {
        Ok(nl) if mode != Mode::Chained => {
            let ns_path = netns
                .or_else(|| record.as_ref().map(|r| r.netns.clone()))
                .filter(|p| !p.is_empty());
            let t = Teardown {
                conf,
                nl,
                record: record.as_ref(),
                host_veth: &host,
                ifname,
                netns: ns_path.as_deref(),
                // TCX links must be unpinned after their device is gone
                // (detaching from a live device waits for RCU), so only
                // netlink attachments can leave the deletion to the reaper.
                deferred: record
                    .as_ref()
                    .is_some_and(|r| r.attach_mode == Some(AttachMode::Netlink)),
            };
            let done = network::driver(mode).teardown(&t);
            tomb = done.tomb;
            errors.extend(done.errors.into_iter().map(TeardownError::Driver));
        }
        Ok(_) => {}
        Err(e) => errors.push(TeardownError::Netlink {
            what: "netlink socket",
            source: clone_nl(e),
        }),
    }

    // Programs and map entries, if the data path exists at all (DEL never
    // loads it). After the veth is gone: removing a TCX link pin of a deleted
    // device costs nothing, detaching a live one waits for an RCU grace period.
    let dp = Datapath::layout(&conf.pin_path);
    if dp.map_path(cni_ebpf_common::map::ENDPOINTS).exists() {
        // Unpins TCX links, removes our filters where the device stays
        // (chained mode, or a veth the driver could not remove); both are
        // no-ops when already gone.
        match &nl {
            Ok(nl) if mode == Mode::Chained || !errors.is_empty() => dp.detach_endpoint(nl, &host),
            _ => dp.unpin_endpoint(&host),
        }
        let res = match &record {
            Some(r) => dp.remove_endpoint(&addrs(&r.ips), r.host_ifindex, owner),
            // No record: find what this owner holds by scanning (rare path).
            None => dp.remove_owner(owner).map(drop),
        };
        if let Err(e) = res {
            errors.push(TeardownError::Datapath {
                what: "remove endpoint entries",
                source: e,
            });
        }
        // hostPorts: from the record (DEL needs no runtimeConfig), else by owner.
        let ips = record.as_ref().map(|r| addrs(&r.ips)).unwrap_or_default();
        let known = record
            .as_ref()
            .map(|r| (r.port_mappings.as_slice(), ips.as_slice()));
        if let Err(e) = dp.release_ports(known, owner) {
            errors.push(TeardownError::Datapath {
                what: "remove hostPort mappings",
                source: e,
            });
        }
    }

    // Addresses last: once released, an address can be handed to a new pod,
    // whose map entries must not be the ones removed above.
    if mode != Mode::Chained {
        match Ipam::from_conf(conf) {
            Ok(Some(ipam)) => {
                let known = record.as_ref().map(|r| addrs(&r.ips)).unwrap_or_default();
                if let Err(e) = ipam.del(
                    conf,
                    container_id,
                    ifname,
                    &known,
                    cni_path,
                    ipam_netns.as_deref(),
                ) {
                    errors.push(TeardownError::Cni {
                        what: "IPAM release",
                        error: e,
                    });
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(TeardownError::Cni {
                what: "IPAM config",
                error: e,
            }),
        }
    }

    // Last, so its deletion (which holds the RTNL lock for a while) does not
    // slow the steps above.
    if let (Some(t), Ok(nl)) = (tomb, &nl) {
        reap(nl, t);
    }
    // The record stays while anything is left, so a retried DEL knows what.
    super::teardown_result(&format!("DEL {container_id}/{ifname}"), &errors)?;
    store.remove(container_id, ifname)?;
    info!("DEL done: {container_id}/{ifname} ({host})");
    Ok(())
}

/// The socket error again (an `io::Error` is not `Clone`).
fn clone_nl(e: &crate::netlink::NlError) -> crate::netlink::NlError {
    crate::netlink::NlError::Io(std::io::Error::other(e.to_string()))
}

/// Deletes a retired veth pair: in a reaper after DEL returns, or here if
/// none starts.
fn reap(nl: &Netlink, tomb: String) {
    if crate::reaper::spawn(std::slice::from_ref(&tomb)) {
        return;
    }
    warn!("could not start the reaper: deleting {tomb} in place");
    if let Err(e) = nl.call(nl.del_veth(&tomb)) {
        // Still down and renamed; GC deletes it.
        warn!("{}", nl_err("delete retired veth", e));
    }
}
