//! The CNI contract: environment, configuration, results, errors, versions.

pub mod env;
pub mod error;
pub mod gojson;
pub mod types;
pub mod version;

pub use env::{CniEnv, Command};
pub use error::{code, CniError};
pub use types::{CniResult, Dns, Interface, IpConfig, Route};
