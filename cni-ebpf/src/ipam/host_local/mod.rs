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
//! `Range.Canonicalize`, with errors reported as
//! [`crate::cni::code::INVALID_CONFIG`] and
//! naming the offending key and value. Where this module differs from the
//! reference it is stricter or more idempotent, never looser; each difference
//! is commented where it happens.
//!
//! Layout, as the reference's `backend/`: `config` parses and validates
//! the `ipam` section, `disk` is the store (format, lock, files — the only
//! module that touches the disk) and `allocator` walks the ranges, keeps
//! the round-robin cursor and reserves and releases addresses.

mod allocator;
mod config;
mod disk;
#[cfg(test)]
mod tests;

pub use allocator::{
    all_reservations, allocate, release, release_known, reserved_by, AllocError, Attempt,
};
pub use config::{
    HostLocalConfig, IpamKey, IpamObject, Range, RangeKey, RouteKey, DEFAULT_DATA_DIR,
};
pub use disk::{Store, StoreError};
