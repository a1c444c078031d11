//! ADD, as the reference plugins' `cmdAdd`: parse and validate everything,
//! then IPAM, the network driver's setup, the data path, the result. Each
//! step is recorded in the state record first and undone, in reverse, if a
//! later one fails.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::{bpf_err, nl_err};
use crate::{
    cni::{code, CniEnv, CniError},
    config::{Mode, NetConf},
    datapath::{self, AttachMode, Datapath},
    failpoint, info,
    ipam::{host_local::Attempt, Ipam},
    netlink::{Link, Netlink},
    network::{self, Request, Steps},
    rollback::Rollback,
    state::{Record, Store},
};

/// Runs ADD and returns the result document.
pub fn exec(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let driver = network::driver(conf.mode);
    let owner = crate::state::owner(&env.container_id, &env.ifname);
    // The node's netlink handle; the driver opens the pod's.
    let nl = Netlink::open().map_err(|e| nl_err("netlink socket", e))?;
    let req = Request { env, conf, nl: &nl };

    // 1. Validate everything before the first change.
    if let Some(f) = &conf.subnet_file {
        info!("pod subnet, MTU and ipMasq from flannel's {}", f.display());
    }
    let plan = driver.validate(&req)?;
    let ipam = match conf.mode {
        Mode::Chained => None,
        Mode::Bridge | Mode::Routed => Some(Ipam::from_conf(conf)?.ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "ipam is required in bridge and routed mode",
            )
        })?),
    };
    let mut requested: Vec<IpAddr> = env.args.ips.clone();
    requested.extend(conf.runtime.ips.iter().copied());
    let store = Store::open(&conf.state_dir, &conf.name, false)?;
    let previous = match ipam {
        Some(_) => store.load(&env.container_id, &env.ifname)?,
        None => None,
    };
    let dp = datapath::open(conf).map_err(|e| bpf_err("eBPF data path", e))?;

    // A retried ADD: take back the earlier attempt's entries and veth (its
    // peer goes with it) so the interface check below and the creation
    // succeed.
    if let Some(prev) = &previous {
        let _ = dp.remove_endpoint(&super::addrs(&prev.ips), prev.host_ifindex, owner);
        info!(
            "ADD retried: replacing the earlier attempt's {}",
            plan.host_veth
        );
        dp.detach_endpoint(&nl, &plan.host_veth);
        nl.call(nl.del_veth(&plan.host_veth))
            .map_err(|e| nl_err("remove earlier veth", e))?;
    }
    plan.check_ifname_free(env)?;
    // hostPorts another container holds, and hostIPs that are not the
    // node's: refused before IPAM moves even its round-robin cursor (chained:
    // the addresses came in prevResult).
    match &ipam {
        Some(ipam) => super::check_ports(&dp, conf, &ipam.families(), owner)?,
        None => super::check_ports(&dp, conf, &super::addrs(&plan.ips), owner)?,
    }

    // 2. The state record, first of all.
    let mut record = Record {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: match &plan.pod {
            Some(p) => p.ns.path().to_string(),
            None => env
                .netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        },
        pod_namespace: env.args.pod_namespace().to_string(),
        pod_name: env.args.pod_name().to_string(),
        mode: conf.mode,
        host_veth: plan.host_veth.clone(),
        host_ifindex: plan.host.as_ref().map(|h| h.index),
        mac: match conf.mode {
            Mode::Chained => crate::netlink::format_mac(&plan.pod_mac),
            _ => String::new(),
        },
        ips: plan.ips.clone(),
        port_mappings: conf.runtime.port_mappings.clone(),
        ip_masq: conf.ip_masq,
        allow_router_messages: conf.allow_router_messages,
        ..Default::default()
    };
    let mut rb = begin(&store, conf, &record)?;

    // 3. IPAM (chained: the addresses of prevResult).
    let ipres = match ipam {
        Some(ipam) => {
            failpoint::hit("after-state");
            let attempt = if previous.is_some() {
                Attempt::Retry
            } else {
                Attempt::First
            };
            let res = ipam.add(
                conf,
                &env.container_id,
                &env.ifname,
                &requested,
                attempt,
                &env.path,
            )?;
            let (conf2, cid, ifn, path, netns) = (
                conf.clone(),
                env.container_id.clone(),
                env.ifname.clone(),
                env.path.clone(),
                env.netns.as_ref().map(|p| p.display().to_string()),
            );
            // Everything this attachment holds (a retry may hold more than
            // this attempt's result names).
            rb.push("IPAM reservation", move || {
                ipam.del(&conf2, &cid, &ifn, &[], &path, netns.as_deref())
            });
            record.ips = driver.addresses(&res);
            store.save(&record)?;
            failpoint::hit("after-ipam");
            res
        }
        None => conf.prev_result.clone().unwrap_or_default(),
    };

    // 4. hostPorts: claimed before any interface exists, so a conflict
    // changes nothing.
    let ips: Vec<IpAddr> = record.ips.iter().map(IpNet::addr).collect();
    claim_ports(&mut rb, &dp, conf, &ips, owner)?;
    if ipam_ran(conf) {
        failpoint::hit("after-ports");
    }

    // 5. The driver: interfaces, addresses, routes.
    let wired = {
        let mut steps = Steps {
            store: &store,
            record: &mut record,
            rb: &mut rb,
        };
        driver.setup(&req, &plan, &ipres, &mut steps)?
    };
    if conf.mode == Mode::Chained {
        // The veth is not ours and may carry our filters from an earlier ADD.
        dp.detach_endpoint(&nl, &wired.host.name);
    }

    // 6. The data path: programs on the host veth, the endpoint's entries.
    let mode = publish(
        &mut rb,
        &dp,
        &nl,
        conf,
        &wired.host,
        &wired.endpoint_nets,
        wired.pod_mac,
        owner,
    )?;
    record.attach_mode = Some(mode);
    record.complete = true;
    store.save(&record)?;
    if ipam_ran(conf) {
        failpoint::hit("after-state-write");
    }
    rb.commit();
    match conf.mode {
        Mode::Chained => info!("ADD (chained) done: {} ips {:?}", wired.host.name, ips),
        _ => info!(
            "ADD done: {} ifindex {} ips {:?} attach {:?}",
            wired.host.name, wired.host.index, ips, mode
        ),
    }

    // 7. The result.
    Ok(wired.result.to_value(&conf.cni_version))
}

