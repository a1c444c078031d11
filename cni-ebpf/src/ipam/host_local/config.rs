//! The host-local `ipam` section: keys, ranges and their validation (the
//! reference's `LoadIPAMConfig`, `Range.Canonicalize` and
//! `RangeSet.Canonicalize`), with errors reported as
//! [`code::INVALID_CONFIG`] naming the offending key and value.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::Value;

use crate::cni::{
    code,
    gojson::{Fields, Object},
    CniError, Dns, Route,
};

crate::go_fields! {
    /// host-local's `ipam` keys: the reference's `IPAMConfig` with its
    /// embedded legacy `Range`, matched as Go matches them.
    pub enum IpamKey {
        Type = "type",
        Subnet = "subnet",
        RangeStart = "rangeStart",
        RangeEnd = "rangeEnd",
        Gateway = "gateway",
        Ranges = "ranges",
        Routes = "routes",
        DataDir = "dataDir",
        ResolvConf = "resolvConf",
    }
}

/// An `ipam` object, folded.
pub type IpamObject = Object<IpamKey>;

crate::go_fields! {
    /// One range's keys (the reference's `Range`).
    pub enum RangeKey {
        Subnet = "subnet",
        RangeStart = "rangeStart",
        RangeEnd = "rangeEnd",
        Gateway = "gateway",
    }
}

crate::go_fields! {
    /// One route's keys (`types.Route`).
    pub enum RouteKey {
        Dst = "dst",
        Gw = "gw",
        Mtu = "mtu",
        Priority = "priority",
    }
}

/// The reference plugin's default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One contiguous allocation range inside a subnet (an element of a range set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet; its prefix length is the one given to allocated addresses.
    pub subnet: IpNet,
    /// First allocatable address (inclusive).
    pub range_start: IpAddr,
    /// Last allocatable address (inclusive).
    pub range_end: IpAddr,
    /// The subnet's gateway: never allocated, returned with every address.
    /// Always `Some` after [`HostLocalConfig::parse`] (defaults to network+1).
    pub gateway: Option<IpAddr>,
}

impl Range {
    /// True when `ip` is of the same family, inside the subnet and between
    /// `range_start` and `range_end` (the reference's `Range.Contains`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        same_family(ip, self.subnet.addr())
            && self.subnet.contains(&ip)
            && ip >= self.range_start
            && ip <= self.range_end
    }

    /// The reference's `Range.Overlaps`: ranges of different families never
    /// overlap; otherwise an endpoint of one inside the other is an overlap.
    fn overlaps(&self, other: &Range) -> bool {
        if !same_family(self.range_start, other.range_start) {
            return false;
        }
        self.contains(other.range_start)
            || self.contains(other.range_end)
            || other.contains(self.range_start)
            || other.contains(self.range_end)
    }
}

impl fmt::Display for Range {
    /// `start-end`, as the reference prints a range in its messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

/// The `ipam` section of a network configuration using `host-local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLocalConfig {
    /// Range sets; one address is allocated from each. A legacy top-level
    /// `subnet` becomes the first set, followed by `ranges` in order. The
    /// index here is the `N` of `last_reserved_ip.N`.
    pub range_sets: Vec<Vec<Range>>,
    /// Routes to return with the result.
    pub routes: Vec<Route>,
    /// Root of the store (`dataDir`, default [`DEFAULT_DATA_DIR`]).
    pub data_dir: PathBuf,
    /// DNS settings read from `resolvConf`, if given.
    pub dns: Dns,
}

