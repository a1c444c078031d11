//! `cni-ebpf monitor`: streams data-path events (drops with their reason, new
//! translations) from the pinned ring buffer until interrupted.
//!
//! The programs write events only while the `monitor` map holds a level, so
//! a node without a running monitor pays one array lookup per drop or new
//! flow and nothing per packet. The monitor sets the level on start and
//! puts the previous one back on exit (SIGINT, SIGTERM, or `--count`).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use cni_ebpf_common::{event_kind, monitor as level, Counter, Event, EVENT_HEAD, FAMILY_V4};
use serde_json::{json, Value};

use crate::{datapath::proto_name, datapath::Datapath};

/// What to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    /// Dropped packets with their reason.
    Drops,
    /// Drops and every new translated flow.
    Flows,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Runs the monitor; returns the exit code.
pub fn run(pin_path: &Path, state_dir: &Path, lvl: Level, json: bool, count: Option<u64>) -> i32 {
    let dp = Datapath::layout(pin_path);
    let mut rb = match dp.events() {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "cannot open the event ring buffer under {}: {} (has a pod been added on this node?)",
                pin_path.display(),
                crate::cni::error::chain(&e)
            );
            return 1;
        }
    };
    let want = match lvl {
        Level::Drops => level::DROPS,
        Level::Flows => level::FLOWS,
    };
    let prev = match dp.set_monitor_level(want) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "cannot set the monitor level: {}",
                crate::cni::error::chain(&e)
            );
            return 1;
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let veths = host_veths(state_dir);
    let clock = Clock::now();
    let mut seen = 0u64;
    'outer: while !STOP.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: rb.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 200) };
        while let Some(item) = rb.next() {
            if item.len() < std::mem::size_of::<Event>() {
                continue;
            }
            // SAFETY: the programs write whole `Event`s; read unaligned.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let v = describe(&ev, &clock, &veths);
            if json {
                println!("{v}");
            } else {
                println!("{}", line(&v));
            }
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                break 'outer;
            }
        }
    }
    if let Err(e) = dp.set_monitor_level(prev) {
        eprintln!(
            "cannot restore the monitor level: {}",
            crate::cni::error::chain(&e)
        );
        return 1;
    }
    0
}

