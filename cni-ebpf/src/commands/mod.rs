//! One file per CNI command, each with a single `exec`.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;
pub mod version;

use std::net::IpAddr;

use crate::{
    cni::{code, CniError},
    datapath::BpfError,
    netlink::NlError,
    netns::NetnsError,
};

/// Folds a data-path error into a CNI error.
pub fn bpf_err(what: &str, e: BpfError) -> CniError {
    let c = match e {
        BpfError::Bpffs { .. } | BpfError::Io { .. } => code::IO,
        _ => code::KERNEL,
    };
    CniError::new(c, format!("{what}: {e}")).with_details(crate::cni::error::chain(&e))
}

/// Installs the hostPort mappings of an attachment; a port held by another
/// container is error 102 naming it, with nothing installed.
pub fn claim_ports(
    dp: &crate::datapath::Datapath,
    conf: &crate::config::NetConf,
    ips: &[IpAddr],
    owner: u64,
) -> Result<(), CniError> {
    use crate::datapath::PortError;
    dp.claim_ports(&conf.runtime.port_mappings, ips, owner)
        .map_err(|e| match e {
            PortError::Conflict { owner: holder, .. } => {
                let who = match crate::state::find_owner(&conf.state_dir, holder) {
                    Some(r) => format!(
                        "container {} (ifname {}, network {})",
                        r.container_id, r.ifname, r.network
                    ),
                    None => format!("attachment {holder:016x}"),
                };
                let msg = e.to_string().replace("another container", &who);
                CniError::new(code::PORT_CONFLICT, msg)
            }
            PortError::Bpf(b) => bpf_err("hostPort mappings", *b),
        })
}

/// Folds a netlink error into a CNI error.
pub fn nl_err(what: &str, e: NlError) -> CniError {
    CniError::new(code::KERNEL, format!("{what}: {e}")).with_details(crate::cni::error::chain(&e))
}

/// Folds a namespace error into a CNI error.
pub fn ns_err(e: NetnsError) -> CniError {
    CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {e}"))
        .with_details(crate::cni::error::chain(&e))
}

/// Addresses only, from networks.
pub fn addrs(ips: &[ipnet::IpNet]) -> Vec<IpAddr> {
    ips.iter().map(|n| n.addr()).collect()
}
