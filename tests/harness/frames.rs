//! Raw frames for the data-path tests: AF_PACKET sockets inside a
//! namespace, sending crafted frames from a pod and capturing what arrives.

use std::time::Duration;

use serde_json::Value;

use super::in_ns;

/// The MAC of the pod interface an ADD result names.
pub fn pod_mac(r: &Value) -> [u8; 6] {
    let s = r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_string())
        .unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Opens an AF_PACKET socket in the current netns bound to `ifname`.
pub fn packet_socket(ifname: &str, proto: u16) -> (i32, libc::sockaddr_ll) {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain socket syscalls on a fresh descriptor with a zeroed,
    // fully initialised sockaddr_ll.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be()));
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        sll.sll_halen = 6;
        assert!(sll.sll_ifindex > 0, "no {ifname}");
        (fd, sll)
    }
}

/// Sends raw frames from `ifname` in `ns`.
pub fn send_frames(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) {
    let ifname = ifname.to_string();
    in_ns(ns, move || {
        let (fd, sll) = packet_socket(&ifname, 0);
        for f in &frames {
            // SAFETY: `f` and `sll` outlive the call; lengths are theirs.
            let n = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    std::ptr::addr_of!(sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
    })
    .join()
    .unwrap();
}

/// Captures every frame on `ifname` in `ns` for `window` (the capture is
/// running when this returns) and keeps what `pick` makes of each.
pub fn capture<T: Send + 'static>(
    ns: &str,
    ifname: &str,
    window: Duration,
    mut pick: impl FnMut(&[u8]) -> Option<T> + Send + 'static,
) -> std::thread::JoinHandle<Vec<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ifname = ifname.to_string();
    let h = in_ns(ns, move || {
        let (fd, sll) = packet_socket(&ifname, libc::ETH_P_ALL as u16);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid descriptor, option value and sockaddr of the right sizes.
        unsafe {
            assert_eq!(
                libc::bind(
                    fd,
                    std::ptr::addr_of!(sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32
                ),
                0
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        tx.send(()).unwrap();
        let mut seen = Vec::new();
        let end = std::time::Instant::now() + window;
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < end {
            // SAFETY: `buf` is writable for its whole length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            seen.extend(pick(&buf[..n as usize]));
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        seen
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("capture did not start");
    h
}

/// Captures on `ifname` in `ns` for `window`: the markers (`SPOOFnn`) seen.
pub fn capture_markers(
    ns: &str,
    ifname: &str,
    window: Duration,
) -> std::thread::JoinHandle<Vec<String>> {
    capture(ns, ifname, window, |f| {
        let i = f.windows(5).position(|w| w == b"SPOOF")?;
        Some(String::from_utf8_lossy(f.get(i..i + 7)?).into_owned())
    })
}
