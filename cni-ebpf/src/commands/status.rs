//! STATUS (spec 1.1): can this plugin serve an ADD right now?

use crate::{
    cni::{code, CniError},
    config::NetConf,
    ipam::{host_local, Ipam},
};

/// Runs STATUS: no recorded attachment has lost its pins or map entries
/// (code 51, naming what is missing), the data path loads (bpffs mountable,
/// programs pass the verifier or are already pinned; code 50) and the
/// built-in IPAM has free addresses (code 50).
pub fn exec(conf: &NetConf) -> Result<(), CniError> {
    if let Some(e) = super::repair::lost(conf) {
        return Err(e);
    }
    super::repair::open(conf).map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("eBPF data path unavailable: {}", e.msg),
        )
        .with_details(e.details.clone())
    })?;
    if let Some(Ipam::HostLocal(c)) = Ipam::from_conf(conf)? {
        let held = host_local::all_reservations(&c.data_dir, &conf.name).unwrap_or_default();
        for (i, set) in c.range_sets.iter().enumerate() {
            let used = held
                .iter()
                .filter(|(ip, _, _)| set.iter().any(|r| r.contains(*ip)))
                .count();
            let size: u128 = set.iter().map(range_size).sum();
            let gws = set
                .iter()
                .filter(|r| r.gateway.is_some_and(|g| r.contains(g)))
                .count() as u128;
            if size <= gws + used as u128 {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("IPAM range set {i} of network {} is exhausted", conf.name),
                ));
            }
        }
    }
    Ok(())
}

fn range_size(r: &host_local::Range) -> u128 {
    let n = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a),
    };
    n(r.range_end).saturating_sub(n(r.range_start)) + 1
}
