//! The kernel side as the loader sees it: the pinned layout on bpffs, loading
//! the embedded object once per node, attaching programs to host veths, and
//! the map entries each attachment owns.
//!
//! Layout under the pin root (default `/sys/fs/bpf/cni-ebpf`):
//! ```text
//! v<ABI>/maps/<map>                 maps, shared by every program generation
//! v<ABI>/progs/<object hash>/<prog> programs of one build of the object
//! v<ABI>/links/<host veth>_<dir>    TCX links (kept alive by the pin)
//! v<ABI>/links/uplink/<dev>_<dir>   TCX links of uplinks
//! v<ABI>/links/cgroup/<hash>/<prog> socket hook links of one cgroup
//! ```
//! The ABI version comes from `cni_ebpf_common::PIN_ABI_VERSION`; the object
//! hash makes a binary with a different object load its own programs while
//! maps (and so every mapping) carry over.

mod attach;
mod endpoints;
mod events;
mod nat;
mod node;
mod pins;
mod ports;
mod remove;
mod restore;

pub use attach::AttachMode;
pub use node::{cgroup2_root, netns_cookie, node_netlink, NodeSettings};
pub use pins::{BpfError, Datapath, LoadReport};
pub use ports::{proto_name, PortError};
pub use remove::remove_node;
pub use restore::{node_settings, open, restore_all, RestoreReport};
