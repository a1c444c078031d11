//! The CNI error object (SPEC.md "Error") and the spec's well-known codes.
//!
//! Modules return their own typed errors; this is the edge where they become
//! `{"cniVersion", "code", "msg", "details"}` on stdout.

use serde::Serialize;

/// Error codes defined by the CNI specification, plus this plugin's own (>= 100).
#[allow(
    dead_code,
    reason = "the whole table of the spec, whether or not a path produces each code yet"
)]
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available (cannot serve ADD).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific: the address pool is exhausted.
    pub const IPAM_EXHAUSTED: u32 = 100;
    /// Plugin-specific: a requested address is taken or outside the ranges.
    pub const IPAM_UNAVAILABLE: u32 = 101;
    /// Plugin-specific: a (protocol, hostIP, hostPort) is owned by another container.
    pub const PORT_CONFLICT: u32 = 102;
    /// Plugin-specific: the kernel refused a netlink or BPF operation.
    pub const KERNEL: u32 = 103;
    /// Plugin-specific: CHECK found a difference with what ADD set up.
    pub const CHECK_MISMATCH: u32 = 104;
    /// Plugin-specific: a delegated IPAM plugin failed.
    pub const DELEGATE: u32 = 105;
}

/// A CNI error as the runtime receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// One of [`code`].
    pub code: u32,
    /// Short human-readable message.
    pub msg: String,
    /// Longer explanation; may be empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details (usually the source error chain).
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON document written to stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

// Typed errors of the modules become CNI codes here, and only here.

impl From<crate::state::StateError> for CniError {
    fn from(e: crate::state::StateError) -> Self {
        use crate::state::StateError;
        let details = match &e {
            StateError::Io { source, .. } => source.to_string(),
            StateError::Corrupt { source, .. } => source.to_string(),
        };
        let code = match e {
            StateError::Io { .. } => code::IO,
            StateError::Corrupt { .. } => code::DECODE,
        };
        CniError::new(code, e.to_string()).with_details(details)
    }
}

impl From<crate::flannel::FlannelError> for CniError {
    fn from(e: crate::flannel::FlannelError) -> Self {
        use crate::flannel::FlannelError;
        match e {
            FlannelError::Malformed { .. } | FlannelError::Config(_) => {
                CniError::new(code::INVALID_CONFIG, e.to_string())
            }
            FlannelError::Missing { .. } => CniError::new(code::TRY_AGAIN, e.to_string()),
            FlannelError::Read { ref source, .. } => {
                let details = source.to_string();
                CniError::new(code::IO, e.to_string()).with_details(details)
            }
            FlannelError::NotAvailable(inner) => CniError {
                code: code::NOT_AVAILABLE,
                ..CniError::from(*inner)
            },
        }
    }
}

impl From<crate::ipam::host_local::AllocError> for CniError {
    fn from(e: crate::ipam::host_local::AllocError) -> Self {
        use crate::ipam::host_local::AllocError;
        match e {
            AllocError::Store(s) => CniError::from(s),
            AllocError::Exhausted { .. } => CniError::new(code::IPAM_EXHAUSTED, e.to_string()),
            AllocError::NotInRange { .. }
            | AllocError::TwoInOneSet { .. }
            | AllocError::Gateway { .. }
            | AllocError::Taken { .. } => CniError::new(code::IPAM_UNAVAILABLE, e.to_string()),
        }
    }
}

impl From<crate::ipam::host_local::StoreError> for CniError {
    fn from(e: crate::ipam::host_local::StoreError) -> Self {
        use crate::ipam::host_local::StoreError;
        let code = match e {
            StoreError::Io { .. } | StoreError::NotADirectory(_) => code::IO,
            StoreError::NetworkName(_) => code::INVALID_CONFIG,
        };
        CniError::new(code, e.to_string())
    }
}

/// Renders an error and its `source()` chain as one line, for `details`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}
