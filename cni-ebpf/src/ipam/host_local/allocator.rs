//! Allocation and release (the reference's `backend/allocator`): range
//! iteration, the round-robin cursor and reservation, all under the store's
//! lock.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::config::{next_ip, set_string, HostLocalConfig, Range};
use super::disk::{owner_key, Entry, Store, StoreError};
use crate::cni::{CniError, IpConfig};

/// Why an allocation fails; [`CniError`] gives each its code
/// (`From<AllocError> for CniError` in `cni/error.rs`): 101 for a request
/// that cannot be honoured, 100 for an exhausted range set.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// A requested address outside every range set (101).
    #[error("requested IP address {ip} is not in any range of network {network:?} ({sets})")]
    NotInRange {
        /// The address.
        ip: IpAddr,
        /// The network name.
        network: String,
        /// Every range set, as the reference prints them.
        sets: String,
    },
    /// Two requested addresses in one range set (101).
    #[error(
        "requested IP addresses {prev} and {ip} are both in range set {set}; \
         only one address per range set can be requested"
    )]
    TwoInOneSet {
        /// The first one.
        prev: IpAddr,
        /// The second one.
        ip: IpAddr,
        /// The range set.
        set: String,
    },
    /// A requested address that is its range's gateway (101).
    #[error("requested IP address {ip} is the gateway of range {range}")]
    Gateway {
        /// The address.
        ip: IpAddr,
        /// Its range.
        range: String,
    },
    /// A requested address someone else holds (101).
    #[error("requested IP address {ip} is not available in range set {set}")]
    Taken {
        /// The address.
        ip: IpAddr,
        /// Its range set.
        set: String,
    },
    /// No free address left in a range set (100).
    #[error("no IP addresses available in range set {set}")]
    Exhausted {
        /// The range set.
        set: String,
    },
    /// The store failed (its own code).
    #[error(transparent)]
    Store(#[from] StoreError),
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
            return Err(AllocError::NotInRange {
                ip,
                network: network.to_string(),
                sets: cfg
                    .range_sets
                    .iter()
                    .map(|s| set_string(s))
                    .collect::<Vec<_>>()
                    .join("; "),
            }
            .into());
        };
        match wanted[idx] {
            Some(prev) if prev != ip => {
                return Err(AllocError::TwoInOneSet {
                    prev,
                    ip,
                    set: set_string(&cfg.range_sets[idx]),
                }
                .into());
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
                    let _ = store.unreserve(ip);
                }
                return Err(e.into());
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
    fn load(&mut self, store: &Store) -> Result<(), StoreError> {
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
) -> Result<(IpAddr, &'a Range, bool), AllocError> {
    if let Some(ip) = requested {
        let range = range_for(set, ip).expect("requested IPs were matched to their range set");
        if range.gateway == Some(ip) {
            return Err(AllocError::Gateway {
                ip,
                range: range.to_string(),
            });
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
        return Err(AllocError::Taken {
            ip,
            set: set_string(set),
        });
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
    Err(AllocError::Exhausted {
        set: set_string(set),
    })
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
        store.remove_entry(e)?;
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
    for &ip in known {
        store.release_if_owned(ip, &key)?;
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
            let (id, ifname) = e.owner_parts();
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
