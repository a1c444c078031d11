//! GC (spec 1.1): remove every attachment of this network that is not in
//! `cni.dev/valid-attachments`. Runs under the network's exclusive lock, so
//! it never races an ADD or DEL.

use std::collections::HashSet;

use super::{del::teardown, TeardownError};
use crate::{
    cni::{code, CniEnv, CniError},
    config::NetConf,
    datapath::Datapath,
    info,
    ipam::{host_local, Ipam},
    state::Store,
};

/// Runs GC.
pub fn exec(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments in the config",
        )
    })?;
    let keep: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let store = Store::open(&conf.state_dir, &conf.name, true)?;
    let mut errors = Vec::new();
    let mut live_veths = HashSet::new();
    for rec in store.all()? {
        if keep.contains(&(rec.container_id.clone(), rec.ifname.clone())) {
            live_veths.insert(rec.host_veth.clone());
            continue;
        }
        info!(
            "GC: removing stale attachment {}/{}",
            rec.container_id, rec.ifname
        );
        // A delegated IPAM plugin reads the attachment from its environment,
        // which teardown sets for it (CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS).
        if let Err(e) = teardown(
            &store,
            conf,
            &rec.container_id,
            &rec.ifname,
            Some(rec.netns.clone()),
            &env.path,
        ) {
            errors.push(TeardownError::Cni { what: "", error: e });
        }
    }
    // Reservations of the built-in IPAM without any valid attachment.
    if let Ok(Some(Ipam::HostLocal(c))) = Ipam::from_conf(conf) {
        if let Ok(all) = host_local::all_reservations(&c.data_dir, &conf.name) {
            for (_, id, ifname) in all {
                if !keep.contains(&(id.clone(), ifname.clone())) {
                    if let Err(e) = host_local::release(&c, &conf.name, &id, &ifname) {
                        errors.push(TeardownError::Cni { what: "", error: e });
                    }
                }
            }
        }
    }
    // Link pins of interfaces that no longer exist.
    let dp = Datapath::layout(&conf.pin_path);
    let nl = crate::netlink::Netlink::open();
    for ifname in dp.pinned_link_ifnames() {
        if live_veths.contains(&ifname) {
            continue;
        }
        // Asked over netlink: /sys/class/net shows the namespace sysfs was
        // mounted in, which need not be the node's.
        let exists = nl
            .as_ref()
            .map_or(Ok(None), |nl| nl.call(nl.link_by_name(&ifname)).map(Some))
            .map(|l| l.is_none_or(|l| l.is_some()))
            .unwrap_or(true);
        if !exists {
            dp.unpin_endpoint(&ifname);
        }
    }
    // Retired veths a reaper did not get to (see reaper.rs).
    let tombstones = match &nl {
        Ok(nl) => nl.call(nl.tombstones()),
        Err(e) => Err(crate::netlink::NlError::Io(std::io::Error::other(
            e.to_string(),
        ))),
    };
    match tombstones {
        Ok(t) if !t.is_empty() => {
            info!("GC: deleting {} retired veths", t.len());
            if let Err(e) = crate::reaper::reap(&t) {
                errors.push(TeardownError::Netlink {
                    what: "delete retired veths",
                    source: e,
                });
            }
        }
        Ok(_) => {}
        Err(e) => errors.push(TeardownError::Netlink {
            what: "list retired veths",
            source: e,
        }),
    }
    // Translations whose pod is gone (the programs ignore them already;
    // this frees their slots).
    if dp.map_path(cni_ebpf_common::map::NAT).exists() {
        match dp.prune_nat() {
            Ok(n) if n > 0 => info!("GC: removed {n} stale translations"),
            Ok(_) => {}
            Err(e) => errors.push(TeardownError::Datapath {
                what: "prune translations",
                source: e,
            }),
        }
    }
    super::teardown_result("GC", &errors)
}
