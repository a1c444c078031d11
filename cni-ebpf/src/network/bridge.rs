//! Bridge mode (the reference `bridge` plugin): the host veth is a port of
//! a Linux bridge that holds the gateway addresses; pods of a node share
//! one L2 segment. At most [`BRIDGE_MAX_PORTS`](crate::netlink::BRIDGE_MAX_PORTS)
//! pods per bridge.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{veth, Driver, DriverError, Plan, Request, Steps, Teardown, TornDown, Wired};
use crate::{
    cni::{code, CniError, CniResult, IpConfig, Route},
    failpoint,
    netlink::Link,
    state::Record,
};

/// The bridge driver.
pub struct Bridge;

impl Driver for Bridge {
    fn validate(&self, req: &Request<'_>) -> Result<Plan, DriverError> {
        veth::validate(req)
    }

    fn addresses(&self, ipam: &CniResult) -> Vec<IpNet> {
        ipam.ips.iter().map(|i| i.address).collect()
    }

    fn setup(
        &self,
        req: &Request<'_>,
        plan: &Plan,
        ipam: &CniResult,
        steps: &mut Steps<'_>,
    ) -> Result<Wired, DriverError> {
        let nets = self.addresses(ipam);
        let host = veth::create_pair(req, plan, steps)?;
        let bridge = node_side(req, &host, &ipam.ips)?;
        failpoint::hit("after-node-side");
        let routes = pod_routes(req.conf.is_default_gateway, ipam);
        let mac = veth::configure_pod(req, plan, &host, &nets, &routes, false)?;
        steps.record.mac = crate::netlink::format_mac(&mac);
        // The node's neighbour entries of a reused address may still hold the
        // MAC of the pod that had it.
        let nl = req.nl;
        nl.call(async {
            for n in &nets {
                nl.refresh_neigh(bridge.index, n.addr(), &mac).await?;
            }
            Ok(())
        })
        .map_err(DriverError::nl("node neighbour entries of the pod"))?;
        failpoint::hit("after-netns");
        let is_gateway = req.conf.is_gateway;
        let result = veth::result(
            req,
            plan,
            Some(&bridge),
            &host,
            &mac,
            ipam,
            &nets,
            |ip, _| if is_gateway { ip.gateway } else { None },
            routes,
        );
        Ok(Wired {
            pod_mac: veth::mac6(&mac),
            endpoint_nets: nets,
            host,
            result,
        })
    }

    fn teardown(&self, t: &Teardown<'_>) -> TornDown {
        let mut out = TornDown::default();
        match veth::remove_pair(t) {
            Ok(tomb) => out.tomb = tomb,
            Err(e) => out.errors.push(e),
        }
        // The node's neighbour entries of the pod's addresses on the bridge:
        // ADD sets them (so a reused address never keeps an old MAC), and with
        // the bridge up they would otherwise stay until the kernel's neighbour
        // GC, which the node-wide table limit (gc_thresh3) can reach first.
        // Before the addresses are released, so no new pod holds them yet.
        if let Some(r) = t.record.filter(|r| !r.ips.is_empty()) {
            let nl = t.nl;
            let res = nl.call(async {
                if let Some(br) = nl.link_by_name(&t.conf.bridge).await? {
                    for n in &r.ips {
                        nl.del_neigh(br.index, n.addr()).await?;
                    }
                }
                Ok(())
            });
            if let Err(e) = res {
                out.errors
                    .push(DriverError::nl("delete the pod's neighbour entries")(e));
            }
        }
        out
    }

    fn check(&self, req: &Request<'_>, rec: &Record, host: &Link) -> Result<(), CniError> {
        if host.master.is_none() {
            return Err(CniError::new(
                code::CHECK_MISMATCH,
                format!(
                    "host veth {} is not on bridge {}",
                    rec.host_veth, req.conf.bridge
                ),
            ));
        }
        veth::check_pod(req, rec)
    }
}

/// The bridge with its gateway addresses, the port settings, forwarding on.
fn node_side(req: &Request<'_>, host: &Link, ips: &[IpConfig]) -> Result<Link, DriverError> {
    let conf = req.conf;
    veth::forwarding(ips)?;
    veth::disable_ipv6(host)?;
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
    let (nl, hidx) = (req.nl, host.index);
    nl.call(async {
        let br = nl
            .ensure_bridge(&conf.bridge, conf.mtu, conf.promisc_mode)
            .await?;
        for gw in &gws {
            if conf.force_address {
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
        nl.set_master(hidx, br.index, &br.name).await?;
        if conf.hairpin_mode {
            nl.set_hairpin(hidx, true).await?;
        }
        nl.set_up(hidx).await?;
        Ok(br)
    })
    .map_err(DriverError::nl("bridge"))
}

/// The default route via the gateway (`isDefaultGateway`) and the IPAM
/// routes via their own or the family's gateway.
fn pod_routes(is_default_gateway: bool, ipres: &CniResult) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    if is_default_gateway {
        for ip in &ipres.ips {
            if let Some(gw) = ip.gateway {
                push_default(&mut routes, gw, gw);
            }
        }
    }
    for r in &ipres.routes {
        if is_default_gateway && r.dst.prefix_len() == 0 {
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

/// Adds a default route of `ip`'s family via `gw`, unless there is one.
pub(super) fn push_default(routes: &mut Vec<Route>, ip: IpAddr, gw: IpAddr) {
    let dst = Route::default_for(ip);
    if !routes.iter().any(|r| r.dst == dst) {
        routes.push(Route::via(dst, Some(gw)));
    }
}
