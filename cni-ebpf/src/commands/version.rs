//! VERSION: which spec versions this plugin speaks.

use serde_json::{json, Value};

use crate::cni::version::{LATEST, SUPPORTED};

/// The VERSION result; `requested` is the `cniVersion` from stdin, if any.
pub fn exec(requested: Option<&str>) -> Value {
    let v = requested
        .filter(|v| SUPPORTED.contains(v))
        .unwrap_or(LATEST);
    json!({"cniVersion": v, "supportedVersions": SUPPORTED})
}
