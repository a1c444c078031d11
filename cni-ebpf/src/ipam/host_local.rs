//! A built-in reimplementation of the reference CNI `host-local` IPAM plugin
//! (containernetworking/plugins `plugins/ipam/host-local`, v1.1.1).
//!
//! The point of matching the reference byte for byte on disk is that this
//! module and the reference binary can share one `dataDir` without ever
//! handing out the same address twice:
//!
//! - `<dataDir>/<network>/lock` is `flock(LOCK_EX)`-ed around every operation
//!   (the reference's `disk.Store` lock, taken through `go-filemutex`);
//! - each reserved address is a file named by the address's canonical string
//!   form (`10.22.0.5`, `fd00::5`), created with `O_CREAT|O_EXCL`, holding
//!   `<containerID>\r\n<ifname>` with no trailing newline;
//! - `last_reserved_ip.<N>` holds the last address reserved in range set `N`,
//!   which drives the round-robin allocation order.
//!
//! Configuration parsing follows the reference's `LoadIPAMConfig` and
//! `Range.Canonicalize`, with errors reported as [`code::INVALID_CONFIG`] and
//! naming the offending key and value. Where this module differs from the
//! reference it is stricter or more idempotent, never looser; each difference
//! is commented where it happens.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::Value;

use crate::cni::{
    code,
    gojson::{Fields, Object},
    CniError, Dns, IpConfig, Route,
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

/// Prefix of the per-range-set round-robin cursor files.
const LAST_IP_PREFIX: &str = "last_reserved_ip.";
/// Separator between container ID and interface name in a reservation file.
const LINE_BREAK: &str = "\r\n";
/// Name of the lock file inside the network directory.
const LOCK_FILE: &str = "lock";

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

/// The on-disk store of one network: `<dataDir>/<network>/`.
///
/// Holds an exclusive `flock` on `<dir>/lock` for as long as it is alive, so
/// every operation done through one `Store` is atomic with respect to other
/// `Store`s (in this or any other thread or process) and to the reference
/// binary. The lock file is opened anew by every `Store`, so each has its own
/// open file description and the lock also excludes other threads.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    // Never read: holding the descriptor open is what holds the lock, and
    // closing it on drop releases it.
    _lock: File,
}

/// One reservation file as found on disk.
struct Entry {
    ip: IpAddr,
    path: PathBuf,
    /// File content with surrounding whitespace trimmed (the reference
    /// compares trimmed content).
    owner: String,
}

impl Store {
    /// Creates `<data_dir>/<network>/` (mode 0700) if needed and takes the
    /// exclusive lock, blocking until it is available.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        let dir = network_dir(data_dir, network)?;
        crate::private::own_dir(&dir).map_err(|e| io_error("cannot create directory", &dir, e))?;
        Self::lock(dir)
    }

    /// Like [`Store::open`], but `None` when the network directory does not
    /// exist (nothing was ever reserved), without creating it.
    fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Store>, CniError> {
        let dir = network_dir(data_dir, network)?;
        // Not through a symbolic link: only a directory of our own.
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Self::lock(dir).map(Some),
            Ok(_) => Err(CniError::new(
                code::IO,
                format!("{} exists and is not a directory", dir.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot access", &dir, e)),
        }
    }

    fn lock(dir: PathBuf) -> Result<Store, CniError> {
        let path = dir.join(LOCK_FILE);
        let file =
            crate::lockfile::lock(&path, true).map_err(|e| io_error("cannot lock", &path, e))?;
        Ok(Store { dir, _lock: file })
    }

    /// Every directory entry name, reservation or not; used to skip taken
    /// addresses without a syscall each.
    fn names(&self) -> Result<HashSet<String>, CniError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| io_error("cannot list", &self.dir, e))?;
        let mut out = HashSet::new();
        for de in rd {
            let de = de.map_err(|e| io_error("cannot list", &self.dir, e))?;
            if let Some(n) = de.file_name().to_str() {
                out.insert(n.to_string());
            }
        }
        Ok(out)
    }

    /// Every regular file whose name is an IP address, with its owner.
    /// Unreadable files are skipped, as the reference does.
    fn entries(&self) -> Result<Vec<Entry>, CniError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| io_error("cannot list", &self.dir, e))?;
        let mut out = Vec::new();
        for de in rd {
            let de = de.map_err(|e| io_error("cannot list", &self.dir, e))?;
            let Some(ip) = de
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if !de.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = de.path();
            let Ok(data) = fs::read(&path) else { continue };
            out.push(Entry {
                ip: ip.to_canonical(),
                path,
                owner: String::from_utf8_lossy(&data).trim().to_string(),
            });
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    /// Creates the reservation file for `ip` (`O_CREAT|O_EXCL`, mode 0600).
    /// `Ok(false)` when it already exists. On success also records `ip` in
    /// `last_reserved_ip.<range_set>`, as the reference's `Reserve` does.
    fn reserve(
        &self,
        ip: IpAddr,
        id: &str,
        ifname: &str,
        range_set: usize,
    ) -> Result<bool, CniError> {
        let path = self.dir.join(ip.to_string());
        let mut f = match crate::private::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_error("cannot create", &path, e)),
        };
        if let Err(e) = f.write_all(owner_key(id, ifname).as_bytes()) {
            drop(f);
            let _ = fs::remove_file(&path);
            return Err(io_error("cannot write", &path, e));
        }
        drop(f);
        let last = self.dir.join(format!("{LAST_IP_PREFIX}{range_set}"));
        crate::private::create_file(&last)
            .and_then(|mut f| f.write_all(ip.to_string().as_bytes()))
            .map_err(|e| io_error("cannot write", &last, e))?;
        Ok(true)
    }

    /// The content of `last_reserved_ip.<range_set>`, if present and an IP.
    fn last_reserved_ip(&self, range_set: usize) -> Option<IpAddr> {
        let data = fs::read(self.dir.join(format!("{LAST_IP_PREFIX}{range_set}"))).ok()?;
        // The reference does not trim; trimming only makes us accept a file
        // someone edited by hand.
        let s = String::from_utf8_lossy(&data);
        s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
    }

    fn remove(path: &Path) -> Result<(), CniError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot remove", path, e)),
        }
    }
}