/// Whether the mode makes interfaces and runs IPAM (the crash tests'
/// failpoints are on that path).
fn ipam_ran(conf: &NetConf) -> bool {
    conf.mode != Mode::Chained
}

/// Claims the hostPorts and registers their release with the rollback.
fn claim_ports(
    rb: &mut Rollback,
    dp: &Datapath,
    conf: &NetConf,
    ips: &[IpAddr],
    owner: u64,
) -> Result<(), CniError> {
    super::claim_ports(dp, conf, ips, owner)?;
    let (dp2, m, ips2) = (dp.clone(), conf.runtime.port_mappings.clone(), ips.to_vec());
    rb.push("hostPort mappings", move || {
        dp2.release_ports(Some((&m, &ips2)), owner)
    });
    Ok(())
}

/// Saves the first state record of an ADD and registers its removal.
fn begin(store: &Store, conf: &NetConf, record: &Record) -> Result<Rollback, CniError> {
    store.save(record)?;
    let mut rb = Rollback::new();
    let (sd, net, cid, ifn) = (
        conf.state_dir.clone(),
        conf.name.clone(),
        record.container_id.clone(),
        record.ifname.clone(),
    );
    rb.push("state record", move || {
        Store::open(&sd, &net, false).and_then(|s| s.remove(&cid, &ifn))
    });
    Ok(rb)
}

/// Attaches the programs to the host veth and publishes the endpoint's
/// addresses; both undone by the rollback (registered before each step, so a
/// partial step is undone too). Then the node-wide state.
#[allow(clippy::too_many_arguments, reason = "one step of ADD, its inputs")]
fn publish(
    rb: &mut Rollback,
    dp: &Datapath,
    nl: &Netlink,
    conf: &NetConf,
    host: &Link,
    nets: &[IpNet],
    pod_mac: [u8; 6],
    owner: u64,
) -> Result<AttachMode, CniError> {
    let ips: Vec<IpAddr> = nets.iter().map(IpNet::addr).collect();
    let (dp2, nl2, name) = (dp.clone(), nl.clone(), host.name.clone());
    rb.push("program attachment", move || {
        dp2.detach_endpoint(&nl2, &name);
        Ok::<_, crate::rollback::UndoError>(())
    });
    let mode = dp
        .attach_endpoint(nl, host, conf.attach_mode)
        .map_err(|e| bpf_err("attach programs", e))?;
    failpoint::hit("after-attach");
    let (dp2, idx) = (dp.clone(), host.index);
    rb.push("endpoint map entries", move || {
        dp2.remove_endpoint(&ips, Some(idx), owner)
    });
    dp.add_endpoint(
        nets,
        host.index,
        pod_mac,
        owner,
        conf.ip_masq,
        conf.allow_router_messages,
    )
    .map_err(|e| bpf_err("endpoint map entries", e))?;
    // Node-wide state for the NAT programs (uplinks, node addresses,
    // settings, socket hooks): idempotent, cheap when nothing changed.
    dp.prepare_node(nl, &datapath::node_settings(conf, false), &conf.state_dir)
        .map_err(|e| bpf_err("node data path (uplinks, addresses, socket hooks)", e))?;
    failpoint::hit("after-maps");
    Ok(mode)
}
