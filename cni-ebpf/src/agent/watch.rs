//! rtnetlink events of the node's namespace: a `NETLINK_ROUTE` socket
//! subscribed to the link, IPv4/IPv6 address and route multicast groups.
//! The agent does not decode the messages: any of them means "the node may
//! have changed", and one resync (two dumps) answers a whole burst.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// The subscribed socket.
pub struct Events {
    fd: OwnedFd,
}

impl Events {
    /// Subscribes in the calling thread's network namespace.
    pub fn subscribe() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = GROUPS;
        // SAFETY: `sa` is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // A large buffer: a burst of pod churn should not overflow it (and
        // an overflow only costs a resync).
        let size: libc::c_int = 4 << 20;
        // SAFETY: valid option value pointer and size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(Self { fd })
    }

    /// Waits up to `timeout` for events; then reads every pending message.
    /// Returns how many messages (an overflow counts as one: something
    /// changed). Interrupted by a signal: `Ok(0)`.
    pub fn wait(&self, timeout: Duration) -> io::Result<usize> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(0);
        }
        self.drain()
    }

    /// Reads whatever is pending without blocking.
    pub fn drain(&self) -> io::Result<usize> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(n),
                    Some(libc::EINTR) => continue,
                    // The kernel dropped messages: resync anyway.
                    Some(libc::ENOBUFS) => n += 1,
                    _ => return Err(e),
                }
            } else if r == 0 {
                return Ok(n);
            } else {
                n += 1;
            }
        }
    }
}
