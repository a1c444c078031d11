//! Map limits: floods of short TCP connections through a hostPort and
//! through masquerade, with a deliberately small `nat` map (`natMapEntries`)
//! and a tiny masquerade port range (`snatPortRange`), never break the
//! long-lived connections opened before them; what cannot be translated is
//! dropped with a counted reason, and the plugin keeps working afterwards.
//!
//! `CNI_EBPF_FLOOD` sets the connections per flood (default 100,000).

mod harness;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use harness::*;
use serde_json::{json, Value};

/// NAT map capacity under test: far fewer entries than flows in a flood.
const NAT_ENTRIES: u64 = 4096;
/// Masquerade ports under test.
const SNAT_RANGE: (u16, u16) = (40000, 40015);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn counter(t: &Topo, name: &str) -> u64 {
    t.inspect()["counters"]["node"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// An echo server (line by line) on `port` in `ns`, for the long-lived flows;
/// each connection gets its own thread.
fn echo_server(ns: &str, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        let mut w = c.try_clone().unwrap();
                        for line in BufReader::new(c).lines() {
                            let Ok(line) = line else { break };
                            if writeln!(w, "{line}").is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

/// Accepts and drops connections on `port` in `ns` (the floods' target)
/// until stopped; returns how many it accepted and the peers `expected`
/// refused.
fn sink(
    ns: &str,
    port: u16,
    stop: Arc<AtomicBool>,
    expected: fn(SocketAddr) -> bool,
) -> JoinHandle<(u64, Vec<SocketAddr>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let (mut n, mut bad) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((_, peer)) => {
                    n += 1;
                    if !expected(peer) {
                        bad.push(peer);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        (n, bad)
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

/// A single connection opened now from `ns` that exchanges a numbered line
/// every 20 ms until stopped; returns how many round trips worked, or the
/// first failure.
fn long_lived(ns: &str, dst: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Result<u64, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        tx.send(()).unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            writeln!(w, "ping {n}").map_err(|e| format!("{dst} write after {n}: {e}"))?;
            let mut line = String::new();
            r.read_line(&mut line)
                .map_err(|e| format!("{dst} read after {n}: {e}"))?;
            if line.trim() != format!("ping {n}") {
                return Err(format!("{dst}: answer {line:?} to ping {n}"));
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("long-lived connection not established");
    h
}

/// `count` short TCP connections from `ns` to `dst`, `batch` at a time
/// (nonblocking connects), each closed with a RST as soon as its handshake
/// completes, or after `wait` if it does not. Returns (completed, not).
fn flood(ns: &str, dst: SocketAddr, count: u64, batch: u64, wait: Duration) -> (u64, u64) {
    in_ns(ns, move || {
        let SocketAddr::V4(d) = dst else {
            panic!("IPv4 only")
        };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: d.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*d.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let (mut ok, mut failed, mut sent) = (0u64, 0u64, 0u64);
        while sent < count {
            let batch = (count - sent).min(batch);
            let mut socks: Vec<OwnedFd> = Vec::with_capacity(batch as usize);
            for _ in 0..batch {
                // SAFETY: plain socket(2); the fd is owned right away.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
                // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: valid fd, option and length of a `linger`.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                    libc::connect(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                }
                socks.push(fd);
            }
            sent += batch;
            let mut pfds: Vec<libc::pollfd> = socks
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let until = Instant::now() + wait;
            let mut done = 0;
            while done < pfds.len() && Instant::now() < until {
                // SAFETY: pfds is a valid array of pollfd of that length.
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
                done = pfds.iter().filter(|p| p.revents != 0).count();
            }
            for p in &pfds {
                // Connected means the kernel knows a peer (a refused or
                // timed-out connect has none).
                // SAFETY: sockaddr_storage is plain data; valid fd and lengths.
                let connected = unsafe {
                    let mut peer: libc::sockaddr_storage = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    libc::getpeername(
                        p.fd,
                        (&mut peer as *mut libc::sockaddr_storage).cast(),
                        &mut len,
                    ) == 0
                };
                if connected {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            // Dropping the fds closes them: a RST each (linger 0).
        }
        (ok, failed)
    })
    .join()
    .unwrap()
}

/// The `nat` map's capacity as the kernel reports it.
fn nat_max_entries(t: &Topo) -> u64 {
    let path = t.dir.join(t.abi_dir()).join("maps/nat");
    let out = sh(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        path.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["max_entries"].as_u64().unwrap()
}

#[test]
fn floods_keep_established_flows_and_count_what_they_drop() {
    let count: u64 = std::env::var("CNI_EBPF_FLOOD")
        .map(|v| v.parse().expect("CNI_EBPF_FLOOD: a number"))
        .unwrap_or(100_000);
    let t = Topo::new("flood");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({
        "ipMasq": true,
        "natMapEntries": NAT_ENTRIES,
        "snatPortRange": format!("{}-{}", SNAT_RANGE.0, SNAT_RANGE.1),
        "ipam": {"ranges": [[{"subnet": "10.50.0.0/24"}]]},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80},
            {"hostPort": 8090, "containerPort": 90},
        ]},
    }));
    t.add(&conf, "pod1", Some(&p1), "eth0");
    assert_eq!(
        nat_max_entries(&t),
        NAT_ENTRIES,
        "natMapEntries not applied"
    );
    // A client that opens many connections needs no TIME_WAIT reuse: each
    // flood connection ends with a RST.
    let stop = Arc::new(AtomicBool::new(false));
    let _pod_srv = echo_server(&p1, 80, stop.clone());
    let _ext_srv = echo_server(&t.ext, 9000, stop.clone());
    // The pod sees the real client; the outside sees the node's address
    // and a port of the masquerade range, never the pod.
    let pod_sink = sink(&p1, 90, stop.clone(), |p| p.ip() == ip(EXT_IP));
    let ext_sink = sink(&t.ext, 9090, stop.clone(), |p| {
        p.ip() == ip(NODE_IP) && (SNAT_RANGE.0..=SNAT_RANGE.1).contains(&p.port())
    });

    // Established before the floods, exchanging data throughout.
    let talk = Arc::new(AtomicBool::new(false));
    let via_hostport = long_lived(&t.ext, SocketAddr::new(ip(NODE_IP), 8080), talk.clone());
    let via_masq = long_lived(&p1, SocketAddr::new(ip(EXT_IP), 9000), talk.clone());

    // 1. hostPort: every connection gets a NAT entry; the map holds
    // NAT_ENTRIES of them, so the LRU evicts finished flows all along.
    let started = Instant::now();
    let (ok, failed) = flood(
        &t.ext,
        SocketAddr::new(ip(NODE_IP), 8090),
        count,
        64,
        Duration::from_millis(200),
    );
    let secs = started.elapsed().as_secs_f64();
    println!(
        "hostPort flood: {count} connections in {secs:.1}s ({:.0}/s): {ok} completed, {failed} not; nat map {} entries of {NAT_ENTRIES}",
        count as f64 / secs,
        t.inspect()["nat"].as_array().unwrap().len(),
    );
    assert!(
        ok * 10 >= count * 9,
        "most hostPort connections should complete: {ok} of {count}"
    );

    // 2. Masquerade with 16 ports: a port is taken until its flow is over,
    // so nearly every new flow finds none and its SYN is dropped and counted.
    // A pod at its share of the ports (half of 16) is refused before the
    // range is empty: both reasons count.
    let no_port = counter(&t, "drop_nat_no_port") + counter(&t, "drop_nat_pod_share");
    let masq_new = counter(&t, "nat_masq_new");
    let started = Instant::now();
    let (mok, mfailed) = flood(
        &p1,
        SocketAddr::new(ip(EXT_IP), 9090),
        count,
        // Most SYNs are dropped here: a short wait keeps the flood fast.
        256,
        Duration::from_millis(20),
    );
    let secs = started.elapsed().as_secs_f64();
    let dropped = counter(&t, "drop_nat_no_port") + counter(&t, "drop_nat_pod_share") - no_port;
    let new = counter(&t, "nat_masq_new") - masq_new;
    println!(
        "masquerade flood: {count} connections in {secs:.1}s ({:.0}/s): {mok} completed, {mfailed} not; \
         new masqueraded flows {new}, SYNs dropped for want of a port (drop_nat_no_port + drop_nat_pod_share) {dropped}",
        count as f64 / secs
    );
    assert!(dropped > 0, "port exhaustion must be counted");
    assert!(new > 0, "no masqueraded flow got through at all");
    assert!(mok > 0, "no masqueraded connection completed");

    // The long-lived flows survived both floods and still talk.
    std::thread::sleep(Duration::from_millis(300));
    talk.store(true, Ordering::SeqCst);
    let a = via_hostport.join().unwrap().expect("hostPort flow broke");
    let b = via_masq.join().unwrap().expect("masqueraded flow broke");
    println!("long-lived flows: {a} round trips via the hostPort, {b} masqueraded");
    assert!(
        a > 10 && b > 10,
        "the long-lived flows hardly talked: {a}, {b}"
    );

    // New flows work once ports are free again (a closed flow's port is
    // reusable after NAT_CLOSED_REUSE_NS).
    std::thread::sleep(Duration::from_nanos(
        cni_ebpf_common::NAT_CLOSED_REUSE_NS + 500_000_000,
    ));
    let again = in_ns(&p1, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(ip(EXT_IP), 9000), Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
        s.write_all(b"again\n").map_err(|e| e.to_string())?;
        let mut b = [0u8; 6];
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&b).into_owned())
    })
    .join()
    .unwrap();
    assert_eq!(again.as_deref(), Ok("again\n"), "new masqueraded flow");

    // The plugin keeps working: a new pod with its own hostPort.
    let p2 = t.pod("p2");
    let c2 = merged(
        &conf,
        json!({"runtimeConfig": {"portMappings": [{"hostPort": 8081, "containerPort": 81}]}}),
    );
    t.add(&c2, "pod2", Some(&p2), "eth0");
    let _s2 = TcpServer::start(&p2, "0.0.0.0", 81, "pod2");
    let line = tcp_get(&t.ext, ip(NODE_IP), 8081).expect("new pod after the floods");
    assert!(line.starts_with("pod2 "), "{line}");
    stop.store(true, Ordering::SeqCst);
    let (hn, hbad) = pod_sink.join().unwrap();
    let (mn, mbad) = ext_sink.join().unwrap();
    println!("servers accepted {hn} hostPort and {mn} masqueraded flood connections");
    assert!(
        hbad.is_empty(),
        "hostPort peers not the client: {:?}",
        &hbad[..hbad.len().min(10)]
    );
    assert!(
        mbad.is_empty(),
        "masqueraded peers not node:range: {:?}",
        &mbad[..mbad.len().min(10)]
    );
    assert!(hn * 10 >= count * 9, "hostPort server accepted only {hn}");
    t.del(&c2, "pod2", Some(&p2), "eth0");
    t.del(&conf, "pod1", Some(&p1), "eth0");
}

/// A TCP connection from source port `sport` (IPv4), with a connect timeout.
fn connect_from(sport: u16, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(d) = dst else {
        panic!("IPv4 only")
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    let (src, dst) = (
        sin(std::net::Ipv4Addr::UNSPECIFIED, sport),
        sin(*d.ip(), d.port()),
    );
    // SAFETY: valid fd; option values and addresses with their sizes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        // SO_SNDTIMEO bounds a blocking connect.
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::bind(
            fd.as_raw_fd(),
            (&src as *const libc::sockaddr_in).cast(),
            len,
        ) != 0
        {
            -1
        } else {
            libc::connect(
                fd.as_raw_fd(),
                (&dst as *const libc::sockaddr_in).cast(),
                len,
            )
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpStream::from(fd))
}

/// One line there and back on `s`.
fn echo_once(s: &mut TcpStream, text: &str) -> Result<(), String> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    writeln!(s, "{text}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() == text {
        Ok(())
    } else {
        Err(format!("answer {line:?}"))
    }
}

/// Closes with a RST (linger 0): the flow is over at once, no TIME_WAIT.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, option and length of a `linger`.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// With a single masquerade port: flow X ends, flow Y takes the port over
/// (which discards X's forward entry), then a new connection from X's tuple
/// must not go out through X's old entry (its replies would reach Y's
/// socket): it needs a port of its own, finds none while Y lives (dropped,
/// counted), and gets one once Y is over; Y is undisturbed.
#[test]
fn an_old_tuple_does_not_reuse_a_port_taken_over() {
    let t = Topo::new("takeover");
    let p1 = t.pod("p1");
    let conf = t.conf(json!({
        "ipMasq": true,
        "snatPortRange": "40100-40100",
        "ipam": {"ranges": [[{"subnet": "10.51.0.0/24"}]]},
    }));
    t.add(&conf, "pod1", Some(&p1), "eth0");
    let stop = Arc::new(AtomicBool::new(false));
    let _srv = echo_server(&t.ext, 9000, stop.clone());
    let dst = SocketAddr::new(ip(EXT_IP), 9000);
    let wait_reuse =
        Duration::from_nanos(cni_ebpf_common::NAT_CLOSED_REUSE_NS) + Duration::from_millis(300);
    let y = in_ns(&p1, move || {
        let mut x = connect_from(50000, dst, Duration::from_secs(2)).expect("flow X");
        echo_once(&mut x, "x").expect("flow X talks");
        reset(x);
        std::thread::sleep(wait_reuse);
        let mut y =
            connect_from(50001, dst, Duration::from_secs(3)).expect("flow Y takes the port");
        echo_once(&mut y, "y").expect("flow Y talks");
        y
    })
    .join()
    .unwrap();
    // X's tuple again, while Y holds the only port.
    let no_port0 = counter(&t, "drop_nat_no_port");
    let (outcome, y_after) = in_ns(&p1, move || {
        let mut y = y;
        let again = connect_from(50000, dst, Duration::from_secs(2));
        let y_after = echo_once(&mut y, "y2");
        reset(y);
        (again.map(|_| ()).map_err(|e| e.to_string()), y_after)
    })
    .join()
    .unwrap();
    let no_port = counter(&t, "drop_nat_no_port") - no_port0;
    println!("old tuple while the port is taken: {outcome:?}; drop_nat_no_port +{no_port}");
    assert!(
        outcome.is_err(),
        "connected although the only port is taken"
    );
    assert!(
        no_port > 0,
        "the old tuple's SYN was not dropped for want of a port"
    );
    y_after.expect("flow Y undisturbed");

    // Y over: X's tuple gets the port.
    let again = in_ns(&p1, move || {
        std::thread::sleep(wait_reuse);
        let mut x = connect_from(50000, dst, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        echo_once(&mut x, "x again")
    })
    .join()
    .unwrap();
    again.expect("X's tuple once the port is free");
    stop.store(true, Ordering::SeqCst);
    t.del(&conf, "pod1", Some(&p1), "eth0");
}
