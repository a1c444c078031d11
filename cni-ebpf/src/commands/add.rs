//! ADD: validate everything, then wire the pod step by step, recording each
//! step in the state record first and undoing all of them if a later one fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::Value;

use super::{bpf_err, nl_err, ns_err};
use crate::{
    cni::{code, CniEnv, CniError, CniResult, Interface, IpConfig, Route},
    config::{Mode, NetConf},
    datapath::{AttachMode, Datapath},
    failpoint, info,
    ipam::{host_local::Attempt, Ipam},
    netlink::{format_mac, parse_mac, sysctl, Link, Netlink},
    netns::Netns,
    state::{host_veth_name, Record, Store},
    warn,
};

/// Link-local next hop the pod's routes point at in routed mode; a permanent
/// neighbour entry maps it to the host veth's MAC, so no ARP/NDP is needed.
pub const ROUTED_GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// IPv6 counterpart of [`ROUTED_GW4`].
pub const ROUTED_GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The routed-mode next hop of `ip`'s family.
fn routed_gw(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        ROUTED_GW4.into()
    } else {
        ROUTED_GW6.into()
    }
}

/// Undo steps of a half-done ADD, run in reverse unless committed.
type Undo = Box<dyn FnOnce() -> Result<(), String>>;

struct Rollback {
    steps: Vec<(&'static str, Undo)>,
}

impl Rollback {
    fn new() -> Self {
        Self { steps: Vec::new() }
    }
    fn push(&mut self, what: &'static str, f: impl FnOnce() -> Result<(), String> + 'static) {
        self.steps.push((what, Box::new(f)));
    }
    fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            if let Err(e) = f() {
                warn!("rollback of {what} failed: {e}");
            }
        }
    }
}

/// Runs ADD and returns the result document.
pub fn exec(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let result = match conf.mode {
        Mode::Chained => chained(env, conf)?,
        Mode::Bridge | Mode::Routed => wire(env, conf)?,
    };
    Ok(result.to_value(&conf.cni_version))
}

fn owner(env: &CniEnv) -> u64 {
    crate::state::owner(&env.container_id, &env.ifname)
}

fn open_pod_netns(env: &CniEnv) -> Result<Netns, CniError> {
    let ns = super::pod_netns(env)?;
    if ns.is_current() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {} is the node's own network namespace",
                ns.path()
            ),
        ));
    }
    Ok(ns)
}

fn requested_mac(env: &CniEnv, conf: &NetConf) -> Result<Option<[u8; 6]>, CniError> {
    let Some(s) = env.args.mac.as_ref().or(conf.runtime.mac.as_ref()) else {
        return Ok(None);
    };
    match parse_mac(s) {
        Some(m) if m[0] & 1 == 0 => Ok(Some(m)),
        _ => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid MAC {s:?}: want a unicast aa:bb:cc:dd:ee:ff"),
        )),
    }
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
            .map_err(|e| e.to_string())
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
        Store::open(&sd, &net, false)
            .and_then(|s| s.remove(&cid, &ifn))
            .map_err(|e| e.to_string())
    });
    Ok(rb)
}

