//! A minimal HTTP/1.1 server for `GET /metrics`, `/healthz` and `/readyz`:
//! one request per connection (`Connection: close`), a thread per
//! connection and at most [`MAX_CONNS`] at once, [`HEAD_DEADLINE`] in all to
//! send the request head. No dependency: Prometheus and the kubelet's probes are the only
//! clients.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use super::Shared;

/// Connections served at once; more are answered 503 at once.
pub const MAX_CONNS: usize = 8;

/// Binds `addr` and serves on a thread of its own.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let _ = respond(&mut c, 503, "text/plain", "busy\n", false);
                    continue;
                }
                let (s, b) = (shared.clone(), busy.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("http-conn".into())
                        .spawn(move || {
                            handle(&mut c, &s);
                            b.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(())
}

fn respond(
    c: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    c.write_all(&out)?;
    c.flush()
}

/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its whole request head: a client that trickles
/// it (a byte every few seconds) would otherwise hold one of the
/// [`MAX_CONNS`] slots for hours, and eight of them would answer the
/// kubelet's probes 503.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// Why a request head was not read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// More than [`MAX_HEAD`] bytes without an end.
    TooLarge,
    /// The deadline passed, or the connection ended or failed first.
    Incomplete,
}

/// Reads a request head (up to the blank line) within `deadline` in all.
fn read_head(c: &mut TcpStream, max: usize, deadline: Duration) -> Result<Vec<u8>, HeadError> {
    let until = std::time::Instant::now() + deadline;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || c.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Incomplete);
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(HeadError::Incomplete),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
    Ok(buf)
}

/// Reads the request head and answers it.
fn handle(c: &mut TcpStream, shared: &Shared) {
    let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
    let buf = match read_head(c, MAX_HEAD, HEAD_DEADLINE) {
        Ok(b) => b,
        Err(HeadError::TooLarge) => {
            let _ = respond(c, 400, "text/plain", "request too large\n", false);
            return;
        }
        Err(HeadError::Incomplete) => {
            let _ = respond(c, 408, "text/plain", "request timeout\n", false);
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(c, 405, "text/plain", "only GET\n", false);
        return;
    }
    let path = target.split('?').next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    let _ = match path {
        "/metrics" => respond(
            c,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &super::metrics::render(shared),
            head_only,
        ),
        "/healthz" => match super::metrics::healthz(shared) {
            Ok(()) => respond(c, 200, text, "ok\n", head_only),
            Err(e) => respond(c, 503, text, &format!("{e}\n"), head_only),
        },
        "/readyz" => match super::metrics::readyz(shared) {
            Ok(()) => respond(c, 200, text, "ready\n", head_only),
            Err(e) => respond(c, 503, text, &format!("{e}\n"), head_only),
        },
        "/" => respond(
            c,
            200,
            text,
            "cni-ebpf agent: /metrics /healthz /readyz\n",
            head_only,
        ),
        _ => respond(c, 404, text, "not found\n", head_only),
    };
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, time::Instant};

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_whole_head_in_pieces_is_read() {
        let (mut client, mut server) = pair();
        let t = std::thread::spawn(move || {
            for part in ["GET /metr", "ics HTTP/1.1\r\nHost: x\r\n", "\r\n"] {
                client.write_all(part.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            client
        });
        let head = read_head(&mut server, MAX_HEAD, Duration::from_secs(5)).unwrap();
        assert!(head.starts_with(b"GET /metrics HTTP/1.1\r\n"));
        drop(t.join());
    }

    #[test]
    fn a_trickling_client_gets_the_deadline_in_all_not_per_read() {
        let (mut client, mut server) = pair();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        // A byte every 50 ms: each read waits far less than the deadline.
        let t = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                if client.write_all(b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let r = read_head(&mut server, MAX_HEAD, Duration::from_millis(400));
        let took = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        assert_eq!(r, Err(HeadError::Incomplete));
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn an_endless_head_is_refused() {
        let (mut client, mut server) = pair();
        let t = std::thread::spawn(move || {
            let _ = client.write_all(&vec![b'a'; 20 * 1024]);
            client
        });
        assert_eq!(
            read_head(&mut server, MAX_HEAD, Duration::from_secs(5)),
            Err(HeadError::TooLarge)
        );
        drop(t.join());
    }
}
