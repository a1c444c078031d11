//! One file per CNI command, each with a single `exec`.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod repair;
pub mod status;
pub mod version;

use std::net::IpAddr;

use crate::{
    cni::{code, CniError},
    datapath::BpfError,
    netlink::NlError,
    netns::NetnsError,
    network::DriverError,
};

/// Folds a data-path error into a CNI error.
pub fn bpf_err(what: &str, e: BpfError) -> CniError {
    bpf_err_ref(what, &e)
}

fn bpf_err_ref(what: &str, e: &BpfError) -> CniError {
    let c = match e {
        BpfError::Bpffs { .. } | BpfError::Io { .. } => code::IO,
        _ => code::KERNEL,
    };
    CniError::new(c, format!("{what}: {e}")).with_details(crate::cni::error::chain(e))
}

/// One failure of a best-effort teardown (DEL, GC), kept typed with its
/// source until [`teardown_result`] renders the list at the edge (as
/// netavark's error list); each is shown as the CNI error it would be.
#[derive(Debug)]
pub enum TeardownError {
    /// The network driver could not remove something.
    Driver(DriverError),
    /// A data-path step failed.
    Datapath {
        /// The step.
        what: &'static str,
        /// Why.
        source: BpfError,
    },
    /// A netlink request failed.
    Netlink {
        /// The step.
        what: &'static str,
        /// Why.
        source: NlError,
    },
    /// A step that reports CNI errors already (IPAM, the state store, a
    /// nested teardown), with what was being done in front.
    Cni {
        /// The step, empty if the error says it.
        what: &'static str,
        /// The error.
        error: CniError,
    },
}

impl TeardownError {
    /// The CNI error this failure is on its own.
    pub fn to_cni(&self) -> CniError {
        match self {
            Self::Driver(e) => CniError::from(e),
            Self::Datapath { what, source } => bpf_err_ref(what, source),
            Self::Netlink { what, source } => nl_err(what, source),
            Self::Cni { what: "", error } => error.clone(),
            Self::Cni { what, error } => CniError {
                msg: format!("{what}: {}", error.msg),
                ..error.clone()
            },
        }
    }
}

impl std::fmt::Display for TeardownError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_cni().fmt(f)
    }
}

impl std::error::Error for TeardownError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Driver(e) => Some(e),
            Self::Datapath { source, .. } => Some(source),
            Self::Netlink { source, .. } => Some(source),
            Self::Cni { error, .. } => Some(error),
        }
    }
}

/// Installs the hostPort mappings of an attachment; a port held by another
/// container is error 102 naming it, with nothing installed.
pub fn claim_ports(
    dp: &crate::datapath::Datapath,
    conf: &crate::config::NetConf,
    ips: &[IpAddr],
    owner: u64,
) -> Result<(), CniError> {
    dp.claim_ports(&conf.runtime.port_mappings, ips, owner)
        .map_err(|e| port_err(conf, e))
}

/// Checks, without claiming anything, that no other container holds the
/// hostPorts for a pod with addresses of the families of `ips`.
pub fn check_ports(
    dp: &crate::datapath::Datapath,
    conf: &crate::config::NetConf,
    ips: &[IpAddr],
    owner: u64,
) -> Result<(), CniError> {
    check_host_ips(conf)?;
    dp.check_ports(&conf.runtime.port_mappings, ips, owner)
        .map_err(|e| port_err(conf, e))
}

/// Every `hostIP` of the mappings is an address of the node (or empty /
/// unspecified: every node address). The reference `portmap` only ever
/// translates destinations local to the node (`--dst-type LOCAL`); a mapping
/// naming a host behind the node, an external server or another pod would
/// take that address's traffic, so it is refused (code 7) before any change.
pub fn check_host_ips(conf: &crate::config::NetConf) -> Result<(), CniError> {
    let wanted: Vec<(usize, IpAddr)> = conf
        .runtime
        .port_mappings
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((i, m.host_ip.parse::<IpAddr>().ok()?)))
        .filter(|(_, a)| !a.is_unspecified())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let have: Vec<IpAddr> = crate::netlink::Netlink::with(|nl| async move {
        Ok(nl
            .all_addrs()
            .await?
            .into_iter()
            .map(|(_, n)| n.addr())
            .collect())
    })
    .map_err(|e| nl_err("list the node's addresses (hostIP check)", e))?;
    match wanted.iter().find(|(_, a)| !have.contains(a)) {
        None => Ok(()),
        Some((i, a)) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "invalid runtimeConfig.portMappings[{i}].hostIP {a}: not an address of this node (a hostPort only answers on the node's own addresses)"
            ),
        )),
    }
}

/// A port conflict is error 102 naming the holder.
fn port_err(conf: &crate::config::NetConf, e: crate::datapath::PortError) -> CniError {
    use crate::datapath::PortError;
    match e {
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
    }
}

/// The result of a best-effort teardown (DEL, GC) that collected `errors`:
/// each is logged, the first names the error, all go to `details`.
pub fn teardown_result(what: &str, errors: &[TeardownError]) -> Result<(), CniError> {
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for e in &shown {
        crate::warn!("{what}: {e}");
    }
    match shown.first() {
        None => Ok(()),
        Some(first) => Err(CniError::new(
            code::IO,
            format!("{what} left {} problem(s): {first}", errors.len()),
        )
        .with_details(shown.join("; "))),
    }
}

/// Folds a netlink error into a CNI error.
pub fn nl_err(what: &str, e: impl std::borrow::Borrow<NlError>) -> CniError {
    let e = e.borrow();
    CniError::new(code::KERNEL, format!("{what}: {e}")).with_details(crate::cni::error::chain(e))
}

/// Opens `CNI_NETNS` (required for ADD and CHECK, so its absence is code 4).
pub fn pod_netns(env: &crate::cni::CniEnv) -> Result<crate::netns::Netns, CniError> {
    let path = env.netns.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "required env variables [CNI_NETNS] missing",
        )
    })?;
    crate::netns::Netns::open(path).map_err(ns_err)
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
