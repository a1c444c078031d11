//! Node-wide state the NAT programs read, brought up to date by every ADD:
//! the settings (`config`), the node's addresses (`node_addrs`), the uplinks
//! (programs attached once, masquerade addresses in `uplinks`), the exempt
//! CIDRs (`no_masq`), the reserved masquerade ports and the socket hooks.
//! Every step is idempotent and cheap when nothing changed: a few netlink
//! dumps and map lookups, no program attached twice.

use std::{
    net::IpAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    programs::{
        cgroup_sock_addr::CgroupSockAddrAttachType, links::CgroupAttachMode, CgroupSockAddr,
    },
};
use cni_ebpf_common::{
    map, prog, Config, IpKey, NoMasqKey, UplinkInfo, FAMILY_V4, FAMILY_V6, NO_MASQ_PREFIX_BASE,
};
use ipnet::IpNet;

use super::{
    attach::AttachMode,
    endpoints::{ip_key, key_ip},
    pins::{pin_link, BpfError, Datapath},
};
use crate::netlink::{Link, Netlink};

/// What the node-wide state should be (from the network config).
#[derive(Debug, Clone)]
pub struct NodeSettings<'a> {
    /// Uplink names; None = the devices holding default routes.
    pub uplinks: Option<&'a [String]>,
    /// Destinations never masqueraded.
    pub no_masq: &'a [IpNet],
    /// Masquerade source ports.
    pub snat_ports: (u16, u16),
    /// `nat_est` entries one attachment may hold.
    pub est_quota: u32,
    /// Reserve `snat_ports` against the node's own sockets (masquerade on).
    pub reserve_ports: bool,
    /// cgroup v2 directory for the socket hooks; None = no hooks.
    pub cgroup: Option<&'a Path>,
    /// How TC programs are attached to uplinks.
    pub attach_mode: AttachMode,
    /// Put this build's programs on every uplink and socket hook even where
    /// ours are attached already (repair, upgrade).
    pub reattach: bool,
}

/// Errors of node-wide setup, with what was being done.
fn other(
    what: &'static str,
    name: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> BpfError {
    BpfError::Link {
        name: name.into(),
        what,
        source: Box::new(e),
    }
}

/// A netlink handle in the calling thread's namespace, for callers of
/// [`Datapath::prepare_node`] that have none of their own (repair, agent).
pub fn node_netlink() -> Result<Netlink, BpfError> {
    Netlink::open().map_err(|e| other("open socket", "netlink", e))
}

/// The cgroup v2 mount point of this mount namespace, if any.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <src> <opts>"
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split(' ').nth(4)?;
        (post.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// Cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`).
pub fn netns_cookie() -> std::io::Result<u64> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for the kernel to write; fd is open.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// Attach type of a socket hook, by program name.
fn sock_attach_type(name: &str) -> CgroupSockAddrAttachType {
    match name {
        prog::SOCK_CONNECT4 => CgroupSockAddrAttachType::Connect4,
        prog::SOCK_CONNECT6 => CgroupSockAddrAttachType::Connect6,
        prog::SOCK_SENDMSG4 => CgroupSockAddrAttachType::UDPSendMsg4,
        prog::SOCK_SENDMSG6 => CgroupSockAddrAttachType::UDPSendMsg6,
        prog::SOCK_RECVMSG4 => CgroupSockAddrAttachType::UDPRecvMsg4,
        prog::SOCK_RECVMSG6 => CgroupSockAddrAttachType::UDPRecvMsg6,
        prog::SOCK_PEER4 => CgroupSockAddrAttachType::GetPeerName4,
        _ => CgroupSockAddrAttachType::GetPeerName6,
    }
}

/// Parses `ip_local_reserved_ports` ("1000-1002,2000").
fn parse_port_list(s: &str) -> Vec<(u16, u16)> {
    s.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => {
                let v = p.trim().parse().ok()?;
                Some((v, v))
            }
        })
        .collect()
}

/// True if every port of `want` is in one of `have`'s ranges.
fn covered(have: &[(u16, u16)], want: (u16, u16)) -> bool {
    (want.0..=want.1).all(|p| have.iter().any(|(a, b)| *a <= p && p <= *b))
}

