//! A minimal HTTP/1.1 server for `GET /metrics`, `/healthz` and `/readyz`:
//! one request per connection (`Connection: close`), a thread per
//! connection and at most [`MAX_CONNS`] at once, a few seconds to send the
//! request. No dependency: Prometheus and the kubelet's probes are the only
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

/// Reads the request head (up to 16 KiB) and answers it.
fn handle(c: &mut TcpStream, shared: &Shared) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            let _ = respond(c, 400, "text/plain", "request too large\n", false);
            return;
        }
    }
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