impl HostLocalConfig {
    /// Parses and validates the `ipam` object of a network configuration.
    ///
    /// Unknown keys are ignored (as Go's JSON decoding does); a JSON `null`
    /// counts as absent. Every invalid value is a [`code::INVALID_CONFIG`]
    /// error naming the key and the value.
    pub fn parse(ipam: &Value) -> Result<Self, CniError> {
        let obj = IpamObject::fold(
            ipam.as_object()
                .ok_or_else(|| bad("ipam", ipam, "expected a JSON object"))?
                .clone(),
        );
        let obj = &obj;

        if let Some(t) = get(obj, IpamKey::Type) {
            if !t.is_string() {
                return Err(bad("ipam.type", t, "expected a string"));
            }
        }

        // (label for messages, ranges)
        let mut sets: Vec<(String, Vec<Range>)> = Vec::new();

        // Legacy single-range form. As in the reference, it only counts when
        // `subnet` is present (a lone `rangeStart` is ignored), and it becomes
        // range set 0, ahead of `ranges`.
        if get(obj, IpamKey::Subnet).is_some() {
            let legacy = Object::fold(obj.as_map().clone());
            sets.push(("ipam".to_string(), vec![parse_range(&legacy, "ipam")?]));
        }

        if let Some(ranges) = get(obj, IpamKey::Ranges) {
            let arr = ranges
                .as_array()
                .ok_or_else(|| bad("ipam.ranges", ranges, "expected an array of range sets"))?;
            for (i, set) in arr.iter().enumerate() {
                let label = format!("ipam.ranges[{i}]");
                let items = set
                    .as_array()
                    .ok_or_else(|| bad(&label, set, "expected an array of ranges"))?;
                if items.is_empty() {
                    return Err(bad(&label, set, "empty range set"));
                }
                let mut parsed = Vec::with_capacity(items.len());
                for (j, r) in items.iter().enumerate() {
                    let rlabel = format!("{label}[{j}]");
                    let robj = r
                        .as_object()
                        .ok_or_else(|| bad(&rlabel, r, "expected a JSON object"))?;
                    parsed.push(parse_range(&Object::fold(robj.clone()), &rlabel)?);
                }
                check_range_set(&label, set, &parsed)?;
                sets.push((label, parsed));
            }
        }

        if sets.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid ipam: no IP ranges specified (need ipam.subnet or ipam.ranges)",
            ));
        }

        // Range sets must not overlap each other either (else one address
        // could be handed out once per set).
        for i in 0..sets.len() {
            for j in i + 1..sets.len() {
                let overlap = sets[i]
                    .1
                    .iter()
                    .any(|a| sets[j].1.iter().any(|b| a.overlaps(b)));
                if overlap {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "invalid ipam: range set {} ({}) overlaps with range set {} ({})",
                            sets[i].0,
                            set_string(&sets[i].1),
                            sets[j].0,
                            set_string(&sets[j].1),
                        ),
                    ));
                }
            }
        }

        let routes = match get(obj, IpamKey::Routes) {
            None => Vec::new(),
            Some(v) => parse_routes(v)?,
        };

        let data_dir = match get(obj, IpamKey::DataDir) {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some(v) => match v.as_str() {
                Some("") => PathBuf::from(DEFAULT_DATA_DIR),
                Some(s) => crate::config::absolute_path("ipam.dataDir", s)?,
                None => return Err(bad("ipam.dataDir", v, "expected a string")),
            },
        };

        let dns = match get(obj, IpamKey::ResolvConf) {
            None => Dns::default(),
            Some(v) => match v.as_str() {
                Some("") => Dns::default(),
                Some(path) => parse_resolv_conf(path)
                    .map_err(|e| bad("ipam.resolvConf", v, format_args!("cannot read: {e}")))?,
                None => return Err(bad("ipam.resolvConf", v, "expected a string")),
            },
        };

        Ok(HostLocalConfig {
            range_sets: sets.into_iter().map(|(_, s)| s).collect(),
            routes,
            data_dir,
            dns,
        })
    }
}

/// `start-end,start-end`, as the reference prints a range set.
pub(super) fn set_string(set: &[Range]) -> String {
    set.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

pub(super) fn next_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

/// The last address of a subnet, excluding the IPv4 broadcast address.
fn last_ip(subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()) - 1)),
        IpNet::V6(n) => IpAddr::V6(n.broadcast()),
    }
}

/// `obj[key]`, treating JSON `null` as absent (Go leaves the field unset).
fn get<K: Fields>(obj: &Object<K>, key: K) -> Option<&Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A [`code::INVALID_CONFIG`] error: `invalid <key> <value as JSON>: <why>`.
fn bad(key: &str, value: &Value, why: impl fmt::Display) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid {key} {value}: {why}"),
    )
}

/// An optional IP-valued key. An empty string counts as absent, as Go's
/// `net.IP` decodes `""` to nil. IPv4-mapped IPv6 addresses become IPv4, as
/// the reference's `canonicalizeIP` does.
fn opt_ip<K: Fields>(obj: &Object<K>, prefix: &str, key: K) -> Result<Option<IpAddr>, CniError> {
    let Some(v) = get(obj, key) else {
        return Ok(None);
    };
    let k = format!("{prefix}.{}", key.name());
    let s = v.as_str().ok_or_else(|| bad(&k, v, "expected a string"))?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<IpAddr>()
        .map(|ip| Some(ip.to_canonical()))
        .map_err(|e| bad(&k, v, e))
}

