//! The CNI result (SPEC.md "Success") in one internal shape, read from and
//! written to every supported version.
//!
//! Internally everything is the 1.x shape. 0.3.x/0.4.0 differ only by the
//! mandatory `"version": "4"|"6"` in each `ips` entry; 0.1.0/0.2.0 results
//! (`ip4`/`ip6` objects) are accepted as input from delegated IPAM plugins or in
//! `prevResult` and upgraded.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    error::{code, CniError},
    gojson::{self, Fields, Object},
};

crate::go_fields! {
    /// A result's top-level keys (every version's).
    pub enum ResultKey {
        Dns = "dns",
        Ip4 = "ip4",
        Ip6 = "ip6",
        Interfaces = "interfaces",
        Ips = "ips",
        Routes = "routes",
    }
}

/// An interface in a result: the bridge, the host veth, the container veth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:..` lowercase; empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1+ only, dropped for older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Path of the netns holding the interface; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. `10.22.0.5/16`.
    pub address: IpNet,
    /// Default gateway for this subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route to install in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; the subnet gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Route priority / metric (1.1+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

impl Route {
    /// A route to `dst` via `gw` with no other attributes.
    pub fn via(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            priority: None,
        }
    }

    /// The default route of `ip`'s family.
    pub fn default_for(ip: IpAddr) -> IpNet {
        if ip.is_ipv4() {
            IpNet::V4(Default::default())
        } else {
            IpNet::V6(Default::default())
        }
    }
}

/// DNS settings passed through to the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set (the key is then omitted).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result, version-independent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// Interfaces created or used.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
}

#[derive(Deserialize)]
struct WireIp {
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireLegacyIp {
    ip: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, v: &Value) -> Result<T, CniError> {
    gojson::from_value(v).map_err(|e| {
        CniError::new(code::DECODE, format!("cannot decode {what}")).with_details(e.to_string())
    })
}

impl CniResult {
    /// Reads a result of any supported version (0.1.0 to 1.1.0).
    pub fn from_value(v: &Value) -> Result<Self, CniError> {
        let obj = Object::<ResultKey>::fold(
            v.as_object()
                .ok_or_else(|| {
                    CniError::new(code::DECODE, "result is not a JSON object".to_string())
                })?
                .clone(),
        );
        let mut r = CniResult::default();
        if let Some(d) = obj.get(ResultKey::Dns) {
            r.dns = decode("result dns", d)?;
        }
        if obj.contains(ResultKey::Ip4) || obj.contains(ResultKey::Ip6) {
            for key in [ResultKey::Ip4, ResultKey::Ip6] {
                if let Some(x) = obj.get(key).filter(|x| !x.is_null()) {
                    let ip: WireLegacyIp = decode(key.name(), x)?;
                    r.ips.push(IpConfig {
                        address: ip.ip,
                        gateway: ip.gateway,
                        interface: None,
                    });
                    r.routes.extend(ip.routes);
                }
            }
            return Ok(r);
        }
        if let Some(x) = obj.get(ResultKey::Interfaces).filter(|x| !x.is_null()) {
            r.interfaces = decode("result interfaces", x)?;
        }
        if let Some(x) = obj.get(ResultKey::Ips).filter(|x| !x.is_null()) {
            let ips: Vec<WireIp> = decode("result ips", x)?;
            for ip in ips {
                if let Some(i) = ip.interface {
                    if i >= r.interfaces.len() {
                        return Err(CniError::new(
                            code::DECODE,
                            format!(
                                "result ip {} names interface {i}, which does not exist",
                                ip.address
                            ),
                        ));
                    }
                }
                r.ips.push(IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                });
            }
        }
        if let Some(x) = obj.get(ResultKey::Routes).filter(|x| !x.is_null()) {
            r.routes = decode("result routes", x)?;
        }
        Ok(r)
    }

    /// Writes the result in `version`'s format (0.3.0 and later).
    pub fn to_value(&self, version: &str) -> Value {
        let legacy_ip_version = !version.starts_with("1.");
        let has_mtu = !matches!(version, "0.3.0" | "0.3.1" | "0.4.0" | "1.0.0");
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), version.into());
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if !has_mtu {
                        i.mtu = None;
                    }
                    serde_json::to_value(i).expect("interface serializes")
                })
                .collect();
            out.insert("interfaces".into(), ifs.into());
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = serde_json::to_value(ip).expect("ip serializes");
                    if legacy_ip_version {
                        let fam = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        v["version"] = fam.into();
                    }
                    v
                })
                .collect();
            out.insert("ips".into(), ips.into());
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if !has_mtu {
                        r.mtu = None;
                        r.priority = None;
                    }
                    serde_json::to_value(r).expect("route serializes")
                })
                .collect();
            out.insert("routes".into(), routes.into());
        }
        if !self.dns.is_empty() {
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).expect("dns serializes"),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_0_2_0_and_writes_0_3_1_with_version_field() {
        let r = CniResult::from_value(&json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": {"nameservers": ["10.1.0.1"]}
        }))
        .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.routes.len(), 1);
        let v = r.to_value("0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(v["dns"]["nameservers"][0], "10.1.0.1");
    }

    #[test]
    fn round_trips_1_0_0_without_version_field() {
        let input = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:00", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1}],
            "routes": [{"dst": "::/0"}]
        });
        let r = CniResult::from_value(&input).unwrap();
        let out = r.to_value("1.0.0");
        assert_eq!(out, input);
        assert_eq!(r.to_value("0.4.0")["ips"][0]["version"], "6");
    }

    #[test]
    fn mtu_only_from_1_1_0() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mtu: Some(1400),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(r.to_value("1.1.0")["interfaces"][0]["mtu"], 1400);
        assert!(r.to_value("1.0.0")["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn keys_match_as_in_go() {
        let r = CniResult::from_value(&json!({
            "CNIVersion": "1.0.0",
            "Interfaces": [{"Name": "eth0", "MAC": "aa:bb:cc:dd:ee:00", "Sandbox": "/run/netns/x"}],
            "IPs": [{"Address": "10.0.0.2/24", "Gateway": "10.0.0.1", "Interface": 0}],
            "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.0.0.1"}],
            "DNS": {"Nameservers": ["10.0.0.1"]}
        }))
        .unwrap();
        assert_eq!(r.interfaces[0].sandbox, "/run/netns/x");
        assert_eq!(r.ips[0].interface, Some(0));
        assert_eq!(r.routes[0].gw, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.dns.nameservers, ["10.0.0.1"]);
    }

    #[test]
    fn rejects_dangling_interface_index() {
        let e = CniResult::from_value(&json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.0.0.2/24", "interface": 3}]
        }))
        .unwrap_err();
        assert_eq!(e.code, code::DECODE);
    }
}