/// Host veth name -> "container/ifname", from the state records.
fn host_veths(state_dir: &Path) -> HashMap<String, String> {
    crate::state::owners(state_dir)
        .into_values()
        .map(|r| {
            (
                r.host_veth.clone(),
                format!("{}/{}", r.container_id, r.ifname),
            )
        })
        .collect()
}

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time.
struct Clock {
    wall: SystemTime,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Self {
            wall: SystemTime::now(),
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    /// Seconds since the epoch, with microseconds.
    fn at(&self, ktime: u64) -> f64 {
        let wall = if ktime >= self.mono_ns {
            self.wall + Duration::from_nanos(ktime - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - ktime)
        };
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

fn ifname(index: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return format!("if{index}");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The event as JSON (the `--json` output, one object per line).
fn describe(ev: &Event, clock: &Clock, veths: &HashMap<String, String>) -> Value {
    let reason = Counter::ALL
        .get(ev.reason as usize)
        .map_or("unknown", |(_, n)| *n);
    let dev = ifname(ev.ifindex);
    let mut v = json!({
        "time": clock.at(ev.ktime),
        "reason": reason,
        "ifindex": ev.ifindex,
        "ifname": dev,
        "container": veths.get(&dev).cloned().unwrap_or_default(),
    });
    if ev.kind == event_kind::FLOW {
        let f = &ev.flow;
        let (sp, dp) = (u16::from_be(f.sport), u16::from_be(f.dport));
        v["kind"] = "flow".into();
        v["proto"] = proto_name(f.proto).into();
        v["src"] = endpoint(addr(f.family, &f.saddr), sp).into();
        v["dst"] = endpoint(addr(f.family, &f.daddr), dp).into();
        v["toSrc"] = endpoint(addr(f.family, &ev.to_saddr), u16::from_be(ev.to_sport)).into();
        v["toDst"] = endpoint(addr(f.family, &ev.to_daddr), u16::from_be(ev.to_dport)).into();
    } else {
        v["kind"] = "drop".into();
        v["len"] = ev.len.into();
        let head = &ev.head[..usize::from(ev.head_len).min(EVENT_HEAD)];
        if let Some(h) = headers(head) {
            for (k, x) in h {
                v[k] = x;
            }
        }
    }
    v
}

/// What the first bytes of a dropped frame say: MACs, EtherType, addresses,
/// protocol and ports where present.
fn headers(b: &[u8]) -> Option<Vec<(&'static str, Value)>> {
    let mac = |m: &[u8]| {
        m.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let eth = b.get(..14)?;
    let mut out = vec![("srcMac", mac(&eth[6..12]).into())];
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    out.push(("ethertype", format!("0x{ethertype:04x}").into()));
    let l3 = &b[14..];
    let (src, dst, proto, l4) = match ethertype {
        0x0800 if l3.len() >= 20 => {
            let ihl = usize::from(l3[0] & 0x0f) * 4;
            (
                IpAddr::from(<[u8; 4]>::try_from(&l3[12..16]).ok()?),
                IpAddr::from(<[u8; 4]>::try_from(&l3[16..20]).ok()?),
                l3[9],
                l3.get(ihl..),
            )
        }
        0x86dd if l3.len() >= 40 => (
            IpAddr::from(<[u8; 16]>::try_from(&l3[8..24]).ok()?),
            IpAddr::from(<[u8; 16]>::try_from(&l3[24..40]).ok()?),
            l3[6],
            l3.get(40..),
        ),
        0x0806 if l3.len() >= 28 => {
            out.push(("proto", "arp".into()));
            out.push(("senderMac", mac(&l3[8..14]).into()));
            out.push((
                "src",
                IpAddr::from(<[u8; 4]>::try_from(&l3[14..18]).ok()?)
                    .to_string()
                    .into(),
            ));
            out.push((
                "dst",
                IpAddr::from(<[u8; 4]>::try_from(&l3[24..28]).ok()?)
                    .to_string()
                    .into(),
            ));
            return Some(out);
        }
        _ => return Some(out),
    };
    out.push(("proto", proto_name(proto).into()));
    match l4.filter(|l| l.len() >= 4 && matches!(proto, 6 | 17 | 132)) {
        Some(l) => {
            let sp = u16::from_be_bytes([l[0], l[1]]);
            let dp = u16::from_be_bytes([l[2], l[3]]);
            out.push(("src", endpoint(src, sp).into()));
            out.push(("dst", endpoint(dst, dp).into()));
        }
        None => {
            out.push(("src", src.to_string().into()));
            out.push(("dst", dst.to_string().into()));
        }
    }
    Some(out)
}

/// One human-readable line of an event.
fn line(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let secs = v["time"].as_f64().unwrap_or(0.0);
    let t = format!(
        "{:02}:{:02}:{:09.6}",
        (secs / 3600.0) as u64 % 24,
        (secs / 60.0) as u64 % 60,
        secs % 60.0
    );
    let who = match s("container") {
        c if c.is_empty() => s("ifname"),
        c => format!("{} ({c})", s("ifname")),
    };
    if s("kind") == "flow" {
        format!(
            "{t} flow {} {who} {} {} -> {} => {} -> {}",
            s("reason"),
            s("proto"),
            s("src"),
            s("dst"),
            s("toSrc"),
            s("toDst")
        )
    } else {
        format!(
            "{t} drop {} {who} {} {} -> {} src mac {} len {}",
            s("reason"),
            s("proto"),
            s("src"),
            s("dst"),
            s("srcMac"),
            v["len"]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_frames_are_decoded() {
        // Ethernet + IPv4 + UDP, 10.6.0.200:5000 -> 192.0.2.2:9999.
        let mut b = vec![0u8; 42];
        b[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        b[12..14].copy_from_slice(&[0x08, 0x00]);
        b[14] = 0x45;
        b[14 + 9] = 17;
        b[26..30].copy_from_slice(&[10, 6, 0, 200]);
        b[30..34].copy_from_slice(&[192, 0, 2, 2]);
        b[34..36].copy_from_slice(&5000u16.to_be_bytes());
        b[36..38].copy_from_slice(&9999u16.to_be_bytes());
        let h: HashMap<&str, Value> = headers(&b).unwrap().into_iter().collect();
        assert_eq!(h["src"], "10.6.0.200:5000");
        assert_eq!(h["dst"], "192.0.2.2:9999");
        assert_eq!(h["proto"], "udp");
        assert_eq!(h["srcMac"], "02:00:00:00:00:01");
        // Truncated: what there is.
        assert_eq!(headers(&b[..20]).unwrap().len(), 2);
        assert!(headers(&b[..10]).is_none());
    }
}
