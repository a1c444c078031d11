//! CHECK: compare what ADD set up with what the kernel has now; report the
//! first difference.

use std::net::IpAddr;

use super::{addrs, nl_err};
use crate::{
    cni::{code, CniEnv, CniError},
    config::{Mode, NetConf},
    datapath::{AttachMode, Datapath},
    ipam::Ipam,
    netlink::Netlink,
    network::{self, Request},
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
    let nl = Netlink::open().map_err(|e| nl_err("netlink socket", e))?;
    let host = nl
        .call(nl.link_by_name(&rec.host_veth))
        .map_err(|e| nl_err("look up host veth", e))?
        .ok_or_else(|| mismatch(format!("host veth {} is gone", rec.host_veth)))?;
    if Some(host.index) != rec.host_ifindex {
        return Err(mismatch(format!(
            "host veth {} has ifindex {}, ADD made {:?}",
            rec.host_veth, host.index, rec.host_ifindex
        )));
    }

    // The interfaces as the driver made them, then the addresses IPAM holds.
    let req = Request { env, conf, nl: &nl };
    network::driver(rec.mode).check(&req, &rec, &host)?;
    if rec.mode != Mode::Chained {
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
            let (i, e) = nl
                .call(nl.has_bpf_filters(host.index))
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