/// One range (`Range.Canonicalize` in the reference); `prefix` names the
/// object for messages, e.g. `ipam.ranges[0][1]` or `ipam` (legacy form).
fn parse_range(obj: &Object<RangeKey>, prefix: &str) -> Result<Range, CniError> {
    let key = |k: RangeKey| format!("{prefix}.{}", k.name());
    let subnet_key = key(RangeKey::Subnet);
    let Some(sv) = get(obj, RangeKey::Subnet) else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid {prefix}: missing {subnet_key}"),
        ));
    };
    let s = sv
        .as_str()
        .ok_or_else(|| bad(&subnet_key, sv, "expected a string in CIDR notation"))?;
    let subnet: IpNet = s.parse().map_err(|e| bad(&subnet_key, sv, e))?;
    if let IpNet::V6(n) = subnet {
        // The reference canonicalizes the address to 4 bytes but keeps the
        // 16-byte mask and then rejects the mismatch.
        if n.addr().to_ipv4_mapped().is_some() {
            return Err(bad(
                &subnet_key,
                sv,
                "IPv4-mapped IPv6 subnets are not supported",
            ));
        }
    }
    // No address to allocate in a /31 or /32 (/127, /128).
    if subnet.prefix_len() > subnet.max_prefix_len() - 2 {
        return Err(bad(
            &subnet_key,
            sv,
            format_args!("network {subnet} too small to allocate from"),
        ));
    }
    let network = subnet.network();
    if subnet.addr() != network {
        return Err(bad(
            &subnet_key,
            sv,
            format_args!(
                "network has host bits set; for a prefix length of {} the network address is {network}",
                subnet.prefix_len()
            ),
        ));
    }

    let gateway = match opt_ip(obj, prefix, RangeKey::Gateway)? {
        None => next_ip(network),
        Some(gw) => {
            // The reference accepts a gateway of the other family, which can
            // never match; that is always a mistake, so reject it. A gateway
            // outside the subnet is accepted, as in the reference (v1.1.1).
            if !same_family(gw, network) {
                return Err(bad(
                    &key(RangeKey::Gateway),
                    &obj[RangeKey::Gateway],
                    format_args!("not the same address family as subnet {subnet}"),
                ));
            }
            gw
        }
    };

    let in_subnet = |ip: IpAddr| same_family(ip, network) && subnet.contains(&ip);

    let range_start = match opt_ip(obj, prefix, RangeKey::RangeStart)? {
        None => next_ip(network),
        Some(ip) => {
            if !in_subnet(ip) {
                return Err(bad(
                    &key(RangeKey::RangeStart),
                    &obj[RangeKey::RangeStart],
                    format_args!("not in network {subnet}"),
                ));
            }
            ip
        }
    };
    let range_end = match opt_ip(obj, prefix, RangeKey::RangeEnd)? {
        None => last_ip(subnet),
        Some(ip) => {
            if !in_subnet(ip) {
                return Err(bad(
                    &key(RangeKey::RangeEnd),
                    &obj[RangeKey::RangeEnd],
                    format_args!("not in network {subnet}"),
                ));
            }
            if ip < range_start {
                return Err(bad(
                    &key(RangeKey::RangeEnd),
                    &obj[RangeKey::RangeEnd],
                    format_args!("before rangeStart {range_start}"),
                ));
            }
            ip
        }
    };
    // Only reachable with an explicit rangeStart past the default rangeEnd
    // (the IPv4 broadcast address). The reference does not check this and
    // its iterator would then walk out of the subnet; refuse instead.
    if range_start > range_end {
        return Err(bad(
            &key(RangeKey::RangeStart),
            &obj[RangeKey::RangeStart],
            format_args!("after rangeEnd {range_end}"),
        ));
    }

    Ok(Range {
        subnet,
        range_start,
        range_end,
        gateway: Some(gateway),
    })
}

/// The reference's `RangeSet.Canonicalize` checks: one family, no overlap.
fn check_range_set(label: &str, raw: &Value, set: &[Range]) -> Result<(), CniError> {
    let fam = set[0].range_start;
    if set.iter().any(|r| !same_family(r.range_start, fam)) {
        return Err(bad(label, raw, "mixed address families"));
    }
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            if a.overlaps(b) {
                return Err(bad(label, raw, format_args!("ranges {a} and {b} overlap")));
            }
        }
    }
    Ok(())
}

fn parse_routes(v: &Value) -> Result<Vec<Route>, CniError> {
    let arr = v
        .as_array()
        .ok_or_else(|| bad("ipam.routes", v, "expected an array"))?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, r) in arr.iter().enumerate() {
        let label = format!("ipam.routes[{i}]");
        let obj = Object::<RouteKey>::fold(
            r.as_object()
                .ok_or_else(|| bad(&label, r, "expected a JSON object"))?
                .clone(),
        );
        let obj = &obj;
        let Some(dv) = get(obj, RouteKey::Dst) else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("invalid {label}: missing {label}.dst"),
            ));
        };
        let dkey = format!("{label}.dst");
        // Host bits are kept, as Go's types.ParseCIDR keeps them.
        let dst: IpNet = dv
            .as_str()
            .ok_or_else(|| bad(&dkey, dv, "expected a string in CIDR notation"))?
            .parse()
            .map_err(|e| bad(&dkey, dv, e))?;
        let gw = opt_ip(obj, &label, RouteKey::Gw)?;
        let num = |k: RouteKey| -> Result<Option<u32>, CniError> {
            match get(obj, k) {
                None => Ok(None),
                Some(n) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        bad(
                            &format!("{label}.{}", k.name()),
                            n,
                            "expected an unsigned 32-bit integer",
                        )
                    }),
            }
        };
        out.push(Route {
            dst,
            gw,
            mtu: num(RouteKey::Mtu)?,
            priority: num(RouteKey::Priority)?,
        });
    }
    Ok(out)
}

/// The reference's `parseResolvConf`: `nameserver`, `domain`, `search` and
/// `options` lines; comments (`#`, `;`) and other lines ignored.
fn parse_resolv_conf(path: &str) -> io::Result<Dns> {
    let text = fs::read_to_string(path)?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = fields[1].to_string(),
            "search" => dns.search.extend(fields[1..].iter().map(|s| s.to_string())),
            "options" => dns
                .options
                .extend(fields[1..].iter().map(|s| s.to_string())),
            _ => {}
        }
    }
    Ok(dns)
}