/// An IPv6 link-local address (fe80::/10).
fn is_link_local6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80)
}

/// One uplink as found now.
#[derive(Debug, Clone)]
struct Uplink {
    /// The device.
    link: Link,
    /// Masquerade addresses (first global IPv4 and IPv6 address).
    info: UplinkInfo,
}

impl Datapath {
    /// Brings the node-wide state up to date (every ADD). The node's
    /// addresses and uplinks are left to the agent when one keeps them for
    /// these settings (agent/lease.rs), except on repair.
    pub fn prepare_node(
        &self,
        nl: &Netlink,
        s: &NodeSettings<'_>,
        state_dir: &Path,
    ) -> Result<(), BpfError> {
        self.set_config(s.snat_ports, s.est_quota)?;
        let agent = if s.reattach {
            None
        } else {
            crate::agent::lease::holder(state_dir, &self.dir, s.uplinks, s.attach_mode)
        };
        match agent {
            Some(l) => crate::info!(
                "node addresses and uplinks: kept by the agent (pid {}, holds {})",
                l.pid,
                crate::agent::lease::path(state_dir).display()
            ),
            None => {
                self.sync_addrs_and_uplinks(nl, s, state_dir)?;
            }
        }
        self.sync_no_masq(s.no_masq)?;
        if s.reserve_ports {
            reserve_ports(s.snat_ports)?;
        }
        if let Some(cg) = s.cgroup {
            self.ensure_sock_hooks(cg, s.reattach, state_dir)?;
        }
        Ok(())
    }

    /// `node_addrs` := the node's addresses now; the uplinks (devices named
    /// by the settings, else those holding default routes) attached, with
    /// their masquerade addresses. Two netlink dumps; what ADD skips when
    /// the agent runs, and what the agent runs on every address, link or
    /// route change. Returns the uplinks' ifindexes.
    pub fn sync_addrs_and_uplinks(
        &self,
        nl: &Netlink,
        s: &NodeSettings<'_>,
        state_dir: &Path,
    ) -> Result<Vec<u32>, BpfError> {
        let names = s.uplinks.map(<[String]>::to_vec);
        let (addrs, links) = nl
            .call(async {
                let addrs = nl.all_addrs().await?;
                let links = match names {
                    None => nl.default_route_links().await?,
                    Some(names) => {
                        let mut out = Vec::new();
                        for n in names {
                            out.push(
                                nl.link_by_name(&n)
                                    .await?
                                    .ok_or(crate::netlink::NlError::NoLink(n))?,
                            );
                        }
                        out
                    }
                };
                Ok((addrs, links))
            })
            .map_err(|e| other("list node addresses and uplinks", "netlink", e))?;

        self.sync_node_addrs(&addrs)?;
        let uplinks: Vec<Uplink> = links
            .into_iter()
            .map(|link| {
                let mut info = UplinkInfo::default();
                for (_, n) in addrs.iter().filter(|(i, _)| *i == link.index) {
                    match n.addr() {
                        IpAddr::V4(a) if info.addr4 == [0; 4] => info.addr4 = a.octets(),
                        a @ IpAddr::V6(v) if info.addr6 == [0; 16] && !is_link_local6(&a) => {
                            info.addr6 = v.octets()
                        }
                        _ => {}
                    }
                }
                Uplink { link, info }
            })
            .collect();
        self.ensure_uplinks(nl, &uplinks, s.attach_mode, s.reattach, state_dir)?;
        Ok(uplinks.iter().map(|u| u.link.index).collect())
    }

