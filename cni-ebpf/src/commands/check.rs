//! CHECK: compare what ADD set up with what the kernel has now; report the
//! first difference.

use std::net::IpAddr;

use super::{addrs, nl_err, ns_err};
use crate::{
    cni::{code, CniEnv, CniError},
    config::{Mode, NetConf},
    datapath::{AttachMode, Datapath},
    ipam::Ipam,
    netlink::Netlink,
    state::Store,
};

fn mismatch(msg: String) -> CniError {
    CniError::new(code::CHECK_MISMATCH, msg)
}

/// Runs CHECK.
pub fn exec(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let store = Store::open(&conf.state_dir, &conf.name, false)?;
    let rec = store
        .load(&env.container_id, &env.ifname)?
        .filter(|r| r.complete)
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "no attachment {}/{} on network {}",
                    env.container_id, env.ifname, conf.name
                ),
            )
        })?;
    let ips: Vec<IpAddr> = addrs(&rec.ips);

    // prevResult (if given) must agree with what we set up.
    if let Some(prev) = &conf.prev_result {
        for ip in &prev.ips {
            if !ips.contains(&ip.address.addr()) && rec.mode != Mode::Chained {
                return Err(mismatch(format!(
                    "prevResult address {} is not one this plugin assigned",
                    ip.address
                )));
            }
        }
    }

    // Host veth.
    let h = rec.host_veth.clone();
    let host = Netlink::with(|nl| async move { nl.link_by_name(&h).await })
        .map_err(|e| nl_err("look up host veth", e))?
        .ok_or_else(|| mismatch(format!("host veth {} is gone", rec.host_veth)))?;
    if Some(host.index) != rec.host_ifindex {
        return Err(mismatch(format!(
            "host veth {} has ifindex {}, ADD made {:?}",
            rec.host_veth, host.index, rec.host_ifindex
        )));
    }
    if rec.mode == Mode::Bridge && host.master.is_none() {
        return Err(mismatch(format!(
            "host veth {} is not on bridge {}",
            rec.host_veth, conf.bridge
        )));
    }

    // Container interface and addresses.
    if rec.mode != Mode::Chained {
        let ns = super::pod_netns(env)?;
        let ifn = env.ifname.clone();
        let (link, have) = ns
            .run(|| {
                Netlink::with(|nl| async move {
                    let Some(l) = nl.link_by_name(&ifn).await? else {
                        return Ok((None, Vec::new()));
                    };
                    let a = nl.addrs(l.index).await?;
                    Ok((Some(l), a))
                })
            })
            .map_err(ns_err)?
            .map_err(|e| nl_err("read the container interface", e))?;
        let link = link.ok_or_else(|| {
            mismatch(format!(
                "interface {} is gone from {}",
                env.ifname,
                ns.path()
            ))
        })?;
        if !link.up {
            return Err(mismatch(format!("interface {} is down", env.ifname)));
        }
        for n in &rec.ips {
            if !have.contains(n) {
                return Err(mismatch(format!(
                    "interface {} lacks address {n}",
                    env.ifname
                )));
            }
        }
        if let Some(ipam) = Ipam::from_conf(conf)? {
            ipam.check(conf, &env.container_id, &env.ifname, &ips, &env.path)?;
        }
    }

    // Data path.
    let dp = Datapath::layout(&conf.pin_path);
    if !dp.is_loaded() {
        return Err(mismatch(format!(
            "eBPF programs are not pinned under {}",
            conf.pin_path.display()
        )));
    }
    let attached = match rec.attach_mode {
        Some(AttachMode::Tcx) => dp.has_link_pins(&rec.host_veth),
        _ => {
            let idx = host.index;
            let (i, e) = Netlink::with(|nl| async move { nl.has_bpf_filters(idx).await })
                .map_err(|e| nl_err("list tc filters", e))?;
            i && e
        }
    };
    if !attached {
        return Err(mismatch(format!(
            "programs are not attached to {}",
            rec.host_veth
        )));
    }
    let owner = crate::state::owner(&env.container_id, &env.ifname);
    let entries = dp
        .endpoint_entries()
        .map_err(|e| super::bpf_err("read endpoints map", e))?;
    for ip in &ips {
        match entries.iter().find(|e| e.ip == *ip) {
            Some(e) if e.info.owner == owner && e.info.ifindex == host.index => {}
            Some(_) => {
                return Err(mismatch(format!(
                    "endpoints map entry for {ip} belongs to another attachment"
                )))
            }
            None => return Err(mismatch(format!("endpoints map has no entry for {ip}"))),
        }
    }
    Ok(())
}
