//! Network drivers: how a pod's interfaces come to be and go away, one per
//! `mode`, behind one small trait (as netavark's `network/driver.rs`):
//!
//! - [`bridge`]: a veth pair whose host side is a port of a Linux bridge
//!   that holds the gateway addresses (the reference `bridge` plugin);
//! - [`routed`]: a veth pair with host routes and a link-local next hop, no
//!   bridge and no bridge limit;
//! - [`chained`]: nothing is made; the host veth of the earlier plugin's
//!   `prevResult` is used as it is.
//!
//! The commands call [`Driver::validate`] before any change, then IPAM,
//! then [`Driver::setup`] (each change registers its undo with the ADD's
//! [`Rollback`]), then publish the data path on the host veth it returns;
//! DEL and GC call [`Driver::teardown`], CHECK [`Driver::check`]. The data
//! path (programs, map entries) is not a driver's business. Every request
//! of a command goes through one netlink handle per namespace: the node's,
//! passed in, and the pod's, opened by `validate` (see [`crate::netlink`]).

pub mod bridge;
pub mod chained;
pub mod routed;
mod veth;

use ipnet::IpNet;

use crate::{
    cni::{code, error::chain, CniEnv, CniError, CniResult},
    config::{Mode, NetConf},
    netlink::{Link, Netlink, NlError},
    netns::{Netns, NetnsError},
    rollback::Rollback,
    state::{Record, Store},
};

pub use veth::{routed_gw, ROUTED_GW4, ROUTED_GW6};

/// What a driver reports; [`CniError`] gets its code in one place (`From`).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The kernel refused a netlink request.
    #[error("{what}: {source}")]
    Netlink {
        /// The step.
        what: &'static str,
        /// The request that failed.
        #[source]
        source: NlError,
    },
    /// `CNI_NETNS` cannot be entered.
    #[error("CNI_NETNS: {0}")]
    Netns(#[from] NetnsError),
    /// A write under /proc/sys failed.
    #[error("{what}")]
    Sysctl {
        /// What was written.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The runtime's environment does not fit (code 4).
    #[error("{0}")]
    Env(String),
    /// The configuration does not fit (code 7).
    #[error("{0}")]
    Config(String),
    /// Recording a step in the state record failed.
    #[error(transparent)]
    State(#[from] CniError),
}

impl DriverError {
    /// The netlink failure of step `what`.
    pub fn nl(what: &'static str) -> impl FnOnce(NlError) -> Self {
        move |source| Self::Netlink { what, source }
    }
}

impl From<&DriverError> for CniError {
    fn from(e: &DriverError) -> Self {
        match e {
            DriverError::Netlink { what, source } => {
                CniError::new(code::KERNEL, format!("{what}: {source}")).with_details(chain(source))
            }
            DriverError::Netns(n) => {
                CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {n}")).with_details(chain(n))
            }
            DriverError::Sysctl { what, source } => {
                CniError::new(code::IO, what.clone()).with_details(source.to_string())
            }
            DriverError::Env(m) => CniError::new(code::INVALID_ENV, m.clone()),
            DriverError::Config(m) => CniError::new(code::INVALID_CONFIG, m.clone()),
            DriverError::State(c) => c.clone(),
        }
    }
}

impl From<DriverError> for CniError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::State(c) => c,
            e => CniError::from(&e),
        }
    }
}

/// One attachment as the runtime asked for it.
pub struct Request<'a> {
    /// The CNI environment.
    pub env: &'a CniEnv,
    /// The network.
    pub conf: &'a NetConf,
    /// The node's netlink handle.
    pub nl: &'a Netlink,
}

/// The pod's namespace, with the command's handle in it.
pub struct PodNs {
    /// The namespace.
    pub ns: Netns,
    /// A netlink socket opened inside it.
    pub nl: Netlink,
}

/// What [`Driver::validate`] found (nothing changed yet).
pub struct Plan {
    /// The pod's namespace (drivers that make interfaces).
    pub pod: Option<PodNs>,
    /// The pod interface's MAC the runtime asked for.
    pub mac: Option<[u8; 6]>,
    /// The host veth's name.
    pub host_veth: String,
    /// The host veth, when it exists already (chained).
    pub host: Option<Link>,
    /// The pod's addresses, when known before IPAM (chained).
    pub ips: Vec<IpNet>,
    /// The pod interface's MAC, when known before setup (chained).
    pub pod_mac: [u8; 6],
}

/// What [`Driver::setup`] made.
pub struct Wired {
    /// The host veth the programs go on.
    pub host: Link,
    /// The pod interface's MAC.
    pub pod_mac: [u8; 6],
    /// The nets published in the endpoints map.
    pub endpoint_nets: Vec<IpNet>,
    /// The result document (without the data path's part).
    pub result: CniResult,
}

/// The ADD's state record and rollback, which setup extends step by step.
pub struct Steps<'a> {
    /// Where the record is saved.
    pub store: &'a Store,
    /// The record of this attachment.
    pub record: &'a mut Record,
    /// Undo steps.
    pub rb: &'a mut Rollback,
}

impl Steps<'_> {
    /// Saves the record as it is now.
    pub fn save(&self) -> Result<(), DriverError> {
        Ok(self.store.save(self.record).map_err(CniError::from)?)
    }
}

/// What DEL and GC know of an attachment they tear down.
pub struct Teardown<'a> {
    /// The network.
    pub conf: &'a NetConf,
    /// The node's netlink handle.
    pub nl: &'a Netlink,
    /// The state record, if readable.
    pub record: Option<&'a Record>,
    /// The host veth's name.
    pub host_veth: &'a str,
    /// The pod's interface name.
    pub ifname: &'a str,
    /// The pod's namespace path, if known.
    pub netns: Option<&'a str>,
    /// Retire the veth now and leave its deletion to the reaper.
    pub deferred: bool,
}

/// What a teardown did and could not do.
#[derive(Default)]
pub struct TornDown {
    /// A retired veth to delete later (see reaper.rs).
    pub tomb: Option<String>,
    /// Every failure, in order; teardown keeps going past each.
    pub errors: Vec<DriverError>,
}

/// One network mode.
pub trait Driver {
    /// Checks the request before anything changes; opens the pod's
    /// namespace and its netlink handle.
    fn validate(&self, req: &Request<'_>) -> Result<Plan, DriverError>;
    /// The pod's addresses as it gets them, from IPAM's result.
    fn addresses(&self, ipam: &CniResult) -> Vec<IpNet>;
    /// Makes and configures the interfaces. Each change is recorded in
    /// `steps` (state record, undo) as it is made.
    fn setup(
        &self,
        req: &Request<'_>,
        plan: &Plan,
        ipam: &CniResult,
        steps: &mut Steps<'_>,
    ) -> Result<Wired, DriverError>;
    /// Removes what setup made, as far as it got: best effort, complete,
    /// everything already gone counts as done.
    fn teardown(&self, t: &Teardown<'_>) -> TornDown;
    /// CHECK: the interfaces are as setup made them (`host` is the host
    /// veth, found and matched by the caller).
    fn check(&self, req: &Request<'_>, rec: &Record, host: &Link) -> Result<(), CniError>;
}

/// The driver of `mode`.
pub fn driver(mode: Mode) -> &'static dyn Driver {
    match mode {
        Mode::Bridge => &bridge::Bridge,
        Mode::Routed => &routed::Routed,
        Mode::Chained => &chained::Chained,
    }
}
