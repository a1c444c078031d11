//! Every rtnetlink call the plugin makes, in one place.
//!
//! A [`Netlink`] is bound to the network namespace of the thread that made it
//! (see [`crate::netns`]). Each call is one request; nothing here lists all
//! links or routes of the node, so the cost of an ADD does not grow with the
//! number of pods.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, BorrowedFd},
};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{
            InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
            LinkAttribute, LinkInfo, LinkMessage,
        },
        neighbour::NeighbourState,
        route::{RouteAttribute, RouteHeader, RouteScope},
    },
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// The kernel refused a request.
    #[error("netlink: {op}")]
    Request {
        /// What was asked.
        op: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The socket or runtime could not be set up.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// A link that must exist does not.
    #[error("link {0:?} not found")]
    NoLink(String),
    /// A bridge has as many ports as Linux allows (`BR_MAX_PORTS`).
    #[error(
        "bridge {bridge} already has {BRIDGE_MAX_PORTS} ports, the most a Linux bridge takes (BR_MAX_PORTS); \
         every pod of a bridge-mode network is one port: use \"mode\": \"routed\" (no bridge, no such limit) \
         for nodes with more pods"
    )]
    BridgeFull {
        /// The bridge's name.
        bridge: String,
    },
}

/// Ports a Linux bridge takes (`BR_MAX_PORTS` in net/bridge/br_private.h:
/// `1 << BR_PORT_BITS` minus port 0). One more fails with `EXFULL`.
pub const BRIDGE_MAX_PORTS: u32 = 1023;

