//! Attaching the host-veth programs so the attachment outlives this process.
//!
//! TCX (Linux 6.6+) links are pinned under `links/`; the pin is what keeps
//! them attached after the CNI process exits, and removing the pin detaches.
//! Where TCX is unavailable (or disabled), a clsact qdisc with a cls_bpf
//! filter is used instead; such a filter lives as long as the device. Every
//! cls_bpf filter is made, replaced and removed with the command's own
//! netlink handle ([`Netlink::add_bpf_filter`], [`Netlink::del_bpf_filters`]);
//! aya is used for TCX links only.

use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    SchedClassifier, TcAttachType,
};
use cni_ebpf_common::prog;
use serde::{Deserialize, Serialize};

use super::pins::{open_pinned_prog, pin_link, BpfError, Datapath};
use crate::netlink::{Link, Netlink, NlError};
use std::os::fd::AsFd;

/// How programs are attached.
///
/// The default is a clsact qdisc with cls_bpf filters made over netlink: on
/// these machines each TCX attach or detach waits for an RCU grace period
/// (`bpf_mprog_commit()` calls `synchronize_rcu()`), which made an ADD 42 ms
/// instead of 14 ms (docs/architecture.md, "Attaching").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX where the kernel has it (6.6+), else netlink.
    Auto,
    /// TCX links only.
    Tcx,
    /// clsact qdisc + cls_bpf filter (default).
    #[default]
    Netlink,
}

/// The programs of one kind of device, by direction.
type Hooks = [(&'static str, TcAttachType, &'static str); 2];

/// A pod's host veth.
const ENDPOINT: Hooks = [
    (prog::FROM_CONTAINER, TcAttachType::Ingress, "ingress"),
    (prog::TO_CONTAINER, TcAttachType::Egress, "egress"),
];

/// A node uplink.
const UPLINK: Hooks = [
    (prog::FROM_NETDEV, TcAttachType::Ingress, "ingress"),
    (prog::TO_NETDEV, TcAttachType::Egress, "egress"),
];

/// Sub-directory of `links/` for uplink link pins.
const UPLINK_LINKS: &str = "uplink";

/// Priority and handle of our cls_bpf filters: fixed, so that an attachment
/// is found again and replaced instead of stacked.
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: u16 = 0xcb;

/// An attachment made anew, or one of ours swapped to this build's program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Attach (ADD of a new veth: nothing of ours is there).
    Fresh,
    /// Replace our attachment in place if there is one, else attach: the
    /// cls_bpf filter is changed in one netlink request and a TCX link is
    /// updated with `BPF_LINK_UPDATE`, so no packet sees the device without
    /// a program (repair, upgrade, uplinks).
    Replace,
}

impl Datapath {
    fn link_pin(&self, sub: Option<&str>, ifname: &str, dir: &str) -> std::path::PathBuf {
        let d = self.links_dir();
        let d = match sub {
            Some(s) => d.join(s),
            None => d,
        };
        d.join(format!("{ifname}_{dir}"))
    }

    /// Attaches `from_container`/`to_container` to the host veth `host`.
    /// Returns the mode actually used. Re-attaching replaces an earlier
    /// attachment of ours instead of stacking a second one.
    pub fn attach_endpoint(
        &self,
        nl: &Netlink,
        host: &Link,
        mode: AttachMode,
    ) -> Result<AttachMode, BpfError> {
        self.attach_tc(
            nl,
            &host.name,
            Some(host.index),
            &ENDPOINT,
            None,
            mode,
            How::Fresh,
        )
    }