/// Attaches the programs to the host veth and publishes the endpoint's
/// addresses; both undone by the rollback (registered before each step, so a
/// partial step is undone too).
fn publish(
    rb: &mut Rollback,
    dp: &Datapath,
    conf: &NetConf,
    host: &Link,
    nets: &[IpNet],
    pod_mac: [u8; 6],
    owner: u64,
) -> Result<AttachMode, CniError> {
    let ips: Vec<IpAddr> = nets.iter().map(IpNet::addr).collect();
    let (dp2, name) = (dp.clone(), host.name.clone());
    rb.push("program attachment", move || {
        dp2.detach_endpoint(&name);
        Ok(())
    });
    let mode = dp
        .attach_endpoint(host, conf.attach_mode)
        .map_err(|e| bpf_err("attach programs", e))?;
    failpoint::hit("after-attach");
    let (dp2, idx) = (dp.clone(), host.index);
    rb.push("endpoint map entries", move || {
        dp2.remove_endpoint(&ips, Some(idx), owner)
            .map_err(|e| e.to_string())
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
    prepare_node(dp, conf)?;
    failpoint::hit("after-maps");
    Ok(mode)
}

/// Node-wide state for the NAT programs (uplinks, node addresses, settings,
/// socket hooks): idempotent, cheap when nothing changed.
fn prepare_node(dp: &Datapath, conf: &NetConf) -> Result<(), CniError> {
    dp.prepare_node(&super::repair::node_settings(conf, false), &conf.state_dir)
        .map_err(|e| bpf_err("node data path (uplinks, addresses, socket hooks)", e))
}

/// Main mode: veth pair, IPAM, addresses and routes, programs, map entries.
fn wire(env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
    // Validate everything before the first change.
    if let Some(f) = &conf.subnet_file {
        info!("pod subnet, MTU and ipMasq from flannel's {}", f.display());
    }
    let ns = open_pod_netns(env)?;
    let mac = requested_mac(env, conf)?;
    let ipam = Ipam::from_conf(conf)?.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "ipam is required in bridge and routed mode",
        )
    })?;
    let mut requested: Vec<IpAddr> = env.args.ips.clone();
    requested.extend(conf.runtime.ips.iter().copied());
    let store = Store::open(&conf.state_dir, &conf.name, false)?;
    let host = host_veth_name(&env.container_id, &env.ifname);
    let previous = store.load(&env.container_id, &env.ifname)?;
    let dp = super::repair::open(conf)?;

    // A retried ADD: remove the veth of the earlier attempt (its peer goes
    // with it) so the interface check below and the creation succeed.
    if let Some(prev) = &previous {
        let _ = dp.remove_endpoint(&super::addrs(&prev.ips), prev.host_ifindex, owner(env));
        info!("ADD retried: replacing the earlier attempt's {host}");
        dp.detach_endpoint(&host);
        let h = host.clone();
        Netlink::with(|nl| async move { nl.del_veth(&h).await })
            .map_err(|e| nl_err("remove earlier veth", e))?;
    }
    let ifname = env.ifname.clone();
    let present = ns
        .run(|| Netlink::with(|nl| async move { nl.link_by_name(&ifname).await }))
        .map_err(ns_err)?
        .map_err(|e| nl_err("look up CNI_IFNAME in the container", e))?;
    if present.is_some() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_IFNAME {:?} already exists in {}",
                env.ifname,
                ns.path()
            ),
        ));
    }

    // hostPorts another container holds: refused before IPAM moves even its
    // round-robin cursor.
    super::check_ports(&dp, conf, &ipam.families(), owner(env))?;

    let mut record = Record {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: ns.path().to_string(),
        pod_namespace: env.args.pod_namespace().to_string(),
        pod_name: env.args.pod_name().to_string(),
        mode: conf.mode,
        host_veth: host.clone(),
        port_mappings: conf.runtime.port_mappings.clone(),
        ip_masq: conf.ip_masq,
        allow_router_messages: conf.allow_router_messages,
        ..Default::default()
    };
    let mut rb = begin(&store, conf, &record)?;
    failpoint::hit("after-state");

    // IPAM.
    let attempt = if previous.is_some() {
        Attempt::Retry
    } else {
        Attempt::First
    };
    let ipres = ipam.add(
        conf,
        &env.container_id,
        &env.ifname,
        &requested,
        attempt,
        &env.path,
    )?;
    {
        let (conf2, cid, ifn, path) = (
            conf.clone(),
            env.container_id.clone(),
            env.ifname.clone(),
            env.path.clone(),
        );
        // Everything this attachment holds (a retry may hold more than this
        // attempt's result names).
        rb.push("IPAM reservation", move || {
            ipam.del(&conf2, &cid, &ifn, &[], &path)
                .map_err(|e| e.to_string())
        });
    }
    let routed = conf.mode == Mode::Routed;
    let pod_nets: Vec<IpNet> = ipres
        .ips
        .iter()
        .map(|ip| {
            if routed {
                IpNet::new(
                    ip.address.addr(),
                    if ip.address.addr().is_ipv4() { 32 } else { 128 },
                )
                .expect("host prefix")
            } else {
                ip.address
            }
        })
        .collect();
    record.ips = pod_nets.clone();
    store.save(&record)?;
    failpoint::hit("after-ipam");

    // hostPorts: claimed before any interface exists, so a conflict changes nothing.
    let ips: Vec<IpAddr> = pod_nets.iter().map(|n| n.addr()).collect();
    claim_ports(&mut rb, &dp, conf, &ips, owner(env))?;
    failpoint::hit("after-ports");

    // The veth pair, peer created inside the pod.
    let (h, ifn, mtu, ns_fd) = (host.clone(), env.ifname.clone(), conf.mtu, ns.fd());
    let host_link = Netlink::with(|nl| async move {
        nl.create_veth(&h, &ifn, ns_fd, mtu, mac).await?;
        nl.link_by_name(&h)
            .await?
            .ok_or_else(|| crate::netlink::NlError::NoLink(h.clone()))
    })
    .map_err(|e| nl_err("create veth pair", e))?;
    {
        let idx = host_link.index;
        rb.push("veth pair", move || {
            Netlink::with(|nl| async move { nl.del_link(idx).await }).map_err(|e| e.to_string())
        });
    }
    record.host_ifindex = Some(host_link.index);
    store.save(&record)?;
    failpoint::hit("after-veth");

    // Node side.
    let bridge = node_side(conf, &host_link, &ipres.ips)?;
    failpoint::hit("after-node-side");

    // Pod side.
    let pod = pod_side(&ns, env, conf, &host_link, &ipres, &pod_nets)?;
    record.mac = format_mac(&pod.mac);
    if let Some(br) = &bridge {
        let (bidx, pod_mac, nets) = (br.index, pod.mac.clone(), pod_nets.clone());
        Netlink::with(|nl| async move {
            for n in &nets {
                nl.refresh_neigh(bidx, n.addr(), &pod_mac).await?;
            }
            Ok(())
        })
        .map_err(|e| nl_err("node neighbour entries of the pod", e))?;
    }
    if routed {
        let (hidx, pod_mac, nets) = (host_link.index, pod.mac.clone(), pod_nets.clone());
        Netlink::with(|nl| async move {
            for n in &nets {
                nl.add_route(*n, None, hidx).await?;
                nl.add_neigh(hidx, n.addr(), &pod_mac).await?;
            }
            Ok(())
        })
        .map_err(|e| nl_err("routes to the pod", e))?;
    }
    failpoint::hit("after-netns");

    // Programs and map entries.
    let pod_mac: [u8; 6] = pod.mac.as_slice().try_into().unwrap_or([0; 6]);
    let subnets: Vec<IpNet> = ipres.ips.iter().map(|i| i.address).collect();
    let mode = publish(
        &mut rb,
        &dp,
        conf,
        &host_link,
        &subnets,
        pod_mac,
        owner(env),
    )?;
    record.attach_mode = Some(mode);
    if routed {
        record.endpoint_nets = subnets;
    }
    record.complete = true;
    store.save(&record)?;
    failpoint::hit("after-state-write");
    rb.commit();
    info!(
        "ADD done: {host} ifindex {} ips {:?} attach {:?}",
        host_link.index, ips, mode
    );

    // The result, shaped like the reference bridge plugin's.
    let mut res = CniResult::default();
    if let Some(br) = &bridge {
        res.interfaces.push(Interface {
            name: br.name.clone(),
            mac: format_mac(&br.mac),
            ..Default::default()
        });
    }
    res.interfaces.push(Interface {
        name: host.clone(),
        mac: format_mac(&host_link.mac),
        mtu: conf.mtu,
        ..Default::default()
    });
    res.interfaces.push(Interface {
        name: env.ifname.clone(),
        mac: format_mac(&pod.mac),
        mtu: conf.mtu,
        sandbox: ns.path().to_string(),
    });
    let pod_if = res.interfaces.len() - 1;
    for (ip, net) in ipres.ips.iter().zip(&pod_nets) {
        let gateway = if routed {
            Some(routed_gw(net.addr()))
        } else if conf.is_gateway {
            ip.gateway
        } else {
            None
        };
        res.ips.push(IpConfig {
            address: *net,
            gateway,
            interface: Some(pod_if),
        });
    }
    res.routes = pod.routes;
    res.dns = if conf.dns.is_empty() {
        ipres.dns
    } else {
        conf.dns.clone()
    };
    Ok(res)
}