fn req(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NlError {
    let op = op.into();
    move |source| NlError::Request { op, source }
}

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address (empty if none).
    pub mac: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// `veth`, `bridge`, ... (empty if none).
    pub kind: String,
    /// Index of the master (bridge) if enslaved.
    pub master: Option<u32>,
    /// Index of the peer (for veth: in the peer's namespace).
    pub link: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

impl Link {
    fn from_msg(m: LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            kind: String::new(),
            master: None,
            link: None,
            up: m
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Address(a) => l.mac = a,
                LinkAttribute::Mtu(v) => l.mtu = v,
                LinkAttribute::Controller(v) => l.master = Some(v),
                LinkAttribute::Link(v) => l.link = Some(v),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = k.to_string();
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A cls_bpf filter on a clsact hook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BpfFilter {
    /// Ingress (else egress).
    pub ingress: bool,
    /// The program's name as the kernel reports it (`TCA_BPF_NAME`).
    pub name: String,
    /// The program's ID.
    pub prog_id: u32,
    /// The filter's priority (upper half of `tcm_info`).
    pub priority: u16,
    /// The filter's protocol, network order (lower half of `tcm_info`).
    pub protocol: u16,
    /// The filter's handle.
    pub handle: u32,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for (i, part) in s.split(':').enumerate() {
        if i >= 6 || part.len() != 2 {
            return None;
        }
        out[i] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

/// The process's one runtime: a current-thread runtime created on first use,
/// driving every connection made with [`Netlink::open`]. Building one costs
/// an epoll instance, an eventfd and a few allocations, which an ADD paid
/// once per netlink call before (seven times).
fn runtime() -> Result<&'static tokio::runtime::Runtime, NlError> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // A concurrent first caller may have won: its runtime is the one kept.
    let _ = RT.set(rt);
    Ok(RT.get().expect("set above"))
}

/// A netlink connection, bound to the network namespace of the thread that
/// opened it (see [`crate::netns`]): a command opens one for the node and,
/// from a short-lived thread inside the pod's namespace, one for the pod,
/// and makes every request of that namespace on it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace, driven by the
    /// process's runtime. The socket keeps its namespace when the handle
    /// moves to another thread.
    pub fn open() -> Result<Self, NlError> {
        let rt = runtime()?;
        // The socket registers with the runtime's reactor.
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    /// Runs the requests of `fut` (made on this handle) to completion.
    /// Not from inside another `call`.
    pub fn call<T>(&self, fut: impl Future<Output = Result<T, NlError>>) -> Result<T, NlError> {
        runtime()?.block_on(fut)
    }

    /// Runs `f` with a fresh connection on a runtime of its own (one-off
    /// callers off the ADD/DEL path, and the reaper child, which has closed
    /// the descriptors of its parent's runtime); the socket belongs to the
    /// namespace of the calling thread.
    pub fn with<T, F, Fut>(f: F) -> Result<T, NlError>
    where
        F: FnOnce(Netlink) -> Fut,
        Fut: Future<Output = Result<T, NlError>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            f(Netlink { handle }).await
        })
    }

    /// Looks a link up by name; `None` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NlError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.map(Link::from_msg)),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    /// Every link of the namespace (`cni-ebpf uninstall` only: nothing on the
    /// ADD/DEL path lists all links).
    pub async fn all_links(&self) -> Result<Vec<Link>, NlError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("list links"))? {
            out.push(Link::from_msg(m));
        }
        Ok(out)
    }

    /// Creates a veth pair `host` <-> `peer`, with the peer created directly in
    /// the namespace `peer_ns` (no move after creation, so the pod never sees a
    /// half-configured interface and the node never sees the peer).
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<(), NlError> {
        let mut pb = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_ns.as_raw_fd());
        if let Some(m) = mtu {
            pb = pb.mtu(m);
        }
        if let Some(mac) = peer_mac {
            pb = pb.address(mac.to_vec());
        }
        let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(pb.build())));
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(req(format!("create veth {host} <-> {peer}")))
    }

    /// Creates a bridge if missing and returns it (the reference `bridge`
    /// plugin's ensureBridge).
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        promisc: bool,
    ) -> Result<Link, NlError> {
        if let Some(l) = self.link_by_name(name).await? {
            if l.kind != "bridge" {
                return Err(NlError::Request {
                    op: format!("use {name} as bridge: it is a {:?} link", l.kind),
                    source: rtnetlink::Error::RequestFailed,
                });
            }
            if !l.up {
                self.set_up(l.index).await?;
            }
            return Ok(l);
        }
        // A fixed, locally administered MAC derived from the name: without
        // one the bridge takes the lowest port MAC, which changes as pods come
        // and go and leaves pods with a stale gateway neighbour entry.
        let h = cni_ebpf_common::owner_id(b"bridge", name.as_bytes()).to_be_bytes();
        let mac = vec![0x02, h[0], h[1], h[2], h[3], h[4]];
        let mut b = LinkBridge::new(name).address(mac);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if promisc {
            b = b.promiscuous(true);
        }
        match self.handle.link().add(b.up().build()).execute().await {
            Ok(()) => {}
            // A concurrent ADD created it first.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::EEXIST) => {}
            Err(e) => return Err(req(format!("create bridge {name}"))(e)),
        }
        let l = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| NlError::NoLink(name.into()))?;
        if !l.up {
            self.set_up(l.index).await?;
        }
        Ok(l)
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), NlError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("set link {index} up")))
    }

    /// Takes the veth called `name` out of service without deleting it: down,
    /// then renamed to [`tombstone_name`] (a link must be down to be
    /// renamed). Both are cheap, unlike deletion, which waits for RCU grace
    /// periods (15-50 ms); the name is free again at once. Returns the new
    /// name, or `None` if there is no such veth.
    pub async fn retire_veth(&self, name: &str) -> Result<Option<String>, NlError> {
        let Some(l) = self.link_by_name(name).await? else {
            return Ok(None);
        };
        if l.kind != "veth" {
            return Ok(None);
        }
        let tomb = tombstone_name(l.index);
        // The veth may vanish between the lookup and these requests: when
        // the pod's namespace is deleted, the kernel destroys the pair
        // asynchronously (cleanup_net). Gone is what DEL wants.
        let gone = |r: &Result<(), rtnetlink::Error>| matches!(r, Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV);
        let r = self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(l.index).down().build())
            .execute()
            .await;
        if gone(&r) {
            return Ok(None);
        }
        r.map_err(req(format!("set link {name} down")))?;
        let r = self
            .handle
            .link()
            .set(
                LinkUnspec::new_with_index(l.index)
                    .name(tomb.clone())
                    .build(),
            )
            .execute()
            .await;
        if gone(&r) {
            return Ok(None);
        }
        r.map_err(req(format!("rename link {name} to {tomb}")))?;
        Ok(Some(tomb))
    }

    /// Names of the retired veths of this namespace (GC sweeps those a
    /// reaper did not get to). Lists every link: GC only.
    pub async fn tombstones(&self) -> Result<Vec<String>, NlError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(req("list links"))? {
            let l = Link::from_msg(m);
            // Only what retire_veth renamed: its tombstone name carries the
            // link's own ifindex, so a veth that merely looks like one
            // (another tool's, an administrator's) is never deleted.
            if l.kind == "veth" && l.name == tombstone_name(l.index) {
                out.push(l.name);
            }
        }
        Ok(out)
    }

    /// Enslaves `index` to the bridge `master` (named `master_name` in errors).
    pub async fn set_master(
        &self,
        index: u32,
        master: u32,
        master_name: &str,
    ) -> Result<(), NlError> {
        match self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(master).build())
            .execute()
            .await
        {
            // br_add_if: no free port number left (find_portno).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EXFULL => {
                Err(NlError::BridgeFull {
                    bridge: master_name.to_string(),
                })
            }
            r => r.map_err(req(format!("set master of {index} to {master}"))),
        }
    }

    /// Sets hairpin mode on a bridge port.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NlError> {
        let msg = LinkUnspec::new_with_index(index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )]))
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(req(format!("set hairpin on port {index}")))
    }

    /// Deletes a link; a missing link is not an error.
    pub async fn del_link(&self, index: u32) -> Result<(), NlError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(())
            }
            Err(e) => Err(req(format!("delete link {index}"))(e)),
        }
    }

    /// Deletes the veth called `name` (its peer goes with it); no such link,
    /// or a link of another kind, is left alone.
    pub async fn del_veth(&self, name: &str) -> Result<(), NlError> {
        match self.link_by_name(name).await? {
            Some(l) if l.kind == "veth" => self.del_link(l.index).await,
            _ => Ok(()),
        }
    }

    /// Adds an address; an address already present is fine.
    pub async fn add_addr(&self, index: u32, net: IpNet) -> Result<(), NlError> {
        match self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(req(format!("add address {net} to link {index}"))(e)),
        }
    }

    /// Addresses of a link.
    pub async fn addrs(&self, index: u32) -> Result<Vec<IpNet>, NlError> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(req(format!("list addresses of {index}")))?
        {
            let prefix = m.header.prefix_len;
            for a in m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    if let Ok(n) = IpNet::new(ip, prefix) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every address in the namespace, with its link index.
    pub async fn all_addrs(&self) -> Result<Vec<(u32, IpNet)>, NlError> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(req("list addresses"))? {
            let (index, prefix) = (m.header.index, m.header.prefix_len);
            for a in m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    if let Ok(n) = IpNet::new(ip, prefix) {
                        out.push((index, n));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Links that hold a default route (IPv4 or IPv6) in the main table.
    pub async fn default_route_links(&self) -> Result<Vec<Link>, NlError> {
        let mut idx: Vec<u32> = Vec::new();
        let msgs = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for msg in msgs {
            let mut s = self.handle.route().get(msg).execute();
            while let Some(m) = s.try_next().await.map_err(req("list routes"))? {
                if m.header.destination_prefix_length != 0
                    || m.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                for a in &m.attributes {
                    if let RouteAttribute::Oif(i) = a {
                        if !idx.contains(i) {
                            idx.push(*i);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for i in idx {
            let mut s = self.handle.link().get().match_index(i).execute();
            if let Ok(Some(m)) = s.try_next().await {
                out.push(Link::from_msg(m));
            }
        }
        Ok(out)
    }

    /// Deletes every address of `index` that is in `nets`' family and differs
    /// from them (bridge `forceAddress`).
    pub async fn del_addr(&self, index: u32, net: IpNet) -> Result<(), NlError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(net.addr())
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(req(format!("find address {net}")))?
        {
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(req(format!("delete address {net}")))?;
        }
        Ok(())
    }

    /// Adds a route `dst` via `gw` (or on-link when `gw` is None) out of `oif`.
    /// An identical route already present is fine.
    pub async fn add_route(&self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<(), NlError> {
        let msg = match (dst, gw) {
            (IpNet::V4(d), gw) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(d.addr(), d.prefix_len())
                    .output_interface(oif);
                match gw {
                    Some(IpAddr::V4(g)) => b = b.gateway(g),
                    _ => b = b.scope(RouteScope::Link),
                }
                b.build()
            }
            (IpNet::V6(d), gw) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(d.addr(), d.prefix_len())
                    .output_interface(oif);
                if let Some(IpAddr::V6(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
        };
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(req(format!("add route {dst} via {gw:?} dev {oif}"))(e)),
        }
    }

    /// Whether `index` has a cls_bpf filter at clsact ingress and egress (CHECK).
    pub async fn has_bpf_filters(&self, index: u32) -> Result<(bool, bool), NlError> {
        let f = self.bpf_filters(index).await?;
        Ok((f.iter().any(|f| f.ingress), f.iter().any(|f| !f.ingress)))
    }

    /// The cls_bpf filters at clsact ingress and egress of `index`.
    pub async fn bpf_filters(&self, index: u32) -> Result<Vec<BpfFilter>, NlError> {
        use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
        let mut out = Vec::new();
        for ingress in [true, false] {
            let req_ = self.handle.traffic_filter(index as i32).get();
            let req_ = if ingress {
                req_.ingress()
            } else {
                req_.egress()
            };
            let mut s = req_.execute();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(req(format!("list tc filters of {index}")))?
            {
                if !m
                    .attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
                {
                    continue;
                }
                let mut f = BpfFilter {
                    ingress,
                    priority: (m.header.info >> 16) as u16,
                    protocol: m.header.info as u16,
                    handle: (u32::from(m.header.handle.major) << 16)
                        | u32::from(m.header.handle.minor),
                    ..Default::default()
                };
                for a in &m.attributes {
                    if let TcAttribute::Options(opts) = a {
                        for o in opts {
                            match o {
                                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.name = n.clone(),
                                TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => f.prog_id = *i,
                                _ => {}
                            }
                        }
                    }
                }
                // The dump also lists each priority once without a
                // program (what `tc filter show` prints as a bare line).
                if !f.name.is_empty() || f.prog_id != 0 {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }

    /// Every link of the namespace (inspect).
    pub async fn links(&self) -> Result<Vec<Link>, NlError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("list links"))? {
            out.push(Link::from_msg(m));
        }
        Ok(out)
    }

    /// Adds (or replaces) a permanent neighbour entry.
    pub async fn add_neigh(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), NlError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add neighbour {ip} on {index}")))
    }

    /// Deletes the neighbour entry for `ip` on `index`; none is fine. A
    /// missing entry only costs a new ARP/ND resolution, a stale one
    /// black-holes the address, so deleting is always safe.
    pub async fn del_neigh(&self, index: u32, ip: IpAddr) -> Result<(), NlError> {
        use rtnetlink::packet_route::{
            neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
            AddressFamily,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = index;
        let (family, addr) = match ip {
            IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
        };
        msg.header.family = family;
        msg.attributes.push(NeighbourAttribute::Destination(addr));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(
                    e.code.map(|c| -c.get()),
                    Some(libc::ENOENT) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(req(format!("delete neighbour {ip} on {index}"))(e)),
        }
    }

    /// Points the node's neighbour entry for `ip` on `index` at `mac`, if
    /// the node has one (reachable, so it still ages out): what a
    /// gratuitous ARP would teach the node. An address a deleted pod held
    /// may still be cached with that pod's MAC, which would black-hole the
    /// new pod until the entry is re-probed (seconds). No entry is created
    /// (`NLM_F_REPLACE` without `NLM_F_CREATE`): the kernel's neighbour
    /// table is shared by every namespace and small (`gc_thresh3`, 1024),
    /// and an entry per pod filled it at about 1,000 pods.
    pub async fn refresh_neigh(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), NlError> {
        use rtnetlink::{packet_core::NLM_F_REPLACE, packet_route::RouteNetlinkMessage};
        let mut b = self
            .handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Reachable);
        let msg = b.message_mut().clone();
        self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_REPLACE,
            &[libc::ENOENT],
            || format!("set neighbour {ip} on {index}"),
        )
        .await
    }

    /// Sends `msg` with `flags` and waits for the kernel's acknowledgement;
    /// an error code in `tolerated` counts as success.
    async fn ack(
        &self,
        msg: rtnetlink::packet_route::RouteNetlinkMessage,
        flags: u16,
        tolerated: &[i32],
        op: impl Fn() -> String,
    ) -> Result<(), NlError> {
        use futures_util::StreamExt;
        use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
        let mut request = NetlinkMessage::from(msg);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut resp = self.handle.clone().request(request).map_err(req(op()))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                match e.code.map(|c| -c.get()) {
                    None => {}
                    Some(c) if tolerated.contains(&c) => {}
                    Some(_) => return Err(req(op())(rtnetlink::Error::NetlinkError(e))),
                }
            }
        }
        Ok(())
    }

    /// Adds a clsact qdisc to `index`; one already there is fine.
    pub async fn add_clsact(&self, index: u32) -> Result<(), NlError> {
        use rtnetlink::{
            packet_core::{NLM_F_CREATE, NLM_F_EXCL},
            packet_route::{
                tc::{TcAttribute, TcHandle, TcMessage},
                RouteNetlinkMessage,
            },
        };
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::CLSACT;
        m.header.handle = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: 0,
        };
        m.attributes.push(TcAttribute::Kind("clsact".into()));
        self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &[libc::EEXIST],
            || format!("add clsact qdisc to {index}"),
        )
        .await
    }

    /// Attaches the program `prog_fd` (named `name`) as a direct-action
    /// cls_bpf filter at clsact ingress or egress of `index`, with our fixed
    /// `priority` and `handle`. With `replace`, a filter already at that
    /// priority and handle gets the new program in the same request (no
    /// packet sees the hook empty); without, that filter makes it fail
    /// (EEXIST). The one cls_bpf attach path of the plugin.
    #[allow(clippy::too_many_arguments, reason = "the fields of one tc request")]
    pub async fn add_bpf_filter(
        &self,
        index: u32,
        ingress: bool,
        prog_fd: BorrowedFd<'_>,
        name: &str,
        priority: u16,
        handle: u16,
        replace: bool,
    ) -> Result<(), NlError> {
        use rtnetlink::{
            packet_core::{NLM_F_CREATE, NLM_F_EXCL},
            packet_route::{
                tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
                RouteNetlinkMessage,
            },
        };
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: if ingress {
                TcHandle::MIN_INGRESS
            } else {
                TcHandle::MIN_EGRESS
            },
        };
        m.header.handle = TcHandle {
            major: 0,
            minor: handle,
        };
        // tcm_info: priority in the upper half, protocol ETH_P_ALL (network
        // order) in the lower, as tc(8) and aya set it.
        m.header.info = (u32::from(priority) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let dir = if ingress { "ingress" } else { "egress" };
        // tc_new_tfilter(): NLM_F_CREATE without NLM_F_EXCL changes the
        // filter found at (parent, priority, protocol, handle), or creates it.
        let flags = if replace {
            NLM_F_CREATE
        } else {
            NLM_F_CREATE | NLM_F_EXCL
        };
        self.ack(RouteNetlinkMessage::NewTrafficFilter(m), flags, &[], || {
            format!("attach {name} at {dir} of {index}")
        })
        .await
    }

    /// Deletes every cls_bpf filter at clsact ingress or egress of `index`
    /// whose program name is one of `names`; returns how many hooks had one.
    /// A missing device or qdisc is nothing to delete.
    pub async fn del_bpf_filters(&self, index: u32, names: &[&str]) -> Result<usize, NlError> {
        use rtnetlink::packet_route::{
            tc::{TcHandle, TcMessage},
            RouteNetlinkMessage,
        };
        let filters = match self.bpf_filters(index).await {
            Ok(f) => f,
            Err(NlError::Request {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            }) if matches!(
                e.code.map(|c| -c.get()),
                Some(libc::ENODEV) | Some(libc::EINVAL) | Some(libc::ENOENT)
            ) =>
            {
                return Ok(0)
            }
            Err(e) => return Err(e),
        };
        let mut hooks = Vec::new();
        for f in filters.iter().filter(|f| names.contains(&f.name.as_str())) {
            let mut m = TcMessage::with_index(index as i32);
            m.header.parent = TcHandle {
                major: TcHandle::CLSACT.major,
                minor: if f.ingress {
                    TcHandle::MIN_INGRESS
                } else {
                    TcHandle::MIN_EGRESS
                },
            };
            m.header.handle = TcHandle {
                major: (f.handle >> 16) as u16,
                minor: f.handle as u16,
            };
            m.header.info = (u32::from(f.priority) << 16) | u32::from(f.protocol);
            self.ack(
                RouteNetlinkMessage::DelTrafficFilter(m),
                0,
                &[libc::ENOENT, libc::ENODEV],
                || format!("delete filter {} of {index}", f.name),
            )
            .await?;
            if !hooks.contains(&(f.ingress, &f.name)) {
                hooks.push((f.ingress, &f.name));
            }
        }
        Ok(hooks.len())
    }
}

/// Prefix of retired veths (see [`Netlink::retire_veth`]).
pub const TOMBSTONE_PREFIX: &str = "cebz";

/// The name a retired link gets: unique per namespace, as its index is.
pub fn tombstone_name(index: u32) -> String {
    format!("{TOMBSTONE_PREFIX}{index:08x}")
}

/// Writes a sysctl under /proc/sys (for the calling thread's namespace).
pub fn sysctl(path: &str, value: &str) -> std::io::Result<()> {
    let p = format!("/proc/sys/{path}");
    match std::fs::read_to_string(&p) {
        Ok(cur) if cur.trim() == value => Ok(()),
        _ => std::fs::write(&p, value),
    }
}