    /// Puts this build's programs on the existing host veth `ifname` of a
    /// recorded attachment, replacing ours in place where they are still
    /// attached (repair, upgrade).
    pub fn reattach_endpoint(
        &self,
        nl: &Netlink,
        ifname: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, BpfError> {
        self.attach_tc(nl, ifname, None, &ENDPOINT, None, mode, How::Replace)
    }

    /// Attaches `from_netdev`/`to_netdev` to the uplink `ifname`, replacing
    /// an earlier attachment of ours (idempotent; after lost pins the old
    /// filters are still there).
    pub fn attach_uplink(
        &self,
        nl: &Netlink,
        ifname: &str,
        mode: AttachMode,
    ) -> Result<AttachMode, BpfError> {
        self.attach_tc(
            nl,
            ifname,
            None,
            &UPLINK,
            Some(UPLINK_LINKS),
            mode,
            How::Replace,
        )
    }

    /// Replaces the program of our TCX link pinned at `pin` in place
    /// (`BPF_LINK_UPDATE`). `Ok(false)` when there is none to replace.
    fn replace_link(p: &mut SchedClassifier, pin: &std::path::Path) -> Result<bool, BpfError> {
        let Ok(pinned) = PinnedLink::from_pin(pin) else {
            return Ok(false);
        };
        let Ok(link) = SchedClassifierLink::try_from(FdLink::from(pinned)) else {
            return Ok(false);
        };
        let Ok(id) = p.attach_to_link(link) else {
            return Ok(false);
        };
        let link = p
            .take_link(id)
            .map_err(BpfError::program(pin.display().to_string(), "take link"))?;
        // The link's pin keeps the attachment; dropping the link would not
        // detach it, but forgetting keeps its fd semantics out of the way.
        std::mem::forget(link);
        Ok(true)
    }

    #[allow(clippy::too_many_arguments, reason = "one attach, its inputs")]
    fn attach_tc(
        &self,
        nl: &Netlink,
        ifname: &str,
        index: Option<u32>,
        hooks: &Hooks,
        sub: Option<&str>,
        mode: AttachMode,
        how: How,
    ) -> Result<AttachMode, BpfError> {
        let use_tcx = match mode {
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
            // TCX arrived in 6.6 (commit e420bed02507, "bpf: Add fd-based tcx multi-prog infra").
            AttachMode::Auto => aya::util::KernelVersion::current()
                .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                .unwrap_or(false),
        };
        if !use_tcx {
            return self.attach_filters(nl, ifname, index, hooks, how);
        }
        // Callers that may find an earlier attachment of ours on the device
        // (chained mode) detach first; a stale link pin of the same name would
        // only make pinning fail, so TCX clears those here.
        if how == How::Fresh {
            self.unpin_links(ifname, hooks, sub);
        }
        if let Some(parent) = self.link_pin(sub, ifname, "x").parent() {
            crate::private::create_dir(parent).map_err(|e| BpfError::Link {
                name: parent.display().to_string(),
                what: "create link pin dir",
                source: Box::new(e),
            })?;
        }
        for &(name, kind, dir) in hooks {
            let path = self.prog_path(name);
            let mut p = SchedClassifier::from_pin(&path).map_err(BpfError::program(
                path.display().to_string(),
                "open pinned program",
            ))?;
            let pin = self.link_pin(sub, ifname, dir);
            if how == How::Replace {
                if Self::replace_link(&mut p, &pin)? {
                    continue;
                }
                // A pin that is not a live TCX link of ours.
                let _ = std::fs::remove_file(&pin);
            }
            // Re-attaching after lost pins: the old link may not be released
            // yet (its pin's inode goes when the unmounted bpffs is freed),
            // and a TCX program that passes a packet ends the chain, so ours
            // must run first.
            let order = if how == How::Replace {
                LinkOrder::first()
            } else {
                LinkOrder::default()
            };
            let id = p
                .attach_with_options(ifname, kind, TcAttachOptions::TcxOrder(order))
                .map_err(BpfError::program(
                    format!("{name} on {ifname} {dir}"),
                    "attach",
                ))?;
            let link = p
                .take_link(id)
                .map_err(BpfError::program(name, "take link"))?;
            pin_link(link, &pin)?;
        }
        Ok(AttachMode::Tcx)
    }

    /// The clsact qdisc and both cls_bpf filters, on `nl`, with the pinned
    /// programs opened by `BPF_OBJ_GET` rather than through aya (see
    /// [`open_pinned_prog`] for what that saves). A fixed priority and
    /// handle: a retried ADD or a repair replaces our filter instead of
    /// adding another one; a fresh attach (ADD of a new veth, nothing of
    /// ours there) refuses to replace anything.
    fn attach_filters(
        &self,
        nl: &Netlink,
        ifname: &str,
        index: Option<u32>,
        hooks: &Hooks,
        how: How,
    ) -> Result<AttachMode, BpfError> {
        let mut progs = Vec::new();
        for &(name, kind, _) in hooks {
            let path = self.prog_path(name);
            let fd = open_pinned_prog(&path).map_err(|e| BpfError::Link {
                name: path.display().to_string(),
                what: "open pinned program",
                source: Box::new(e),
            })?;
            progs.push((name, kind == TcAttachType::Ingress, fd));
        }
        let replace = how == How::Replace;
        nl.call(async {
            let index = match index {
                Some(i) => i,
                None => {
                    nl.link_by_name(ifname)
                        .await?
                        .ok_or_else(|| NlError::NoLink(ifname.to_string()))?
                        .index
                }
            };
            nl.add_clsact(index).await?;
            for (name, ingress, fd) in &progs {
                nl.add_bpf_filter(
                    index,
                    *ingress,
                    fd.as_fd(),
                    name,
                    NL_PRIORITY,
                    NL_HANDLE,
                    replace,
                )
                .await?;
            }
            Ok(())
        })
        .map_err(|e| BpfError::Link {
            name: ifname.to_string(),
            what: "attach programs",
            source: Box::new(e),
        })?;
        Ok(AttachMode::Netlink)
    }

    /// Removes our TCX link pins for `ifname` (detaching the programs if the
    /// device still exists) and our cls_bpf filters, by program name (they
    /// matter on a veth we do not own, chained mode, where the device
    /// stays). Missing pins, filters or device are fine.
    pub fn detach_endpoint(&self, nl: &Netlink, ifname: &str) {
        let names: Vec<&str> = ENDPOINT.iter().map(|(n, _, _)| *n).collect();
        let _ = nl.call(async {
            if let Some(l) = nl.link_by_name(ifname).await? {
                nl.del_bpf_filters(l.index, &names).await?;
            }
            Ok(())
        });
        self.unpin_links(ifname, &ENDPOINT, None);
    }

    /// Removes our TCX link pins for `ifname`, leaving cls_bpf filters
    /// alone (the device is gone, or no netlink socket could be opened).
    pub fn unpin_endpoint(&self, ifname: &str) {
        self.unpin_links(ifname, &ENDPOINT, None);
    }

    /// Removes every cls_bpf filter of ours (pod and uplink programs, by
    /// name) from the device `index`; returns how many hooks had one. TCX
    /// links are not touched here: removing their pins detaches them.
    pub fn detach_all_filters(nl: &Netlink, index: u32) -> usize {
        let names: Vec<&str> = ENDPOINT
            .iter()
            .chain(UPLINK.iter())
            .map(|(n, _, _)| *n)
            .collect();
        nl.call(nl.del_bpf_filters(index, &names)).unwrap_or(0)
    }

    fn unpin_links(&self, ifname: &str, hooks: &Hooks, sub: Option<&str>) {
        for (_, _, dir) in hooks {
            let pin = self.link_pin(sub, ifname, dir);
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                let _ = link.unpin();
            } else {
                let _ = std::fs::remove_file(&pin);
            }
        }
    }

    /// True when both TCX link pins of `ifname` exist (CHECK).
    pub fn has_link_pins(&self, ifname: &str) -> bool {
        ENDPOINT
            .iter()
            .all(|(_, _, dir)| self.link_pin(None, ifname, dir).exists())
    }

    /// Names of host interfaces that have link pins (GC).
    pub fn pinned_link_ifnames(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.links_dir()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(i) = n.strip_suffix("_ingress") {
                    out.push(i.to_string());
                }
            }
        }
        out
    }
}
