//! What the bench reads and resets around its figures: load and steal time,
//! per-namespace sysctls, conntrack and the plugin's `nat` map, and the
//! eBPF programs' run-time statistics.

use std::{
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    thread,
};

use crate::{
    demo::{enter_netns, netns_path},
    sh::{Cmd, Result},
};

/// 1-minute load average.
pub fn loadavg1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// (steal, total) jiffies of all CPUs (`cpu` line of `/proc/stat`).
fn cpu_times() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal guest guest_nice;
    // guest time is already counted in user.
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.get(7).copied().unwrap_or(0), v.iter().sum())
}

/// The machine's condition over one run: load average at its start and the
/// share of CPU time stolen by the hypervisor during it.
pub struct Probe {
    load1: f64,
    cpu: (u64, u64),
}

impl Probe {
    pub fn start() -> Self {
        Probe {
            load1: loadavg1(),
            cpu: cpu_times(),
        }
    }

    /// (load average at the start, steal % over the run).
    pub fn done(&self) -> (f64, f64) {
        let (steal, total) = cpu_times();
        let dt = total.saturating_sub(self.cpu.1);
        let pct = if dt == 0 {
            0.0
        } else {
            100.0 * steal.saturating_sub(self.cpu.0) as f64 / dt as f64
        };
        (self.load1, pct)
    }
}

/// Writes a per-namespace sysctl (`net.ipv4.tcp_tw_reuse`) in `ns`: the
/// `/proc/sys/net` files belong to the namespace of the thread that opens
/// them.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let (ns2, value2) = (ns.to_string(), value.to_string());
    thread::spawn(move || -> std::io::Result<()> {
        enter_netns(&ns2)?;
        std::fs::write(&path, value2)
    })
    .join()
    .map_err(|_| "sysctl thread panicked")?
    .map_err(|e| format!("sysctl {key}={value} in {ns}: {e}").into())
}

/// The client settings every client namespace gets: reuse of TIME_WAIT ports
/// and a wide ephemeral range, so TIME_WAIT never decides a figure.
pub fn tune_client(ns: &str) -> Result {
    sysctl_in(ns, "net.ipv4.tcp_tw_reuse", "1")?;
    sysctl_in(ns, "net.ipv4.ip_local_port_range", "1024 65535")?;
    // ... but never the servers' ports: a client's TIME_WAIT socket on one
    // (bound without SO_REUSEADDR) would stop the next server's bind.
    sysctl_in(ns, "net.ipv4.ip_local_reserved_ports", super::SERVER_PORTS)?;
    // A lost SYN retransmitted twice at most: a connection that cannot be
    // made fails within 7 s instead of two minutes.
    sysctl_in(ns, "net.ipv4.tcp_syn_retries", "2")
}

/// Flushes conntrack in `ns`.
pub fn flush_conntrack(ns: &str) {
    let _ = Cmd::new("conntrack")
        .arg("-F")
        .netns(netns_path(ns))
        .quiet()
        .output();
}

fn bpf(cmd: i32, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: `attr` is a zero-padded 128-byte bpf_attr for `cmd`; the
    // pointers it holds (set by the callers) outlive the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128) }
}

const BPF_MAP_DELETE_ELEM: i32 = 3;
const BPF_MAP_GET_NEXT_KEY: i32 = 4;
const BPF_OBJ_GET: i32 = 7;
const BPF_OBJ_GET_INFO_BY_FD: i32 = 15;
const BPF_ENABLE_STATS: i32 = 32;

fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "path with a NUL")?;
    let mut a = [0u64; 16];
    a[0] = c.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut a);
    if fd < 0 {
        return Err(format!(
            "BPF_OBJ_GET {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )
        .into());
    }
    // SAFETY: a new file descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pinned maps called `name` under a plugin's bpffs (`<pin>/v*/maps/name`).
fn pinned(pin: &Path, sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for v in std::fs::read_dir(pin).into_iter().flatten().flatten() {
        let p = v.path().join(sub);
        if p.exists() {
            out.push(p);
        }
    }
    out
}

/// Deletes every entry of the plugin's `nat` map(s) under `pin`; returns
/// how many there were.
pub fn clear_nat(pin: &Path) -> Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n = 0;
    for path in pinned(pin, "maps/nat") {
        let fd = obj_get(&path)?;
        // bpf_map_info: type, id, key_size, value_size, ...
        let mut info = [0u32; 32];
        let mut a = [0u64; 16];
        a[0] = fd.as_raw_fd() as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
        a[1] = info.as_mut_ptr() as u64;
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a) != 0 {
            return Err(format!("map info {}", path.display()).into());
        }
        let ks = info[2] as usize;
        // Collect the keys first (get_next_key from a deleted key restarts).
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cur: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; ks];
            let mut a = [0u64; 16];
            a[0] = fd.as_raw_fd() as u64;
            a[1] = cur.as_ref().map_or(0, |k| k.as_ptr() as u64);
            a[2] = next.as_mut_ptr() as u64;
            if bpf(BPF_MAP_GET_NEXT_KEY, &mut a) != 0 {
                break;
            }
            keys.push(next.clone());
            cur = Some(next);
        }
        for k in &keys {
            let mut a = [0u64; 16];
            a[0] = fd.as_raw_fd() as u64;
            a[1] = k.as_ptr() as u64;
            if bpf(BPF_MAP_DELETE_ELEM, &mut a) == 0 {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// eBPF run-time statistics on for as long as this lives (`BPF_ENABLE_STATS`:
/// the kernel counts it with `kernel.bpf_stats_enabled`, never writes the
/// sysctl, and turns the statistics back off when the descriptor closes, also
/// when the bench is killed).
pub struct BpfStats(#[allow(dead_code)] OwnedFd);

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let mut a = [0u64; 16];
        // type = BPF_STATS_RUN_TIME (0)
        let fd = bpf(BPF_ENABLE_STATS, &mut a);
        if fd < 0 {
            return Err(format!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error()).into());
        }
        // SAFETY: a new file descriptor the kernel just returned.
        Ok(BpfStats(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// (program, run_time_ns, run_cnt) of every TC program pinned under `pin`
/// (`bpftool prog show pinned`).
pub fn prog_stats(pin: &Path) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for progs in pinned(pin, "progs") {
        for build in std::fs::read_dir(progs).into_iter().flatten().flatten() {
            for name in ["from_container", "to_container", "from_netdev", "to_netdev"] {
                let p = build.path().join(name);
                if !p.exists() {
                    continue;
                }
                let js = Cmd::new("bpftool")
                    .args(["-j", "prog", "show", "pinned"])
                    .arg(&p)
                    .quiet()
                    .read()
                    .unwrap_or_default();
                let num = |key: &str| -> u64 {
                    js.find(key)
                        .map(|i| {
                            js[i + key.len()..]
                                .chars()
                                .take_while(|c| c.is_ascii_digit())
                                .collect::<String>()
                        })
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                };
                out.push((
                    name.to_string(),
                    num("\"run_time_ns\":"),
                    num("\"run_cnt\":"),
                ));
            }
        }
    }
    out
}
