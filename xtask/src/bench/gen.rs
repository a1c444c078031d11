//! The traffic generator (`load.c`, compiled with gcc when the bench starts):
//! one process per run that forks its own server into the server namespace,
//! so any two paths can be alternated run by run.

use std::{net::SocketAddr, path::PathBuf, sync::OnceLock};

use crate::{
    demo::netns_path,
    sh::{workspace_root, Cmd, Result},
};

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Compiles the generator into `target/bench/cebload`.
pub fn build() -> Result {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let src = dir.join("load.c");
    std::fs::write(&src, include_str!("load.c")).map_err(|e| format!("write load.c: {e}"))?;
    let bin = dir.join("cebload");
    Cmd::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .run()?;
    let _ = BIN.set(bin);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// New TCP connections: connect, read 1 byte, close.
    Crr,
    /// TCP request/response, 64 bytes, one connection.
    Rr,
    /// UDP request/response, 64 bytes.
    Urr,
}

/// One run's output.
#[derive(Default, Clone, Copy, Debug)]
pub struct Out {
    /// Connections (Crr) or round trips completed.
    pub n: f64,
    pub secs: f64,
    /// Connections that took 1 s or more (a retransmitted SYN) or failed;
    /// UDP requests without an answer within 1 s.
    pub slow: f64,
    /// User + system CPU time of client and server (µs). The kernel here
    /// charges softirq work to the task it interrupts.
    pub cpu_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Out {
    pub fn rate(&self) -> f64 {
        self.n / self.secs
    }
}

/// Client in `client`, server (listening on `lport`) in `server`, dialling
/// `dst` for `secs`, both pinned to `cpu`.
pub fn run(
    mode: Mode,
    client: &str,
    server: &str,
    lport: u16,
    dst: SocketAddr,
    secs: f64,
    cpu: usize,
) -> Result<Out> {
    let bin = BIN.get().ok_or("generator not built")?;
    let m = match mode {
        Mode::Crr => "crr",
        Mode::Rr => "rr",
        Mode::Urr => "urr",
    };
    let out = Cmd::new(bin)
        .arg(m)
        .arg(netns_path(client))
        .arg(netns_path(server))
        .arg(lport.to_string())
        .arg(dst.ip().to_string())
        .arg(dst.port().to_string())
        .arg(format!("{secs}"))
        .arg(cpu.to_string())
        .quiet()
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{m} {client} -> {dst}: {} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            text.trim()
        )
        .into());
    }
    let num = |key: &str| -> f64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Out {
        n: num("n"),
        secs: num("secs"),
        slow: num("slow"),
        cpu_us: num("cpu_us"),
        p50_us: num("p50_us"),
        p99_us: num("p99_us"),
    })
}
