//! What the bridge and routed drivers share: the veth pair with its peer
//! made inside the pod, the pod interface's addresses and routes, the
//! result document, and removing the pair.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{DriverError, Plan, PodNs, Request, Steps, Teardown};
use crate::{
    cni::{CniEnv, CniError, CniResult, Interface, IpConfig, Route},
    config::NetConf,
    failpoint,
    netlink::{format_mac, parse_mac, sysctl, Link, Netlink, NlError},
    netns::Netns,
    state::{host_veth_name, Record},
    warn,
};

/// Link-local next hop the pod's routes point at in routed mode; a permanent
/// neighbour entry maps it to the host veth's MAC, so no ARP/NDP is needed.
pub const ROUTED_GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// IPv6 counterpart of [`ROUTED_GW4`].
pub const ROUTED_GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The routed-mode next hop of `ip`'s family.
pub fn routed_gw(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        ROUTED_GW4.into()
    } else {
        ROUTED_GW6.into()
    }
}

/// Opens `CNI_NETNS` (required, so its absence is code 4), refuses the
/// node's own namespace, and opens the command's netlink handle inside it.
fn open_pod(env: &CniEnv) -> Result<PodNs, DriverError> {
    let path = env.netns.as_ref().ok_or_else(|| {
        DriverError::Env("required env variables [CNI_NETNS] missing".to_string())
    })?;
    let ns = Netns::open(path)?;
    if ns.is_current() {
        return Err(DriverError::Env(format!(
            "CNI_NETNS {} is the node's own network namespace",
            ns.path()
        )));
    }
    let nl = ns
        .run(Netlink::open)?
        .map_err(DriverError::nl("netlink socket in the container"))?;
    Ok(PodNs { ns, nl })
}

fn requested_mac(env: &CniEnv, conf: &NetConf) -> Result<Option<[u8; 6]>, DriverError> {
    let Some(s) = env.args.mac.as_ref().or(conf.runtime.mac.as_ref()) else {
        return Ok(None);
    };
    match parse_mac(s) {
        Some(m) if m[0] & 1 == 0 => Ok(Some(m)),
        _ => Err(DriverError::Config(format!(
            "invalid MAC {s:?}: want a unicast aa:bb:cc:dd:ee:ff"
        ))),
    }
}

/// The checks of both drivers: the pod's namespace, the requested MAC.
pub(super) fn validate(req: &Request<'_>) -> Result<Plan, DriverError> {
    let pod = open_pod(req.env)?;
    let mac = requested_mac(req.env, req.conf)?;
    Ok(Plan {
        pod: Some(pod),
        mac,
        host_veth: host_veth_name(&req.env.container_id, &req.env.ifname),
        host: None,
        ips: Vec::new(),
        pod_mac: [0; 6],
    })
}

impl Plan {
    /// `CNI_IFNAME` must not exist in the pod yet (checked after a retried
    /// ADD took back its earlier attempt, whose peer had that name).
    pub fn check_ifname_free(&self, env: &CniEnv) -> Result<(), DriverError> {
        let Some(pod) = &self.pod else {
            return Ok(());
        };
        let present = pod
            .nl
            .call(pod.nl.link_by_name(&env.ifname))
            .map_err(DriverError::nl("look up CNI_IFNAME in the container"))?;
        if present.is_some() {
            return Err(DriverError::Env(format!(
                "CNI_IFNAME {:?} already exists in {}",
                env.ifname,
                pod.ns.path()
            )));
        }
        Ok(())
    }
}

/// The pair, its peer created inside the pod (no move after creation, so the
/// pod never sees a half-configured interface); the host side's index goes
/// into the record.
pub(super) fn create_pair(
    req: &Request<'_>,
    plan: &Plan,
    steps: &mut Steps<'_>,
) -> Result<Link, DriverError> {
    let pod = plan.pod.as_ref().expect("validated");
    let (nl, h) = (req.nl, plan.host_veth.as_str());
    let host_link = nl
        .call(async {
            nl.create_veth(h, &req.env.ifname, pod.ns.fd(), req.conf.mtu, plan.mac)
                .await?;
            nl.link_by_name(h)
                .await?
                .ok_or_else(|| NlError::NoLink(h.to_string()))
        })
        .map_err(DriverError::nl("create veth pair"))?;
    {
        let (idx, nl) = (host_link.index, req.nl.clone());
        steps
            .rb
            .push("veth pair", move || nl.call(nl.del_link(idx)));
    }
    steps.record.host_ifindex = Some(host_link.index);
    steps.save()?;
    failpoint::hit("after-veth");
    Ok(host_link)
}

