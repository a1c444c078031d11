//! Address management: the built-in `host-local` (same config, on-disk format
//! and locking as the reference plugin) or any other IPAM plugin on
//! `CNI_PATH`, run as the reference plugins' `ipam.Exec*` do.

pub mod delegate;
pub mod host_local;

use std::net::IpAddr;

use crate::{
    cni::{code, CniError, CniResult},
    config::NetConf,
};

/// The IPAM a network uses.
pub enum Ipam {
    /// Built-in host-local.
    HostLocal(host_local::HostLocalConfig),
    /// Another plugin binary, by type name.
    Delegate(String),
}

impl Ipam {
    /// From the config's `ipam` object; `None` when there is no IPAM (chained).
    pub fn from_conf(conf: &NetConf) -> Result<Option<Self>, CniError> {
        match (conf.ipam_type.as_deref(), conf.ipam.as_ref()) {
            (Some("host-local"), Some(v)) => Ok(Some(Self::HostLocal(
                host_local::HostLocalConfig::parse(v)?,
            ))),
            (Some(t), Some(_)) => Ok(Some(Self::Delegate(t.to_string()))),
            _ => Ok(None),
        }
    }

    /// One address of each family an allocation may return (the built-in
    /// IPAM knows from its ranges; a delegate may return either).
    pub fn families(&self) -> Vec<IpAddr> {
        let (v4, v6) = (IpAddr::from([0u8; 4]), IpAddr::from([0u8; 16]));
        match self {
            Self::HostLocal(c) => {
                let has = |want_v4: bool| {
                    c.range_sets
                        .iter()
                        .flatten()
                        .any(|r| r.subnet.addr().is_ipv4() == want_v4)
                };
                [(has(true), v4), (has(false), v6)]
                    .into_iter()
                    .filter_map(|(h, a)| h.then_some(a))
                    .collect()
            }
            Self::Delegate(_) => vec![v4, v6],
        }
    }

    /// Allocates addresses for (container, ifname).
    pub fn add(
        &self,
        conf: &NetConf,
        container_id: &str,
        ifname: &str,
        requested: &[IpAddr],
        attempt: host_local::Attempt,
        cni_path: &str,
    ) -> Result<CniResult, CniError> {
        match self {
            Self::HostLocal(c) => {
                let ips =
                    host_local::allocate(c, &conf.name, container_id, ifname, requested, attempt)?;
                Ok(CniResult {
                    ips,
                    routes: c.routes.clone(),
                    dns: c.dns.clone(),
                    ..Default::default()
                })
            }
            Self::Delegate(t) => {
                let v = delegate::exec(t, "ADD", &conf.raw, cni_path)?.ok_or_else(|| {
                    CniError::new(
                        code::DELEGATE,
                        format!("IPAM plugin {t:?} returned no result"),
                    )
                })?;
                let r = CniResult::from_value(&v)?;
                if r.ips.is_empty() {
                    return Err(CniError::new(
                        code::DELEGATE,
                        format!("IPAM plugin {t:?} returned no addresses"),
                    ));
                }
                Ok(r)
            }
        }
    }

    /// Releases everything (container, ifname) holds; `known` is what its
    /// state record lists, if anything (the built-in IPAM then releases just
    /// those). Idempotent. A delegate is told the attachment in its
    /// environment (with `netns` when given), whatever this process's says.
    pub fn del(
        &self,
        conf: &NetConf,
        container_id: &str,
        ifname: &str,
        known: &[IpAddr],
        cni_path: &str,
        netns: Option<&str>,
    ) -> Result<(), CniError> {
        match self {
            Self::HostLocal(c) => {
                host_local::release_known(c, &conf.name, container_id, ifname, known)
            }
            Self::Delegate(t) => {
                let mut env = vec![("CNI_CONTAINERID", container_id), ("CNI_IFNAME", ifname)];
                env.extend(netns.map(|n| ("CNI_NETNS", n)));
                delegate::exec_with(t, "DEL", &conf.raw, cni_path, &env).map(|_| ())
            }
        }
    }

    /// Verifies that (container, ifname) still holds `ips`.
    pub fn check(
        &self,
        conf: &NetConf,
        container_id: &str,
        ifname: &str,
        ips: &[IpAddr],
        cni_path: &str,
    ) -> Result<(), CniError> {
        match self {
            Self::HostLocal(c) => {
                let held = host_local::reserved_by(c, &conf.name, container_id, ifname)?;
                for ip in ips {
                    if !held.contains(ip) {
                        return Err(CniError::new(
                            code::CHECK_MISMATCH,
                            format!("IPAM: {ip} is no longer reserved for {container_id}/{ifname}"),
                        ));
                    }
                }
                Ok(())
            }
            Self::Delegate(t) => delegate::exec(t, "CHECK", &conf.raw, cni_path).map(|_| ()),
        }
    }
}
