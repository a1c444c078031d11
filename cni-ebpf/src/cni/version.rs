//! CNI specification versions this plugin speaks.

use super::error::{code, CniError};

/// Versions accepted in `cniVersion` and reported by VERSION, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version (used for errors before a config is read).
pub const LATEST: &str = "1.1.0";

/// Parses `major.minor.patch`.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().unwrap_or("0").parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// True when `v` is at least `min` (both dotted versions).
pub fn at_least(v: &str, min: &str) -> bool {
    match (parse(v), parse(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// Checks a config's `cniVersion` against [`SUPPORTED`] and the command's own
/// minimum (CHECK needs 0.4.0, GC and STATUS 1.1.0).
pub fn check(v: &str, command: &str) -> Result<(), CniError> {
    if !SUPPORTED.contains(&v) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI versions: config is {v:?}, plugin supports {SUPPORTED:?}"),
        ));
    }
    let min = match command {
        "CHECK" => "0.4.0",
        "GC" | "STATUS" => "1.1.0",
        _ => return Ok(()),
    };
    if !at_least(v, min) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {command}: needs cniVersion {min} or later, config is {v}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(check("0.3.1", "ADD").is_ok());
        assert_eq!(check("0.2.0", "ADD").unwrap_err().code, 1);
        assert_eq!(check("2.0.0", "ADD").unwrap_err().code, 1);
        assert_eq!(check("0.3.1", "CHECK").unwrap_err().code, 1);
        assert!(check("0.4.0", "CHECK").is_ok());
        assert_eq!(check("1.0.0", "GC").unwrap_err().code, 1);
        assert_eq!(check("1.0.0", "STATUS").unwrap_err().code, 1);
        assert!(check("1.1.0", "GC").is_ok());
        assert!(at_least("1.10.0", "1.9.0"));
    }
}
