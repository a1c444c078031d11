//! Chained mode: an earlier plugin of the list made the interfaces; the
//! host veth it names in `prevResult` gets the programs, and the result is
//! passed on unchanged. Nothing here is made, so nothing is removed.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Driver, DriverError, Plan, Request, Steps, Teardown, TornDown, Wired};
use crate::{
    cni::{CniError, CniResult},
    netlink::{parse_mac, Link},
    state::Record,
};

/// The chained driver.
pub struct Chained;

impl Driver for Chained {
    fn validate(&self, req: &Request<'_>) -> Result<Plan, DriverError> {
        let (env, prev) = (req.env, prev(req)?);
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
        let nl = req.nl;
        let host = nl
            .call(async {
                for c in prev.interfaces.iter().filter(|i| i.sandbox.is_empty()) {
                    if let Some(l) = nl.link_by_name(&c.name).await? {
                        if l.kind == "veth" {
                            return Ok(Some(l));
                        }
                    }
                }
                Ok(None)
            })
            .map_err(DriverError::nl("find the host veth"))?
            .ok_or_else(|| {
                DriverError::Config(
                    "prevResult lists no host-side veth interface to attach to".to_string(),
                )
            })?;
        Ok(Plan {
            pod: None,
            mac: None,
            host_veth: host.name.clone(),
            host: Some(host),
            ips: prev
                .ips
                .iter()
                .map(|i| i.address)
                .filter(|n| ips.contains(&n.addr()))
                .collect(),
            pod_mac,
        })
    }

    fn addresses(&self, ipam: &CniResult) -> Vec<IpNet> {
        ipam.ips.iter().map(|i| i.address).collect()
    }

    fn setup(
        &self,
        req: &Request<'_>,
        plan: &Plan,
        _ipam: &CniResult,
        _steps: &mut Steps<'_>,
    ) -> Result<Wired, DriverError> {
        Ok(Wired {
            host: plan.host.clone().expect("validated"),
            pod_mac: plan.pod_mac,
            endpoint_nets: plan.ips.clone(),
            result: prev(req)?.clone(),
        })
    }

    fn teardown(&self, _t: &Teardown<'_>) -> TornDown {
        TornDown::default()
    }

    fn check(&self, _req: &Request<'_>, _rec: &Record, _host: &Link) -> Result<(), CniError> {
        Ok(())
    }
}

fn prev<'a>(req: &Request<'a>) -> Result<&'a CniResult, DriverError> {
    req.conf.prev_result.as_ref().ok_or_else(|| {
        DriverError::Config("chained mode needs a prevResult (place cni-ebpf after the plugin that creates the interfaces)".to_string())
    })
}