/// Whether (container, ifname) may already hold addresses: only a retried
/// ADD can (its earlier attempt left a state record), so a first ADD skips
/// reading every reservation file, which costs O(pods on the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Nothing of this attachment exists yet.
    First,
    /// An earlier attempt may have reserved addresses: return them again.
    Retry,
}

/// Allocates one address per range set to (`container_id`, `ifname`) in
/// `network`, holding the store lock for the whole call.
///
/// Each entry of `requested` must fall in a range of exactly one range set
/// (at most one per set), must not be that range's gateway and must be free
/// or already held by this container; the set it falls in returns it. Other
/// sets allocate round-robin from `last_reserved_ip.<N>`.
///
/// Unlike the reference, which fails a second ADD with "duplicate allocation
/// is not allowed", an address already held by (`container_id`, `ifname`) in
/// a range set is returned again: a runtime retrying an ADD whose result it
/// lost then converges on the same address instead of failing forever.
///
/// If a later range set fails, addresses this call reserved in earlier sets
/// are released (addresses held from before the call are kept).
///
/// Returns one [`IpConfig`] per range set, in order: the address with the
/// subnet's prefix length, the range's gateway, no interface index.
///
/// `attempt` says whether an earlier attempt may hold addresses (see
/// [`Attempt`]).
pub fn allocate(
    cfg: &HostLocalConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
    requested: &[IpAddr],
    attempt: Attempt,
) -> Result<Vec<IpConfig>, CniError> {
    // Map requested addresses to range sets before touching the disk, so a
    // bad request reserves nothing.
    let mut wanted: Vec<Option<IpAddr>> = vec![None; cfg.range_sets.len()];
    for ip in requested.iter().map(|ip| ip.to_canonical()) {
        let Some(idx) = cfg.range_sets.iter().position(|s| set_contains(s, ip)) else {
            return Err(CniError::new(
                code::IPAM_UNAVAILABLE,
                format!(
                    "requested IP address {ip} is not in any range of network {network:?} ({})",
                    cfg.range_sets
                        .iter()
                        .map(|s| set_string(s))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        };
        match wanted[idx] {
            Some(prev) if prev != ip => {
                return Err(CniError::new(
                    code::IPAM_UNAVAILABLE,
                    format!(
                        "requested IP addresses {prev} and {ip} are both in range set {}; \
                         only one address per range set can be requested",
                        set_string(&cfg.range_sets[idx])
                    ),
                ));
            }
            _ => wanted[idx] = Some(ip),
        }
    }

    let store = Store::open(&cfg.data_dir, network)?;
    let key = owner_key(container_id, ifname);
    let held: Vec<IpAddr> = match attempt {
        Attempt::First => Vec::new(),
        Attempt::Retry => store
            .entries()?
            .into_iter()
            .filter(|e| e.owner == key)
            .map(|e| e.ip)
            .collect(),
    };
    let mut taken = Taken::default();

    let mut out = Vec::with_capacity(cfg.range_sets.len());
    let mut reserved_now: Vec<IpAddr> = Vec::new();
    for (idx, set) in cfg.range_sets.iter().enumerate() {
        let res = allocate_in_set(
            &store,
            idx,
            set,
            wanted[idx],
            &held,
            &mut taken,
            container_id,
            ifname,
        );
        match res {
            Ok((ip, range, fresh)) => {
                if fresh {
                    reserved_now.push(ip);
                }
                out.push(IpConfig {
                    address: IpNet::new(ip, range.subnet.prefix_len())
                        .expect("prefix length comes from a valid subnet of the same family"),
                    gateway: range.gateway,
                    interface: None,
                });
            }
            Err(e) => {
                // Roll back this call's reservations only; the lock is still
                // held, so the files are the ones we just created.
                for ip in reserved_now {
                    let _ = Store::remove(&store.dir.join(ip.to_string()));
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Names in the network directory that are known to be taken. The directory
/// is listed only once an address turns out to be taken: allocation starts
/// after the last reserved address, which is free in the usual case, so an
/// ADD creates one file instead of listing every reservation (1,000 entries,
/// about 0.3 ms, on a full node). `O_EXCL` still decides either way.
#[derive(Default)]
struct Taken(Option<HashSet<String>>);

impl Taken {
    fn contains(&self, name: &str) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(name))
    }

    fn insert(&mut self, name: String) {
        if let Some(s) = &mut self.0 {
            s.insert(name);
        }
    }

    /// Lists the directory, once.
    fn load(&mut self, store: &Store) -> Result<(), CniError> {
        if self.0.is_none() {
            self.0 = Some(store.names()?);
        }
        Ok(())
    }
}

/// Allocates in one range set. Returns the address, its range, and whether
/// this call created the reservation.
#[allow(clippy::too_many_arguments)]
fn allocate_in_set<'a>(
    store: &Store,
    idx: usize,
    set: &'a [Range],
    requested: Option<IpAddr>,
    held: &[IpAddr],
    taken: &mut Taken,
    id: &str,
    ifname: &str,
) -> Result<(IpAddr, &'a Range, bool), CniError> {
    if let Some(ip) = requested {
        let range = range_for(set, ip).expect("requested IPs were matched to their range set");
        if range.gateway == Some(ip) {
            return Err(CniError::new(
                code::IPAM_UNAVAILABLE,
                format!("requested IP address {ip} is the gateway of range {range}"),
            ));
        }
        if held.contains(&ip) {
            return Ok((ip, range, false));
        }
        // Holding another address of this set does not stop a request for a
        // new one, as in the reference; DEL releases both.
        if store.reserve(ip, id, ifname, idx)? {
            taken.insert(ip.to_string());
            return Ok((ip, range, true));
        }
        return Err(CniError::new(
            code::IPAM_UNAVAILABLE,
            format!(
                "requested IP address {ip} is not available in range set {}",
                set_string(set)
            ),
        ));
    }

    // Idempotent retry: see `allocate`.
    if let Some((ip, range)) = held
        .iter()
        .find_map(|&ip| range_for(set, ip).map(|r| (ip, r)))
    {
        return Ok((ip, range, false));
    }

    let mut iter = RangeIter::new(set, store.last_reserved_ip(idx));
    while let Some((ip, range)) = iter.next_ip() {
        let name = ip.to_string();
        if taken.contains(&name) {
            continue;
        }
        // The name set is a snapshot under the lock, but O_EXCL still decides:
        // a file the snapshot missed makes `reserve` return false.
        let fresh = store.reserve(ip, id, ifname, idx)?;
        taken.insert(name);
        if fresh {
            return Ok((ip, range, true));
        }
        taken.load(store)?;
    }
    Err(CniError::new(
        code::IPAM_EXHAUSTED,
        format!("no IP addresses available in range set {}", set_string(set)),
    ))
}

/// Releases every address held by (`container_id`, `ifname`) in `network`.
///
/// Idempotent: a missing network directory or no matching reservation is
/// success. As in the reference, files written by old versions (content is
/// just the container ID) are released when no current-format file matched.
pub fn release(
    cfg: &HostLocalConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<(), CniError> {
    let Some(store) = Store::open_existing(&cfg.data_dir, network)? else {
        return Ok(());
    };
    let entries = store.entries()?;
    let key = owner_key(container_id, ifname);
    let mut matched: Vec<&Entry> = entries.iter().filter(|e| e.owner == key).collect();
    if matched.is_empty() {
        let legacy = container_id.trim();
        matched = entries.iter().filter(|e| e.owner == legacy).collect();
    }
    for e in matched {
        Store::remove(&e.path)?;
    }
    Ok(())
}

/// Releases `known`, the addresses a state record says (`container_id`,
/// `ifname`) holds, each only if its file still names that owner: one file
/// each instead of reading every reservation. With nothing known, as
/// [`release`].
pub fn release_known(
    cfg: &HostLocalConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
    known: &[IpAddr],
) -> Result<(), CniError> {
    if known.is_empty() {
        return release(cfg, network, container_id, ifname);
    }
    let Some(store) = Store::open_existing(&cfg.data_dir, network)? else {
        return Ok(());
    };
    let key = owner_key(container_id, ifname);
    for ip in known {
        let path = store.dir.join(ip.to_canonical().to_string());
        match fs::read(&path) {
            Ok(data) if String::from_utf8_lossy(&data).trim() == key => Store::remove(&path)?,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot read", &path, e)),
        }
    }
    Ok(())
}

/// The addresses held by (`container_id`, `ifname`) in `network`, sorted,
/// including legacy files holding just the container ID (as the reference's
/// `GetByID`). Empty when the network directory does not exist.
pub fn reserved_by(
    cfg: &HostLocalConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, CniError> {
    let Some(store) = Store::open_existing(&cfg.data_dir, network)? else {
        return Ok(Vec::new());
    };
    let key = owner_key(container_id, ifname);
    let legacy = container_id.trim();
    Ok(store
        .entries()?
        .into_iter()
        .filter(|e| e.owner == key || e.owner == legacy)
        .map(|e| e.ip)
        .collect())
}

/// Every reservation in `<data_dir>/<network>/` as (address, container ID,
/// interface name), sorted by address. Legacy files give an empty interface
/// name. Empty when the network directory does not exist.
pub fn all_reservations(
    data_dir: &Path,
    network: &str,
) -> Result<Vec<(IpAddr, String, String)>, CniError> {
    let Some(store) = Store::open_existing(data_dir, network)? else {
        return Ok(Vec::new());
    };
    Ok(store
        .entries()?
        .into_iter()
        .map(|e| {
            let (id, ifname) = match e.owner.split_once(LINE_BREAK) {
                Some((id, ifname)) => (id.to_string(), ifname.to_string()),
                None => (e.owner.clone(), String::new()),
            };
            (e.ip, id, ifname)
        })
        .collect())
}

/// The reference's `RangeIter`: walks a range set once, in order, starting
/// after the last reserved address (or at the first range's start), wrapping
/// from each range's end to the next range's start, skipping each range's
/// gateway, and stopping when it comes back to where it started.
struct RangeIter<'a> {
    set: &'a [Range],
    idx: usize,
    cur: Option<IpAddr>,
    start: Option<IpAddr>,
}

impl<'a> RangeIter<'a> {
    fn new(set: &'a [Range], last_reserved: Option<IpAddr>) -> Self {
        // A cursor outside the set (ranges changed since) just loses
        // round-robin this once, as in the reference.
        match last_reserved.and_then(|ip| set.iter().position(|r| r.contains(ip)).map(|i| (i, ip)))
        {
            Some((idx, ip)) => RangeIter {
                set,
                idx,
                cur: Some(ip),
                start: None,
            },
            None => RangeIter {
                set,
                idx: 0,
                cur: None,
                start: Some(set[0].range_start),
            },
        }
    }

    fn next_ip(&mut self) -> Option<(IpAddr, &'a Range)> {
        loop {
            let r = &self.set[self.idx];
            let Some(cur) = self.cur else {
                // First call when not resuming: rangeStart is inclusive.
                self.cur = Some(r.range_start);
                self.start = Some(r.range_start);
                if r.gateway == Some(r.range_start) {
                    continue;
                }
                return Some((r.range_start, r));
            };
            let r = if cur == r.range_end {
                self.idx = (self.idx + 1) % self.set.len();
                let r = &self.set[self.idx];
                self.cur = Some(r.range_start);
                r
            } else {
                self.cur = Some(next_ip(cur));
                r
            };
            let cur = self.cur.expect("just set");
            match self.start {
                None => self.start = Some(cur),
                Some(s) if s == cur => return None,
                Some(_) => {}
            }
            if r.gateway == Some(cur) {
                continue;
            }
            return Some((cur, r));
        }
    }
}

fn range_for(set: &[Range], ip: IpAddr) -> Option<&Range> {
    set.iter().find(|r| r.contains(ip))
}

fn set_contains(set: &[Range], ip: IpAddr) -> bool {
    range_for(set, ip).is_some()
}

/// `start-end,start-end`, as the reference prints a range set.
fn set_string(set: &[Range]) -> String {
    set.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The reservation file content: the reference writes the trimmed ID.
fn owner_key(id: &str, ifname: &str) -> String {
    format!("{}{LINE_BREAK}{ifname}", id.trim())
}

/// `<data_dir>/<network>`, refusing names that would leave `data_dir`.
fn network_dir(data_dir: &Path, network: &str) -> Result<PathBuf, CniError> {
    // Callers validate network names already; this is defence in depth, as
    // the name becomes a path component.
    if network.is_empty()
        || network == "."
        || network == ".."
        || network.contains('/')
        || network.contains('\0')
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network name {network:?}: must be a single path component"),
        ));
    }
    Ok(data_dir.join(network))
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn next_ip(ip: IpAddr) -> IpAddr {
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

fn io_error(what: &str, path: &Path, e: io::Error) -> CniError {
    CniError::new(code::IO, format!("{what} {}: {e}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "cni-ebpf-host-local-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The conservative mode (an earlier attempt may hold addresses), which
    /// most tests exercise.
    fn allocate(
        cfg: &HostLocalConfig,
        network: &str,
        id: &str,
        ifname: &str,
        requested: &[IpAddr],
    ) -> Result<Vec<IpConfig>, CniError> {
        super::allocate(cfg, network, id, ifname, requested, Attempt::Retry)
    }

    fn cfg_in(dir: &TempDir, mut ipam: Value) -> HostLocalConfig {
        ipam["dataDir"] = dir.0.to_str().unwrap().into();
        HostLocalConfig::parse(&ipam).unwrap()
    }

    fn alloc1(cfg: &HostLocalConfig, id: &str) -> IpAddr {
        let r = allocate(cfg, "net", id, "eth0", &[]).unwrap();
        assert_eq!(r.len(), 1);
        r[0].address.addr()
    }

    fn parse_err(ipam: Value) -> CniError {
        HostLocalConfig::parse(&ipam).unwrap_err()
    }

    // ---- configuration ----

    #[test]
    fn legacy_subnet_gets_reference_defaults() {
        let c = HostLocalConfig::parse(&json!({"type": "host-local", "subnet": "10.22.0.0/16"}))
            .unwrap();
        assert_eq!(
            c.range_sets,
            vec![vec![Range {
                subnet: "10.22.0.0/16".parse().unwrap(),
                range_start: ip("10.22.0.1"),
                range_end: ip("10.22.255.254"),
                gateway: Some(ip("10.22.0.1")),
            }]]
        );
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.routes.is_empty());
        assert!(c.dns.is_empty());
    }

    #[test]
    fn dual_stack_ranges_and_ipv6_defaults() {
        let c = HostLocalConfig::parse(&json!({
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24", "gateway": "10.2.0.254"}],
                [{"subnet": "fd00::/64"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
            "dataDir": "/tmp/x"
        }))
        .unwrap();
        assert_eq!(c.range_sets.len(), 2);
        assert_eq!(c.range_sets[0].len(), 2);
        assert_eq!(c.range_sets[0][1].gateway, Some(ip("10.2.0.254")));
        assert_eq!(c.range_sets[0][1].range_end, ip("10.2.0.254"));
        let v6 = &c.range_sets[1][0];
        assert_eq!(v6.range_start, ip("fd00::1"));
        assert_eq!(v6.range_end, ip("fd00::ffff:ffff:ffff:ffff"));
        assert_eq!(v6.gateway, Some(ip("fd00::1")));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some(ip("fd00::1")));
        assert_eq!(c.routes[0].gw, None);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn legacy_subnet_comes_before_ranges() {
        let c = HostLocalConfig::parse(&json!({
            "subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.20",
            "gateway": "10.9.0.1",
            "ranges": [[{"subnet": "fd00::/120"}]]
        }))
        .unwrap();
        assert_eq!(c.range_sets.len(), 2);
        assert_eq!(c.range_sets[0][0].range_start, ip("10.9.0.10"));
        assert_eq!(c.range_sets[0][0].range_end, ip("10.9.0.20"));
        assert!(c.range_sets[1][0].subnet.addr().is_ipv6());
    }

    #[test]
    fn null_and_empty_values_count_as_absent() {
        let c = HostLocalConfig::parse(&json!({
            "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "", "rangeStart": null}]],
            "dataDir": "", "resolvConf": "", "routes": null
        }))
        .unwrap();
        assert_eq!(c.range_sets[0][0].gateway, Some(ip("10.0.0.1")));
        assert_eq!(c.range_sets[0][0].range_start, ip("10.0.0.1"));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn bad_cidr_names_key_and_value() {
        let e = parse_err(json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}));
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg
                .starts_with(r#"invalid ipam.ranges[0][0].subnet "10.0.0.0/33": "#),
            "{}",
            e.msg
        );
        let e = parse_err(json!({"subnet": "nope"}));
        assert!(
            e.msg.starts_with(r#"invalid ipam.subnet "nope""#),
            "{}",
            e.msg
        );
        let e = parse_err(json!({"ranges": [[{"subnet": 5}]]}));
        assert!(e.msg.contains("ipam.ranges[0][0].subnet 5"), "{}", e.msg);
    }

    #[test]
    fn range_start_and_end_must_be_inside_subnet_and_ordered() {
        let e =
            parse_err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}));
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg.contains(r#"ipam.ranges[0][0].rangeStart "10.0.1.5""#),
            "{}",
            e.msg
        );
        let e = parse_err(json!({"subnet": "10.0.0.0/24", "rangeEnd": "fd00::1"}));
        assert!(e.msg.contains(r#"ipam.rangeEnd "fd00::1""#), "{}", e.msg);
        let e = parse_err(
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}),
        );
        assert!(
            e.msg.contains("rangeEnd") && e.msg.contains("before"),
            "{}",
            e.msg
        );
        let e = parse_err(json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.255"}));
        assert!(
            e.msg.contains("rangeStart") && e.msg.contains("after"),
            "{}",
            e.msg
        );
        let e = parse_err(json!({"subnet": "10.0.0.0/24", "rangeStart": "banana"}));
        assert!(e.msg.contains(r#"ipam.rangeStart "banana""#), "{}", e.msg);
    }

    #[test]
    fn subnet_shape_checks() {
        for (subnet, why) in [
            ("10.0.0.0/31", "too small"),
            ("10.0.0.0/32", "too small"),
            ("fd00::/127", "too small"),
            ("10.0.0.5/24", "host bits"),
            ("::ffff:10.0.0.0/120", "IPv4-mapped"),
        ] {
            let e = parse_err(json!({"subnet": subnet}));
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.contains(why), "{subnet}: {}", e.msg);
        }
        let e = parse_err(json!({"subnet": "10.0.0.0/24", "gateway": "fd00::1"}));
        assert!(e.msg.contains("ipam.gateway"), "{}", e.msg);
        // /30 is the smallest usable subnet.
        HostLocalConfig::parse(&json!({"subnet": "10.0.0.0/30"})).unwrap();
    }

    #[test]
    fn overlapping_or_mixed_ranges_rejected() {
        let e = parse_err(json!({"ranges": [[
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"},
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.30"}
        ]]}));
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg.contains("ipam.ranges[0]") && e.msg.contains("overlap"),
            "{}",
            e.msg
        );

        let e =
            parse_err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}));
        assert!(e.msg.contains("mixed address families"), "{}", e.msg);

        let e =
            parse_err(json!({"subnet": "10.0.0.0/16", "ranges": [[{"subnet": "10.0.5.0/24"}]]}));
        assert!(e.msg.contains("overlaps"), "{}", e.msg);

        // Non-overlapping ranges of one subnet are fine.
        HostLocalConfig::parse(&json!({"ranges": [[
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.30"}
        ]]}))
        .unwrap();
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            parse_err(json!({"type": "host-local"})).code,
            code::INVALID_CONFIG
        );
        assert_eq!(parse_err(json!({"ranges": []})).code, code::INVALID_CONFIG);
        assert!(parse_err(json!({"ranges": [[]]}))
            .msg
            .contains("empty range set"));
        assert!(parse_err(json!({"ranges": {}})).msg.contains("ipam.ranges"));
        assert!(parse_err(json!({"ranges": [[{"gateway": "10.0.0.1"}]]}))
            .msg
            .contains("missing ipam.ranges[0][0].subnet"));
        assert!(parse_err(json!("x")).msg.contains("ipam"));
        assert!(parse_err(json!({"subnet": "10.0.0.0/24", "type": 3}))
            .msg
            .contains("ipam.type"));
        assert!(parse_err(json!({"subnet": "10.0.0.0/24", "dataDir": 3}))
            .msg
            .contains("ipam.dataDir"));
        let e = parse_err(json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "10.0.0.0/99"}]}));
        assert!(e.msg.contains("ipam.routes[0].dst"), "{}", e.msg);
        let e = parse_err(json!({"subnet": "10.0.0.0/24", "routes": [{"gw": "10.0.0.1"}]}));
        assert!(e.msg.contains("ipam.routes[0].dst"), "{}", e.msg);
        let e = parse_err(
            json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}),
        );
        assert!(e.msg.contains("ipam.routes[0].gw"), "{}", e.msg);
    }

    #[test]
    fn resolv_conf_is_parsed_like_the_reference() {
        let d = TempDir::new("resolv");
        let path = d.0.join("resolv.conf");
        fs::write(
            &path,
            "# comment\n; also comment\nnameserver 10.0.0.53\n  nameserver fd00::53  \n\
             domain example.com\nsearch a.example b.example\noptions ndots:2 edns0\n\
             nameserver\nsortlist 1.2.3.4\n",
        )
        .unwrap();
        let c = HostLocalConfig::parse(
            &json!({"subnet": "10.0.0.0/24", "resolvConf": path.to_str().unwrap()}),
        )
        .unwrap();
        assert_eq!(c.dns.nameservers, vec!["10.0.0.53", "fd00::53"]);
        assert_eq!(c.dns.domain, "example.com");
        assert_eq!(c.dns.search, vec!["a.example", "b.example"]);
        assert_eq!(c.dns.options, vec!["ndots:2", "edns0"]);

        let e = parse_err(
            json!({"subnet": "10.0.0.0/24", "resolvConf": d.0.join("missing").to_str().unwrap()}),
        );
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("ipam.resolvConf"), "{}", e.msg);
    }

    // ---- store and allocation ----

    #[test]
    fn network_name_cannot_escape_data_dir() {
        let d = TempDir::new("names");
        for bad in ["", ".", "..", "a/b", "../x", "/abs"] {
            let e = Store::open(&d.0, bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
        }
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
        assert_eq!(
            allocate(&cfg, "..", "c", "eth0", &[]).unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            release(&cfg, "a/b", "c", "eth0").unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn sequential_allocation_and_on_disk_format() {
        let d = TempDir::new("format");
        let cfg = cfg_in(&d, json!({"subnet": "10.22.0.0/16"}));
        let r = allocate(&cfg, "net", "ctr-a", "eth0", &[]).unwrap();
        assert_eq!(
            r,
            vec![IpConfig {
                address: "10.22.0.2/16".parse().unwrap(),
                gateway: Some(ip("10.22.0.1")),
                interface: None,
            }]
        );
        assert_eq!(alloc1(&cfg, "ctr-b"), ip("10.22.0.3"));
        let dir = d.0.join("net");
        // Byte-exact: id, CR LF, ifname, nothing else.
        assert_eq!(fs::read(dir.join("10.22.0.2")).unwrap(), b"ctr-a\r\neth0");
        assert_eq!(fs::read(dir.join("10.22.0.3")).unwrap(), b"ctr-b\r\neth0");
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.22.0.3"
        );
        assert!(dir.join("lock").is_file());
        // The gateway is never written.
        assert!(!dir.join("10.22.0.1").exists());
        // The ID is trimmed on write, as the reference does.
        allocate(&cfg, "net", "  ctr-c \n", "eth1", &[]).unwrap();
        assert_eq!(fs::read(dir.join("10.22.0.4")).unwrap(), b"ctr-c\r\neth1");
    }

    #[test]
    fn round_robin_continues_after_release_and_wraps() {
        let d = TempDir::new("rr");
        // Allocatable: .2 .. .6 (.1 is the gateway, .7 broadcast).
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/29"}));
        for (i, want) in ["10.0.0.2", "10.0.0.3", "10.0.0.4"].iter().enumerate() {
            assert_eq!(alloc1(&cfg, &format!("c{i}")), ip(want));
        }
        // Releasing .3 does not make it the next address: round-robin goes on.
        release(&cfg, "net", "c1", "eth0").unwrap();
        assert_eq!(alloc1(&cfg, "c3"), ip("10.0.0.5"));
        assert_eq!(alloc1(&cfg, "c4"), ip("10.0.0.6"));
        // Wraps past the end, skips the gateway (.1) and the taken .2.
        assert_eq!(alloc1(&cfg, "c5"), ip("10.0.0.3"));
        assert_eq!(
            fs::read_to_string(d.0.join("net/last_reserved_ip.0")).unwrap(),
            "10.0.0.3"
        );
        let e = allocate(&cfg, "net", "c6", "eth0", &[]).unwrap_err();
        assert_eq!(e.code, code::IPAM_EXHAUSTED);
    }

    #[test]
    fn round_robin_across_ranges_of_a_set() {
        let d = TempDir::new("rrset");
        let cfg = cfg_in(
            &d,
            json!({"ranges": [[
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
                {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.20", "rangeEnd": "10.1.0.21"}
            ]]}),
        );
        let got: Vec<IpAddr> = (0..4).map(|i| alloc1(&cfg, &format!("c{i}"))).collect();
        assert_eq!(
            got,
            vec![
                ip("10.0.0.10"),
                ip("10.0.0.11"),
                ip("10.1.0.20"),
                ip("10.1.0.21")
            ]
        );
        let r = reserved_by(&cfg, "net", "c2", "eth0").unwrap();
        assert_eq!(r, vec![ip("10.1.0.20")]);
        release(&cfg, "net", "c0", "eth0").unwrap();
        // Wraps from the last range back to the first.
        let r = allocate(&cfg, "net", "c4", "eth0", &[]).unwrap();
        assert_eq!(r[0].address, "10.0.0.10/24".parse::<IpNet>().unwrap());
        assert_eq!(r[0].gateway, Some(ip("10.0.0.1")));
    }

    #[test]
    fn stale_or_garbage_cursor_restarts_at_set_start() {
        let d = TempDir::new("cursor");
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
        let dir = d.0.join("net");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("last_reserved_ip.0"), "192.168.1.1").unwrap();
        assert_eq!(alloc1(&cfg, "a"), ip("10.0.0.2"));
        fs::write(dir.join("last_reserved_ip.0"), "garbage").unwrap();
        assert_eq!(alloc1(&cfg, "b"), ip("10.0.0.3"));
        fs::write(dir.join("last_reserved_ip.0"), "10.0.0.100").unwrap();
        assert_eq!(alloc1(&cfg, "c"), ip("10.0.0.101"));
    }

    #[test]
    fn gateway_is_never_allocated() {
        let d = TempDir::new("gw");
        // Gateway in the middle of the range.
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/29", "gateway": "10.0.0.4"}));
        let got: Vec<IpAddr> = (0..5).map(|i| alloc1(&cfg, &format!("c{i}"))).collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        assert_eq!(
            allocate(&cfg, "net", "c9", "eth0", &[]).unwrap_err().code,
            code::IPAM_EXHAUSTED
        );
        // Nor when requested.
        release(&cfg, "net", "c0", "eth0").unwrap();
        let e = allocate(&cfg, "net", "c9", "eth0", &[ip("10.0.0.4")]).unwrap_err();
        assert_eq!(e.code, code::IPAM_UNAVAILABLE);
        assert!(
            e.msg.contains("10.0.0.4") && e.msg.contains("gateway"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn slash_30_exhausts_after_one() {
        let d = TempDir::new("exhaust");
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/30"}));
        assert_eq!(alloc1(&cfg, "a"), ip("10.0.0.2"));
        let e = allocate(&cfg, "net", "b", "eth0", &[]).unwrap_err();
        assert_eq!(e.code, code::IPAM_EXHAUSTED);
        assert_eq!(
            e.msg,
            "no IP addresses available in range set 10.0.0.1-10.0.0.2"
        );
    }

    #[test]
    fn requested_ip() {
        let d = TempDir::new("req");
        let cfg = cfg_in(
            &d,
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}),
        );
        let r = allocate(&cfg, "net", "a", "eth0", &[ip("10.0.0.50")]).unwrap();
        assert_eq!(r[0].address, "10.0.0.50/24".parse::<IpNet>().unwrap());
        assert_eq!(r[1].address, "fd00::2/64".parse::<IpNet>().unwrap());
        assert_eq!(r[1].gateway, Some(ip("fd00::1")));
        assert_eq!(fs::read(d.0.join("net/fd00::2")).unwrap(), b"a\r\neth0");
        // The reference records requested addresses as the cursor too.
        assert_eq!(
            fs::read_to_string(d.0.join("net/last_reserved_ip.0")).unwrap(),
            "10.0.0.50"
        );
        assert_eq!(alloc1_set0(&cfg, "b"), ip("10.0.0.51"));

        // Taken by someone else -> 101 naming the IP; nothing left behind.
        let e = allocate(&cfg, "net", "c", "eth0", &[ip("10.0.0.50")]).unwrap_err();
        assert_eq!(e.code, code::IPAM_UNAVAILABLE);
        assert!(e.msg.contains("10.0.0.50"), "{}", e.msg);
        assert!(reserved_by(&cfg, "net", "c", "eth0").unwrap().is_empty());

        // Outside every range set.
        let e = allocate(&cfg, "net", "c", "eth0", &[ip("192.168.0.1")]).unwrap_err();
        assert_eq!(e.code, code::IPAM_UNAVAILABLE);
        assert!(e.msg.contains("192.168.0.1"), "{}", e.msg);

        // Two in one set.
        let e = allocate(
            &cfg,
            "net",
            "c",
            "eth0",
            &[ip("10.0.0.60"), ip("10.0.0.61")],
        )
        .unwrap_err();
        assert_eq!(e.code, code::IPAM_UNAVAILABLE);

        // One per set, both honoured; IPv4-mapped form is canonicalized.
        let r = allocate(
            &cfg,
            "net",
            "c",
            "eth0",
            &[ip("fd00::99"), ip("::ffff:10.0.0.99")],
        )
        .unwrap();
        assert_eq!(r[0].address.addr(), ip("10.0.0.99"));
        assert_eq!(r[1].address.addr(), ip("fd00::99"));

        // Retrying with the same request returns the same addresses.
        let again = allocate(&cfg, "net", "c", "eth0", &[ip("10.0.0.99")]).unwrap();
        assert_eq!(again, r);
    }

    fn alloc1_set0(cfg: &HostLocalConfig, id: &str) -> IpAddr {
        allocate(cfg, "net", id, "eth0", &[]).unwrap()[0]
            .address
            .addr()
    }

    #[test]
    fn retried_allocate_returns_the_same_address() {
        let d = TempDir::new("retry");
        let cfg = cfg_in(
            &d,
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/120"}]]}),
        );
        let first = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
        let again = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
        assert_eq!(first, again);
        assert_eq!(all_reservations(&d.0, "net").unwrap().len(), 2);
        // A different interface of the same container is a different owner.
        let other = allocate(&cfg, "net", "a", "eth1", &[]).unwrap();
        assert_ne!(other[0].address, first[0].address);
        assert_eq!(reserved_by(&cfg, "net", "a", "eth0").unwrap().len(), 2);
    }

    #[test]
    fn failure_in_later_set_rolls_back_earlier_sets() {
        let d = TempDir::new("rollback");
        let cfg = cfg_in(
            &d,
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}]]}),
        );
        let a = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
        let e = allocate(&cfg, "net", "b", "eth0", &[]).unwrap_err();
        assert_eq!(e.code, code::IPAM_EXHAUSTED);
        assert!(e.msg.contains("10.1.0.1-10.1.0.2"), "{}", e.msg);
        assert!(reserved_by(&cfg, "net", "b", "eth0").unwrap().is_empty());
        // The other container's addresses are untouched.
        let held = reserved_by(&cfg, "net", "a", "eth0").unwrap();
        assert_eq!(held, vec![a[0].address.addr(), a[1].address.addr()]);
    }

    #[test]
    fn release_is_idempotent_and_does_not_create_dirs() {
        let d = TempDir::new("release");
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
        release(&cfg, "never", "a", "eth0").unwrap();
        assert!(!d.0.join("never").exists());
        assert!(reserved_by(&cfg, "never", "a", "eth0").unwrap().is_empty());
        assert!(all_reservations(&d.0, "never").unwrap().is_empty());

        let a = alloc1(&cfg, "a");
        let b = alloc1(&cfg, "b");
        release(&cfg, "net", "a", "eth0").unwrap();
        release(&cfg, "net", "a", "eth0").unwrap();
        assert!(!d.0.join("net").join(a.to_string()).exists());
        assert!(d.0.join("net").join(b.to_string()).exists());
        // Wrong ifname releases nothing.
        release(&cfg, "net", "b", "eth1").unwrap();
        assert!(d.0.join("net").join(b.to_string()).exists());
        // Non-reservation files are left alone.
        assert!(d.0.join("net/lock").exists());
        assert!(d.0.join("net/last_reserved_ip.0").exists());
    }

    #[test]
    fn first_attempt_skips_held_addresses_and_retry_returns_them() {
        let d = TempDir::new("attempt");
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
        let first = super::allocate(&cfg, "net", "a", "eth0", &[], Attempt::First).unwrap();
        let again = allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
        assert_eq!(first, again, "a retry converges on the held address");
        // A first attempt trusts its caller that nothing is held.
        let other = super::allocate(&cfg, "net", "a", "eth0", &[], Attempt::First).unwrap();
        assert_ne!(first[0].address, other[0].address);
    }

    #[test]
    fn release_known_removes_only_named_files_of_the_owner() {
        let d = TempDir::new("known");
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
        let a = alloc1(&cfg, "a");
        let b = alloc1(&cfg, "b");
        // b's address named for a: not a's, left alone.
        release_known(&cfg, "net", "a", "eth0", &[b]).unwrap();
        assert!(d.0.join("net").join(b.to_string()).exists());
        assert!(d.0.join("net").join(a.to_string()).exists());
        release_known(&cfg, "net", "a", "eth0", &[a, ip("10.0.0.200")]).unwrap();
        assert!(!d.0.join("net").join(a.to_string()).exists());
        // Nothing known: every file of the owner, by scanning.
        release_known(&cfg, "net", "b", "eth0", &[]).unwrap();
        assert!(!d.0.join("net").join(b.to_string()).exists());
        release_known(&cfg, "never", "b", "eth0", &[b]).unwrap();
        assert!(!d.0.join("never").exists());
    }

    #[test]
    fn legacy_id_only_files() {
        let d = TempDir::new("legacy");
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
        let dir = d.0.join("net");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("10.0.0.7"), "old-ctr\n").unwrap();
        assert_eq!(
            reserved_by(&cfg, "net", "old-ctr", "eth0").unwrap(),
            vec![ip("10.0.0.7")]
        );
        assert_eq!(
            all_reservations(&d.0, "net").unwrap(),
            vec![(ip("10.0.0.7"), "old-ctr".to_string(), String::new())]
        );
        release(&cfg, "net", "old-ctr", "eth0").unwrap();
        assert!(!dir.join("10.0.0.7").exists());
    }

    #[test]
    fn all_reservations_lists_everything() {
        let d = TempDir::new("all");
        let cfg = cfg_in(
            &d,
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}),
        );
        allocate(&cfg, "net", "a", "eth0", &[]).unwrap();
        allocate(&cfg, "net", "b", "net1", &[]).unwrap();
        let all = all_reservations(&d.0, "net").unwrap();
        assert_eq!(
            all,
            vec![
                (ip("10.0.0.2"), "a".into(), "eth0".into()),
                (ip("10.0.0.3"), "b".into(), "net1".into()),
                (ip("fd00::2"), "a".into(), "eth0".into()),
                (ip("fd00::3"), "b".into(), "net1".into()),
            ]
        );
    }

    #[test]
    fn ipv6_file_names_are_canonical() {
        // Go's net.IP.String (RFC 5952): the first longest run of zero
        // groups is compressed, a single zero group never is.
        let d = TempDir::new("v6names");
        let cfg = cfg_in(
            &d,
            json!({"ranges": [[{"subnet": "fd00:0:0:1::/64", "rangeStart": "fd00:0:0:1:0:a:0:0"}]]}),
        );
        assert_eq!(alloc1(&cfg, "a"), ip("fd00:0:0:1:0:a:0:0"));
        assert!(d.0.join("net/fd00::1:0:a:0:0").is_file());
        assert_eq!(alloc1(&cfg, "b"), ip("fd00:0:0:1:0:a:0:1"));
        assert!(d.0.join("net/fd00::1:0:a:0:1").is_file());
        assert_eq!(
            fs::read_to_string(d.0.join("net/last_reserved_ip.0")).unwrap(),
            "fd00::1:0:a:0:1"
        );
    }

    #[test]
    fn store_holds_an_exclusive_flock_until_dropped() {
        use rustix::fs::{flock, FlockOperation};
        let d = TempDir::new("lock");
        let store = Store::open(&d.0, "net").unwrap();
        // Another open file description of the same lock file, as another
        // process (or the reference binary) would have.
        let other = File::open(d.0.join("net/lock")).unwrap();
        assert_eq!(
            flock(&other, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        // A second Store in another thread waits for the first.
        let opened = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let _s2 = Store::open(&d.0, "net").unwrap();
                opened.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(!opened.load(Ordering::SeqCst));
            drop(store);
            h.join().unwrap();
        });
        assert!(opened.load(Ordering::SeqCst));
        flock(&other, FlockOperation::NonBlockingLockExclusive).unwrap();
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let d = TempDir::new("concurrent");
        let cfg = cfg_in(&d, json!({"subnet": "10.0.0.0/24"}));
        let got: Vec<IpAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32)
                .map(|i| {
                    let cfg = &cfg;
                    s.spawn(move || alloc1(cfg, &format!("ctr-{i}")))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: HashSet<IpAddr> = got.iter().copied().collect();
        assert_eq!(distinct.len(), 32);
        assert_eq!(all_reservations(&d.0, "net").unwrap().len(), 32);
        // Round-robin without holes: exactly .2 ..= .33.
        let want: HashSet<IpAddr> = (2..34).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(distinct, want);
    }

    /// Interoperation with the reference binary when it is installed
    /// (Debian's containernetworking-plugins); skipped otherwise.
    #[test]
    fn shares_data_dir_with_reference_host_local() {
        let bin = Path::new("/usr/lib/cni/host-local");
        if !bin.is_file() {
            eprintln!("skipping: {} not installed", bin.display());
            return;
        }
        let d = TempDir::new("interop");
        let ipam = json!({
            "type": "host-local",
            "ranges": [[{"subnet": "10.88.0.0/29"}], [{"subnet": "fd88::/125"}]],
            "dataDir": d.0.to_str().unwrap()
        });
        let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "x", "ipam": ipam});
        let cfg = HostLocalConfig::parse(&ipam).unwrap();
        let reference = |cmd: &str, id: &str| -> Value {
            let mut child = std::process::Command::new(bin)
                .env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", id)
                .env("CNI_NETNS", "/proc/self/ns/net")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(conf.to_string().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let s = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "reference {cmd} failed: {s}");
            if s.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&s).unwrap()
            }
        };
        // Reference first, then ours: round-robin continues from its cursor.
        let r = reference("ADD", "ref-1");
        assert_eq!(r["ips"][0]["address"], "10.88.0.2/29");
        assert_eq!(r["ips"][1]["address"], "fd88::2/125");
        let ours = allocate(&cfg, "net", "ours-1", "eth0", &[]).unwrap();
        assert_eq!(ours[0].address.to_string(), "10.88.0.3/29");
        assert_eq!(ours[1].address.to_string(), "fd88::3/125");
        let r = reference("ADD", "ref-2");
        assert_eq!(r["ips"][0]["address"], "10.88.0.4/29");
        assert_eq!(r["ips"][1]["address"], "fd88::4/125");
        // We see the reference's reservations, with its file format.
        assert_eq!(
            reserved_by(&cfg, "net", "ref-2", "eth0").unwrap(),
            vec![ip("10.88.0.4"), ip("fd88::4")]
        );
        // The reference releases ours, we release the reference's.
        reference("DEL", "ours-1");
        assert!(reserved_by(&cfg, "net", "ours-1", "eth0")
            .unwrap()
            .is_empty());
        release(&cfg, "net", "ref-1", "eth0").unwrap();
        assert!(reserved_by(&cfg, "net", "ref-1", "eth0")
            .unwrap()
            .is_empty());
        // Fill the IPv4 set from both sides; nobody gets an address twice.
        for i in 0..2 {
            allocate(&cfg, "net", &format!("ours-f{i}"), "eth0", &[]).unwrap();
            reference("ADD", &format!("ref-f{i}"));
        }
        let v4: Vec<IpAddr> = all_reservations(&d.0, "net")
            .unwrap()
            .into_iter()
            .map(|(ip, _, _)| ip)
            .filter(|ip| ip.is_ipv4())
            .collect();
        assert_eq!(
            v4,
            [
                "10.88.0.2",
                "10.88.0.3",
                "10.88.0.4",
                "10.88.0.5",
                "10.88.0.6"
            ]
            .map(ip)
        );
        assert_eq!(
            allocate(&cfg, "net", "late", "eth0", &[]).unwrap_err().code,
            code::IPAM_EXHAUSTED
        );
    }
}
