//! Taking the data path off a node (`cni-ebpf uninstall`): our cls_bpf
//! filters on every device of the namespace, every pin (programs, maps, TCX
//! and cgroup links: removing a link's pin detaches it), the bpffs the plugin
//! mounted, and the masquerade port reservation. Best effort: keeps going
//! past errors and reports them all; running it again finds nothing to do.

use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData};
use cni_ebpf_common::{map, Config};

use super::{
    node::unreserve_ports,
    pins::{BpfError, Datapath},
};
use crate::netlink::Netlink;

/// What [`remove_node`] did.
#[derive(Debug, Default)]
pub struct Removed {
    /// Devices that had a filter of ours.
    pub filtered_devices: Vec<String>,
    /// Pin directories removed (`<pin root>/v<ABI>`).
    pub pin_dirs: Vec<PathBuf>,
    /// bpffs mounts taken off the pin root.
    pub unmounted: usize,
    /// Port range taken out of `ip_local_reserved_ports`.
    pub unreserved: Option<(u16, u16)>,
    /// What failed.
    pub errors: Vec<BpfError>,
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> BpfError {
    BpfError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Removes everything the plugin put into the kernel from the calling
/// thread's network namespace and under `pin_root`.
pub fn remove_node(pin_root: &Path) -> Removed {
    let mut r = Removed::default();
    let dp = Datapath::layout(pin_root);
    // Read before the pins go: the masquerade range the ADDs reserved.
    let snat = dp
        .map::<Array<MapData, Config>>(map::CONFIG)
        .ok()
        .and_then(|m| m.get(&0, 0).ok())
        .filter(|c| c.snat_min != 0)
        .map(|c| (c.snat_min, c.snat_max));

    // Filters first: they hold the programs (and so the maps) alive whatever
    // happens to the pins. Every device, not only those in the state records:
    // uplinks have none, and a record may be gone.
    match Netlink::open().and_then(|nl| Ok((nl.call(nl.all_links())?, nl))) {
        Ok((links, nl)) => {
            for l in links {
                if Datapath::detach_all_filters(&nl, l.index) > 0 {
                    r.filtered_devices.push(l.name);
                }
            }
        }
        Err(e) => r.errors.push(BpfError::Link {
            name: "netlink".into(),
            what: "list devices",
            source: Box::new(e),
        }),
    }

    // Only our own layout (`v<N>` directories): a pin root pointed at the
    // bpffs root must not take other users' pins with it.
    match std::fs::read_dir(pin_root) {
        Ok(rd) => {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name
                    .strip_prefix('v')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if !ours {
                    continue;
                }
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => r.pin_dirs.push(e.path()),
                    Err(err) => r.errors.push(io("remove pins", &e.path(), err)),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => r.errors.push(io("read pin root", pin_root, e)),
    }
    // The plugin mounts a bpffs on the pin root when it is not on one (it
    // may have been mounted more than once by racing first ADDs).
    while r.unmounted < 8 && is_mount_point(pin_root) {
        match rustix::mount::unmount(pin_root, rustix::mount::UnmountFlags::empty()) {
            Ok(()) => r.unmounted += 1,
            Err(e) => {
                r.errors.push(io("unmount bpffs", pin_root, e.into()));
                break;
            }
        }
    }
    match std::fs::remove_dir(pin_root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => r.errors.push(io("remove pin root", pin_root, e)),
    }

    if let Some(range) = snat {
        match unreserve_ports(range) {
            Ok(()) => r.unreserved = Some(range),
            Err(e) => r.errors.push(e),
        }
    }
    r
}

/// True when `path` is a mount point in this mount namespace.
fn is_mount_point(path: &Path) -> bool {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == path)
}