/// Bridge mode: the bridge with its gateway addresses, the port settings.
/// Routed mode: just the veth up. Both: forwarding on.
fn node_side(conf: &NetConf, host: &Link, ips: &[IpConfig]) -> Result<Option<Link>, CniError> {
    let v4 = ips.iter().any(|i| i.address.addr().is_ipv4());
    let v6 = ips.iter().any(|i| i.address.addr().is_ipv6());
    let fwd = |p: &str| {
        sysctl(p, "1")
            .map_err(|e| CniError::new(code::IO, format!("enable {p}")).with_details(e.to_string()))
    };
    if v4 {
        fwd("net/ipv4/ip_forward")?;
    }
    if v6 {
        fwd("net/ipv6/conf/all/forwarding")?;
    }
    // No IPv6 on the host veth unless it routes IPv6 itself (routed mode): a
    // bridge port needs no addresses, and each IPv6-enabled veth would add a
    // link-local address and three routes to the node, which every later
    // ADD's address and route dumps would then walk (O(N)).
    if conf.mode == Mode::Bridge || !v6 {
        // Written without reading first: the veth is new, and each open under
        // /proc/sys/net costs O(interfaces in the namespace) (35 us with one
        // pod, 1.2 ms with 500, measured with strace -T).
        let p = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", host.name);
        if let Err(e) = std::fs::write(&p, "1") {
            // A node without IPv6 has no such file: nothing to disable.
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(CniError::new(code::IO, format!("set {p}")).with_details(e.to_string()));
            }
        }
    }
    let hidx = host.index;
    if conf.mode == Mode::Routed {
        Netlink::with(|nl| async move { nl.set_up(hidx).await })
            .map_err(|e| nl_err("host veth up", e))?;
        return Ok(None);
    }
    let gws: Vec<IpNet> = if conf.is_gateway {
        ips.iter()
            .filter_map(|i| {
                i.gateway.map(|g| {
                    IpNet::new(g, i.address.prefix_len()).expect("prefix from a valid net")
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let (name, mtu, promisc, hairpin, force) = (
        conf.bridge.clone(),
        conf.mtu,
        conf.promisc_mode,
        conf.hairpin_mode,
        conf.force_address,
    );
    Netlink::with(|nl| async move {
        let br = nl.ensure_bridge(&name, mtu, promisc).await?;
        for gw in &gws {
            if force {
                // forceAddress: drop other addresses of this family in the same subnet.
                for a in nl.addrs(br.index).await? {
                    if a.addr().is_ipv4() == gw.addr().is_ipv4()
                        && a != *gw
                        && a.trunc() == gw.trunc()
                    {
                        nl.del_addr(br.index, a).await?;
                    }
                }
            }
            nl.add_addr(br.index, *gw).await?;
        }
        nl.set_master(hidx, br.index).await?;
        if hairpin {
            nl.set_hairpin(hidx, true).await?;
        }
        nl.set_up(hidx).await?;
        Ok(br)
    })
    .map(Some)
    .map_err(|e| nl_err("bridge", e))
}

/// The routes a pod gets: in routed mode a default route per family and the
/// IPAM routes, all via the link-local next hop; in bridge mode the default
/// route via the gateway (`isDefaultGateway`) and the IPAM routes via their
/// own or the family's gateway.
fn pod_routes(conf: &NetConf, ipres: &CniResult, nets: &[IpNet]) -> Vec<Route> {
    fn push_default(routes: &mut Vec<Route>, ip: IpAddr, gw: IpAddr) {
        let dst = Route::default_for(ip);
        if !routes.iter().any(|r| r.dst == dst) {
            routes.push(Route::via(dst, Some(gw)));
        }
    }
    let mut routes: Vec<Route> = Vec::new();
    if conf.mode == Mode::Routed {
        for net in nets {
            push_default(&mut routes, net.addr(), routed_gw(net.addr()));
        }
        for r in ipres.routes.iter().filter(|r| r.dst.prefix_len() != 0) {
            routes.push(Route::via(r.dst, Some(routed_gw(r.dst.addr()))));
        }
        return routes;
    }
    if conf.is_default_gateway {
        for ip in &ipres.ips {
            if let Some(gw) = ip.gateway {
                push_default(&mut routes, gw, gw);
            }
        }
    }
    for r in &ipres.routes {
        if conf.is_default_gateway && r.dst.prefix_len() == 0 {
            continue;
        }
        let gw = r.gw.or_else(|| {
            ipres
                .ips
                .iter()
                .find(|i| i.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                .and_then(|i| i.gateway)
        });
        routes.push(Route::via(r.dst, gw));
    }
    routes
}

struct PodSide {
    mac: Vec<u8>,
    routes: Vec<Route>,
}

/// Inside the pod: addresses, link up, routes.
fn pod_side(
    ns: &Netns,
    env: &CniEnv,
    conf: &NetConf,
    host: &Link,
    ipres: &CniResult,
    nets: &[IpNet],
) -> Result<PodSide, CniError> {
    let routed = conf.mode == Mode::Routed;
    let routes = pod_routes(conf, ipres, nets);
    let (ifname, nets, host_mac, rts) = (
        env.ifname.clone(),
        nets.to_vec(),
        host.mac.clone(),
        routes.clone(),
    );
    let mac = ns
        .run(move || {
            let has_v6 = nets.iter().any(|n| n.addr().is_ipv6());
            if has_v6 {
                // Skip duplicate address detection: the address is ours by IPAM,
                // and DAD would leave it "tentative" (unusable) for a second.
                let _ = sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
            }
            Netlink::with(|nl| async move {
                let l = nl
                    .link_by_name(&ifname)
                    .await?
                    .ok_or_else(|| crate::netlink::NlError::NoLink(ifname.clone()))?;
                for n in &nets {
                    nl.add_addr(l.index, *n).await?;
                }
                nl.set_up(l.index).await?;
                if routed {
                    for n in &nets {
                        let gw = routed_gw(n.addr());
                        nl.add_neigh(l.index, gw, &host_mac).await?;
                        if gw.is_ipv4() {
                            nl.add_route(IpNet::new(gw, 32).expect("host net"), None, l.index)
                                .await?;
                        }
                    }
                }
                for r in &rts {
                    nl.add_route(r.dst, r.gw, l.index).await?;
                }
                Ok(l.mac)
            })
        })
        .map_err(ns_err)?
        .map_err(|e| nl_err("configure the container interface", e))?;
    Ok(PodSide { mac, routes })
}

/// Chained mode: the interfaces exist (made by an earlier plugin); attach to
/// the host veth from `prevResult` and pass the result on.
fn chained(env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "chained mode needs a prevResult (place cni-ebpf after the plugin that creates the interfaces)"))?;
    let store = Store::open(&conf.state_dir, &conf.name, false)?;
    let dp = super::repair::open(conf)?;

    // The pod's interface and addresses.
    let pod_if = prev
        .interfaces
        .iter()
        .position(|i| !i.sandbox.is_empty() && i.name == env.ifname);
    let ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| pod_if.is_none() || ip.interface.is_none() || ip.interface == pod_if)
        .map(|ip| ip.address.addr())
        .collect();
    let pod_mac = pod_if
        .and_then(|i| parse_mac(&prev.interfaces[i].mac))
        .unwrap_or([0; 6]);
    // The host veth: a host-side interface of prevResult that is a veth here.
    let candidates: Vec<String> = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_empty())
        .map(|i| i.name.clone())
        .collect();
    let host = Netlink::with(|nl| async move {
        for c in candidates {
            if let Some(l) = nl.link_by_name(&c).await? {
                if l.kind == "veth" {
                    return Ok(Some(l));
                }
            }
        }
        Ok(None)
    })
    .map_err(|e| nl_err("find the host veth", e))?
    .ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult lists no host-side veth interface to attach to",
        )
    })?;

    let mut record = Record {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        pod_namespace: env.args.pod_namespace().to_string(),
        pod_name: env.args.pod_name().to_string(),
        mode: Mode::Chained,
        host_veth: host.name.clone(),
        host_ifindex: Some(host.index),
        mac: format_mac(&pod_mac),
        ips: prev
            .ips
            .iter()
            .map(|i| i.address)
            .filter(|n| ips.contains(&n.addr()))
            .collect(),
        port_mappings: conf.runtime.port_mappings.clone(),
        ip_masq: conf.ip_masq,
        allow_router_messages: conf.allow_router_messages,
        ..Default::default()
    };
    super::check_ports(&dp, conf, &ips, owner(env))?;
    let mut rb = begin(&store, conf, &record)?;
    claim_ports(&mut rb, &dp, conf, &ips, owner(env))?;
    // The veth is not ours and may carry our filters from an earlier ADD.
    dp.detach_endpoint(&host.name);
    let mode = publish(&mut rb, &dp, conf, &host, &record.ips, pod_mac, owner(env))?;
    record.attach_mode = Some(mode);
    record.complete = true;
    store.save(&record)?;
    rb.commit();
    info!("ADD (chained) done: {} ips {:?}", host.name, ips);
    Ok(prev.clone())
}