/// Forwarding on for the pod's families (node-wide, so checked by reading
/// first).
pub(super) fn forwarding(ips: &[IpConfig]) -> Result<(), DriverError> {
    let fwd = |p: &str| {
        sysctl(p, "1").map_err(|source| DriverError::Sysctl {
            what: format!("enable {p}"),
            source,
        })
    };
    if ips.iter().any(|i| i.address.addr().is_ipv4()) {
        fwd("net/ipv4/ip_forward")?;
    }
    if ips.iter().any(|i| i.address.addr().is_ipv6()) {
        fwd("net/ipv6/conf/all/forwarding")?;
    }
    Ok(())
}

/// No IPv6 on the host veth: a bridge port needs no addresses, and each
/// IPv6-enabled veth would add a link-local address and three routes to the
/// node, which every later ADD's address and route dumps would then walk
/// (O(N)).
pub(super) fn disable_ipv6(host: &Link) -> Result<(), DriverError> {
    // Written without reading first: the veth is new, and each open under
    // /proc/sys/net costs O(interfaces in the namespace) (35 us with one
    // pod, 1.2 ms with 500, measured with strace -T).
    let p = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", host.name);
    match std::fs::write(&p, "1") {
        // A node without IPv6 has no such file: nothing to disable.
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DriverError::Sysctl {
            what: format!("set {p}"),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Inside the pod: addresses, link up, the routed next hop, routes. Returns
/// the pod interface's MAC.
pub(super) fn configure_pod(
    req: &Request<'_>,
    plan: &Plan,
    host: &Link,
    nets: &[IpNet],
    routes: &[Route],
    routed: bool,
) -> Result<Vec<u8>, DriverError> {
    let pod = plan.pod.as_ref().expect("validated");
    let ifname = req.env.ifname.as_str();
    if nets.iter().any(|n| n.addr().is_ipv6()) {
        // Skip duplicate address detection: the address is ours by IPAM,
        // and DAD would leave it "tentative" (unusable) for a second. A
        // sysctl of the pod's namespace: written from a thread inside it.
        pod.ns.run(|| {
            let _ = sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
        })?;
    }
    let nl = &pod.nl;
    nl.call(async {
        let l = nl
            .link_by_name(ifname)
            .await?
            .ok_or_else(|| NlError::NoLink(ifname.to_string()))?;
        for n in nets {
            nl.add_addr(l.index, *n).await?;
        }
        nl.set_up(l.index).await?;
        if routed {
            for n in nets {
                let gw = routed_gw(n.addr());
                nl.add_neigh(l.index, gw, &host.mac).await?;
                if gw.is_ipv4() {
                    nl.add_route(IpNet::new(gw, 32).expect("host net"), None, l.index)
                        .await?;
                }
            }
        }
        for r in routes {
            nl.add_route(r.dst, r.gw, l.index).await?;
        }
        Ok(l.mac)
    })
    .map_err(DriverError::nl("configure the container interface"))
}

/// The result, shaped like the reference bridge plugin's: the bridge (if
/// any), the host veth, the pod interface with its addresses.
#[allow(clippy::too_many_arguments, reason = "the pieces of one result")]
pub(super) fn result(
    req: &Request<'_>,
    plan: &Plan,
    bridge: Option<&Link>,
    host: &Link,
    pod_mac: &[u8],
    ipam: &CniResult,
    nets: &[IpNet],
    gateways: impl Fn(&IpConfig, &IpNet) -> Option<IpAddr>,
    routes: Vec<Route>,
) -> CniResult {
    let conf = req.conf;
    let mut res = CniResult::default();
    if let Some(br) = bridge {
        res.interfaces.push(Interface {
            name: br.name.clone(),
            mac: format_mac(&br.mac),
            ..Default::default()
        });
    }
    res.interfaces.push(Interface {
        name: plan.host_veth.clone(),
        mac: format_mac(&host.mac),
        mtu: conf.mtu,
        ..Default::default()
    });
    res.interfaces.push(Interface {
        name: req.env.ifname.clone(),
        mac: format_mac(pod_mac),
        mtu: conf.mtu,
        sandbox: plan
            .pod
            .as_ref()
            .map(|p| p.ns.path().to_string())
            .unwrap_or_default(),
    });
    let pod_if = res.interfaces.len() - 1;
    for (ip, net) in ipam.ips.iter().zip(nets) {
        res.ips.push(IpConfig {
            address: *net,
            gateway: gateways(ip, net),
            interface: Some(pod_if),
        });
    }
    res.routes = routes;
    res.dns = if conf.dns.is_empty() {
        ipam.dns.clone()
    } else {
        conf.dns.clone()
    };
    res
}

/// The pod's MAC as the endpoints map keeps it.
pub(super) fn mac6(mac: &[u8]) -> [u8; 6] {
    mac.try_into().unwrap_or([0; 6])
}

/// Removes the veth pair of an attachment: the host side `host` in this
/// namespace, the pod side `ifname` in `netns`. With `deferred`, both are
/// only retired (down, renamed), which frees their names at once, and the
/// tombstone name to reap is returned; otherwise they are deleted here.
pub(super) fn remove_pair(t: &Teardown<'_>) -> Result<Option<String>, DriverError> {
    let nl = t.nl;
    let pod_ns = t
        .netns
        .and_then(|p| Netns::open(std::path::Path::new(p)).ok())
        .filter(|ns| !ns.is_current());
    // The pod's handle, opened only when a request there is due.
    let pod_nl = |ns: &Netns| -> Option<Netlink> { ns.run(Netlink::open).ok()?.ok() };
    if t.deferred {
        let retired = nl
            .call(nl.retire_veth(t.host_veth))
            .map_err(DriverError::nl("retire host veth"))?;
        if let Some(tomb) = retired {
            // The pod side keeps its name until the pair is deleted: free it
            // for an ADD into the same namespace (podman reconnects do that).
            // If that fails, deleting the pair here frees it too.
            if let Some(ns) = &pod_ns {
                let r = pod_nl(ns).map(|p| p.call(p.retire_veth(t.ifname)));
                if !matches!(r, Some(Ok(_))) {
                    warn!(
                        "could not retire {} in the container: deleting the pair",
                        t.ifname
                    );
                    return nl
                        .call(nl.del_veth(&tomb))
                        .map(|()| None)
                        .map_err(DriverError::nl("delete host veth"));
                }
            }
            return Ok(Some(tomb));
        }
    }
    nl.call(nl.del_veth(t.host_veth))
        .map_err(DriverError::nl("delete host veth"))?;
    // If the host side was already gone but the pod still has our veth (a
    // half-finished ADD moved on), remove it inside the pod. A missing netns
    // is normal for DEL.
    if let Some(ns) = pod_ns {
        if let Some(p) = pod_nl(&ns) {
            p.call(p.del_veth(t.ifname))
                .map_err(DriverError::nl("delete container veth"))?;
        }
    }
    Ok(None)
}

/// CHECK of the pod side: the interface is there, up, with its addresses.
pub(super) fn check_pod(req: &Request<'_>, rec: &Record) -> Result<(), CniError> {
    let mismatch = |m: String| CniError::new(crate::cni::code::CHECK_MISMATCH, m);
    let ns = crate::commands::pod_netns(req.env)?;
    let ifn = req.env.ifname.as_str();
    let (link, have) = ns
        .run(|| {
            let nl = Netlink::open()?;
            nl.call(async {
                let Some(l) = nl.link_by_name(ifn).await? else {
                    return Ok((None, Vec::new()));
                };
                let a = nl.addrs(l.index).await?;
                Ok((Some(l), a))
            })
        })
        .map_err(crate::commands::ns_err)?
        .map_err(|e| crate::commands::nl_err("read the container interface", e))?;
    let link =
        link.ok_or_else(|| mismatch(format!("interface {ifn} is gone from {}", ns.path())))?;
    if !link.up {
        return Err(mismatch(format!("interface {ifn} is down")));
    }
    for n in &rec.ips {
        if !have.contains(n) {
            return Err(mismatch(format!("interface {ifn} lacks address {n}")));
        }
    }
    Ok(())
}
