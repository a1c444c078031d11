//! Routed mode: no bridge. The pod gets host-prefix addresses (/32, /128)
//! and its routes via a link-local next hop that a permanent neighbour
//! entry maps to the host veth's MAC; the node routes each address to its
//! host veth. No bridge port limit, and ADD stays flat in the node's size.

use ipnet::IpNet;

use super::{
    bridge::push_default, routed_gw, veth, Driver, DriverError, Plan, Request, Steps, Teardown,
    TornDown, Wired,
};
use crate::{
    cni::{CniError, CniResult, Route},
    failpoint,
    netlink::Link,
    state::Record,
};

/// The routed driver.
pub struct Routed;

impl Driver for Routed {
    fn validate(&self, req: &Request<'_>) -> Result<Plan, DriverError> {
        veth::validate(req)
    }

    fn addresses(&self, ipam: &CniResult) -> Vec<IpNet> {
        ipam.ips
            .iter()
            .map(|ip| {
                let a = ip.address.addr();
                IpNet::new(a, if a.is_ipv4() { 32 } else { 128 }).expect("host prefix")
            })
            .collect()
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
        // Node side: forwarding, the veth up; IPv6 on it only when it
        // routes IPv6 itself.
        veth::forwarding(&ipam.ips)?;
        if !ipam.ips.iter().any(|i| i.address.addr().is_ipv6()) {
            veth::disable_ipv6(&host)?;
        }
        let nl = req.nl;
        nl.call(nl.set_up(host.index))
            .map_err(DriverError::nl("host veth up"))?;
        failpoint::hit("after-node-side");
        let routes = pod_routes(ipam, &nets);
        let mac = veth::configure_pod(req, plan, &host, &nets, &routes, true)?;
        steps.record.mac = crate::netlink::format_mac(&mac);
        nl.call(async {
            for n in &nets {
                nl.add_route(*n, None, host.index).await?;
                nl.add_neigh(host.index, n.addr(), &mac).await?;
            }
            Ok(())
        })
        .map_err(DriverError::nl("routes to the pod"))?;
        failpoint::hit("after-netns");
        // The endpoints map keeps IPAM's subnets (the programs' masquerade
        // and pod-to-pod decisions), the record too (repair republishes them).
        let subnets: Vec<IpNet> = ipam.ips.iter().map(|i| i.address).collect();
        steps.record.endpoint_nets = subnets.clone();
        let result = veth::result(
            req,
            plan,
            None,
            &host,
            &mac,
            ipam,
            &nets,
            |_, net| Some(routed_gw(net.addr())),
            routes,
        );
        Ok(Wired {
            pod_mac: veth::mac6(&mac),
            endpoint_nets: subnets,
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
        out
    }

    fn check(&self, req: &Request<'_>, rec: &Record, _host: &Link) -> Result<(), CniError> {
        veth::check_pod(req, rec)
    }
}

/// A default route per family and the IPAM routes, all via the link-local
/// next hop.
fn pod_routes(ipres: &CniResult, nets: &[IpNet]) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for net in nets {
        push_default(&mut routes, net.addr(), routed_gw(net.addr()));
    }
    for r in ipres.routes.iter().filter(|r| r.dst.prefix_len() != 0) {
        routes.push(Route::via(r.dst, Some(routed_gw(r.dst.addr()))));
    }
    routes
}