    fn set_config(&self, snat: (u16, u16), est_quota: u32) -> Result<(), BpfError> {
        let cookie =
            netns_cookie().map_err(|e| other("read the netns cookie", "SO_NETNS_COOKIE", e))?;
        let want = Config {
            snat_min: snat.0,
            snat_max: snat.1,
            est_quota,
            netns_cookie: cookie,
        };
        let mut m: Array<MapData, Config> = self.map(map::CONFIG)?;
        if m.get(&0, 0).ok() != Some(want) {
            m.set(0, want, 0).map_err(|source| BpfError::Map {
                name: map::CONFIG,
                what: "set".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// `node_addrs` := the addresses the node has now, without IPv6
    /// link-local ones: every host veth has one, so they would make the set
    /// (and this sync) grow with the number of pods, and a hostPort is never
    /// reached through them.
    fn sync_node_addrs(&self, addrs: &[(u32, IpNet)]) -> Result<(), BpfError> {
        let mut m: HashMap<MapData, IpKey, u32> = self.map(map::NODE_ADDRS)?;
        let want: Vec<IpKey> = addrs
            .iter()
            .map(|(_, n)| n.addr())
            .filter(|a| !is_link_local6(a))
            .map(ip_key)
            .collect();
        let have: Vec<IpKey> = m.keys().filter_map(Result::ok).collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            let _ = m.remove(k);
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            m.insert(k, 1, 0).map_err(|source| BpfError::Map {
                name: map::NODE_ADDRS,
                what: format!("insert {}", key_ip(k)),
                source,
            })?;
        }
        Ok(())
    }

    /// Adds the configured non-masquerade CIDRs (entries are node-wide and
    /// never removed by an ADD: another network's config may list them).
    fn sync_no_masq(&self, cidrs: &[IpNet]) -> Result<(), BpfError> {
        if cidrs.is_empty() {
            return Ok(());
        }
        let mut m: LpmTrie<MapData, NoMasqKey, u32> = self.map(map::NO_MASQ)?;
        for c in cidrs {
            let (family, addr) = match c.addr() {
                IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (FAMILY_V4, b)
                }
                IpAddr::V6(a) => (FAMILY_V6, a.octets()),
            };
            let k = Key::new(
                NO_MASQ_PREFIX_BASE + u32::from(c.prefix_len()),
                NoMasqKey {
                    family,
                    pad: [0; 3],
                    addr,
                },
            );
            if m.get(&k, 0).is_err() {
                m.insert(&k, 1, 0).map_err(|source| BpfError::Map {
                    name: map::NO_MASQ,
                    what: format!("insert {c}"),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Attaches the uplink programs where they are not yet (an uplink's entry
    /// in `uplinks` is the marker: a device re-created under the same name
    /// has a new ifindex) and keeps the masquerade addresses current.
    fn ensure_uplinks(
        &self,
        nl: &Netlink,
        uplinks: &[Uplink],
        mode: AttachMode,
        reattach: bool,
        state_dir: &Path,
    ) -> Result<(), BpfError> {
        let mut m: HashMap<MapData, u32, UplinkInfo> = self.map(map::UPLINKS)?;
        let mut lock = None;
        for u in uplinks {
            match m.get(&u.link.index, 0) {
                Ok(cur) if cur == u.info && !reattach => continue,
                Ok(_) if !reattach => {}
                _ => {
                    if lock.is_none() {
                        let p = state_dir.join("bpf.lock");
                        lock = Some(
                            crate::lockfile::lock(&p, true)
                                .map_err(|e| other("lock", p.display().to_string(), e))?,
                        );
                    }
                    if reattach || m.get(&u.link.index, 0).is_err() {
                        self.attach_uplink(nl, &u.link.name, mode)?;
                    }
                }
            }
            m.insert(u.link.index, u.info, 0)
                .map_err(|source| BpfError::Map {
                    name: map::UPLINKS,
                    what: format!("insert {}", u.link.name),
                    source,
                })?;
        }
        Ok(())
    }

    fn cgroup_links_dir(&self, cgroup: &Path) -> PathBuf {
        let mut h = cni_ebpf_common::Fnv1a::new();
        h.write(cgroup.as_os_str().as_encoded_bytes());
        self.links_dir()
            .join("cgroup")
            .join(format!("{:016x}", h.finish()))
    }

    /// Attaches the socket hooks to `cgroup` once (links pinned per cgroup).
    /// With `reattach`, this build's hooks replace ours: each new link is
    /// attached next to the old one (a sock_addr hook that finds nothing to
    /// translate passes), pinned beside it and renamed over its pin, which
    /// detaches the old link.
    fn ensure_sock_hooks(
        &self,
        cgroup: &Path,
        reattach: bool,
        state_dir: &Path,
    ) -> Result<(), BpfError> {
        let dir = self.cgroup_links_dir(cgroup);
        if !reattach && prog::SOCK.iter().all(|p| dir.join(p).exists()) {
            return Ok(());
        }
        let p = state_dir.join("bpf.lock");
        let _lock = crate::lockfile::lock(&p, true)
            .map_err(|e| other("lock", p.display().to_string(), e))?;
        crate::private::create_dir(&dir)
            .map_err(|e| other("create link pin dir", dir.display().to_string(), e))?;
        let cg = std::fs::File::open(cgroup)
            .map_err(|e| other("open cgroup", cgroup.display().to_string(), e))?;
        for name in prog::SOCK {
            let pin = dir.join(name);
            if pin.exists() && !reattach {
                continue;
            }
            let mut p = CgroupSockAddr::from_pin(self.prog_path(name), sock_attach_type(name))
                .map_err(BpfError::program(name, "open pinned program"))?;
            // A link attach takes no flags (links always coexist with others).
            let id =
                p.attach(cg.as_fd(), CgroupAttachMode::default())
                    .map_err(BpfError::program(
                        format!("{name} on {}", cgroup.display()),
                        "attach",
                    ))?;
            let link = p
                .take_link(id)
                .map_err(BpfError::program(name, "take link"))?;
            // bpffs refuses names with a dot (EPERM).
            let new = dir.join(format!("{name}_new"));
            let _ = std::fs::remove_file(&new);
            pin_link(link, &new)?;
            // bpffs renames over an existing entry (simple_rename), dropping
            // the old link's last reference.
            std::fs::rename(&new, &pin)
                .map_err(|e| other("replace link pin", pin.display().to_string(), e))?;
        }
        Ok(())
    }
}

/// Adds `range` to `net.ipv4.ip_local_reserved_ports` (which also covers
/// IPv6) unless it is already there, so the node's own sockets never pick a
/// masquerade port.
fn reserve_ports(range: (u16, u16)) -> Result<(), BpfError> {
    let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let cur = std::fs::read_to_string(path).map_err(|e| other("read", path, e))?;
    if covered(&parse_port_list(&cur), range) {
        return Ok(());
    }
    let mut v = cur.trim().to_string();
    if !v.is_empty() {
        v.push(',');
    }
    v.push_str(&format!("{}-{}", range.0, range.1));
    std::fs::write(path, v).map_err(|e| other("write", path, e))
}

/// `have` without the ports of `range`.
fn subtract(have: &[(u16, u16)], range: (u16, u16)) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for &(a, b) in have {
        if b < range.0 || a > range.1 {
            out.push((a, b));
            continue;
        }
        if a < range.0 {
            out.push((a, range.0 - 1));
        }
        if b > range.1 {
            out.push((range.1 + 1, b));
        }
    }
    out
}

/// Takes `range` out of `net.ipv4.ip_local_reserved_ports` again (uninstall).
pub(super) fn unreserve_ports(range: (u16, u16)) -> Result<(), BpfError> {
    let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let cur = std::fs::read_to_string(path).map_err(|e| other("read", path, e))?;
    let have = parse_port_list(&cur);
    let left = subtract(&have, range);
    if left == have {
        return Ok(());
    }
    let v: Vec<String> = left
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    // The kernel takes an empty write as "no reserved ports" but rejects "".
    let v = if v.is_empty() {
        "\n".to_string()
    } else {
        v.join(",")
    };
    std::fs::write(path, v).map_err(|e| other("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_port_lists() {
        assert_eq!(parse_port_list("\n"), vec![]);
        assert_eq!(
            parse_port_list("8080,61000-65535\n"),
            vec![(8080, 8080), (61000, 65535)]
        );
        assert!(covered(
            &parse_port_list("61000-62000,62001-65535"),
            (61000, 65535)
        ));
        assert!(!covered(&parse_port_list("61000-62000"), (61000, 65535)));
        assert_eq!(
            subtract(&parse_port_list("8080,61000-65535"), (61000, 65535)),
            vec![(8080, 8080)]
        );
        assert_eq!(
            subtract(&[(60000, 65535)], (61000, 62000)),
            vec![(60000, 60999), (62001, 65535)]
        );
    }
}
