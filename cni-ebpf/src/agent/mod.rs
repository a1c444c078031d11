//! `cni-ebpf agent`: the DaemonSet's long-running container. The plugin
//! works without it; with it the node gets what a short-lived binary cannot
//! do between calls:
//!
//! - `node_addrs` and the uplink attachments follow rtnetlink address, link
//!   and route events within a second (watch.rs), and ADD skips its own
//!   node-wide dumps while the agent holds its lease (lease.rs);
//! - lost pins are re-created and recorded endpoints re-attached (the
//!   repair of commands/repair.rs) as soon as a check notices them gone;
//!   dead `nat` entries are pruned periodically;
//! - Prometheus metrics, `/healthz` and `/readyz` over HTTP (http.rs,
//!   metrics.rs).
//!
//! It owns nothing of the data path: every program, link and map is pinned,
//! so SIGTERM (or a crash, an upgrade) ends the process and nothing else.

pub mod http;
pub mod lease;
pub mod metrics;
pub mod watch;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    commands::repair,
    config::NetConf,
    datapath::{Datapath, NodeSettings},
    info, warn,
};

/// Default metrics and probe address: the node's loopback only.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9641";

/// `cni-ebpf agent` options.
#[derive(clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    conf: crate::repair_cli::ConfArgs,
    /// Address and port of the metrics (/metrics) and probe (/healthz,
    /// /readyz) HTTP server; `0.0.0.0:9641` for a Prometheus outside the node.
    #[arg(long, default_value = DEFAULT_METRICS_ADDRESS)]
    metrics_address: SocketAddr,
    /// Seconds between two prunes of dead `nat` entries.
    #[arg(long, default_value_t = 60)]
    nat_prune_interval: u64,
    /// Seconds between two full resyncs when no event came (a safety net).
    #[arg(long, default_value_t = 30)]
    resync_interval: u64,
    /// `text` or `json` (default: the config's `logFormat`).
    #[arg(long)]
    log_format: Option<String>,
}

/// Counters and health of the agent's loop, shared with the HTTP server.
#[derive(Default)]
pub struct Stats {
    /// Netlink messages seen.
    pub events: AtomicU64,
    /// Node address and uplink syncs done.
    pub syncs: AtomicU64,
    /// Syncs that failed.
    pub sync_errors: AtomicU64,
    /// Repairs run (lost pins or endpoints).
    pub repairs: AtomicU64,
    /// `nat` entries pruned.
    pub nat_pruned: AtomicU64,
    /// Last sync's duration, nanoseconds.
    pub last_sync_ns: AtomicU64,
}

/// What the HTTP side reads.
pub struct Shared {
    /// The network the agent follows.
    pub conf: NetConf,
    /// Counters.
    pub stats: Stats,
    /// When the loop last went round.
    pub heartbeat: Mutex<Instant>,
    /// The last sync's error, if it failed.
    pub last_error: Mutex<Option<String>>,
    /// When the agent started.
    pub started: std::time::SystemTime,
}

/// The loop counts as hung after this long without a pass (`/healthz`).
pub const HUNG_AFTER: Duration = Duration::from_secs(15);

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig as u64, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

fn install_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to atomics (async-signal-safe);
        // no SA_RESTART, so a blocking poll returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn settings(conf: &NetConf) -> NodeSettings<'_> {
    repair::node_settings(conf, false)
}

/// Runs the agent until SIGTERM; returns the exit code.
pub fn run(a: &AgentArgs) -> i32 {
    install_signals();
    // The config may name files that appear later (flannel's subnet.env):
    // wait for it rather than crash-loop; /healthz is not served yet, so a
    // wait that never ends shows as a failing probe.
    let mut said = String::new();
    let (conf, raw) = loop {
        match a.conf.net_conf() {
            Ok(c) => break c,
            Err(e) => {
                if e != said {
                    eprintln!("cni-ebpf agent: {e} (retrying every 2 s)");
                    said = e;
                }
                if STOP.load(Ordering::SeqCst) {
                    return 2;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    let obj = raw.as_object().cloned().unwrap_or_default();
    let (file, level) =
        crate::config::log_settings(&obj).unwrap_or((None, crate::log::Level::default()));
    crate::log::init(file.as_deref(), level);
    crate::log::also_stderr();
    let format = match &a.log_format {
        Some(f) => crate::log::Format::parse(f),
        None => crate::config::log_format(&obj).ok(),
    };
    match format {
        Some(f) => crate::log::set_format(f),
        None => {
            eprintln!("cni-ebpf agent: --log-format: want text or json");
            return 2;
        }
    }
    crate::log::set_prefix("agent".into());

    // Subscribe first: a change during the first sync is not missed.
    let events = match watch::Events::subscribe() {
        Ok(e) => e,
        Err(e) => {
            crate::log::write(
                crate::log::Level::Error,
                format_args!("subscribe to rtnetlink events: {e}"),
            );
            return 1;
        }
    };
    let dp = match repair::open(&conf) {
        Ok(dp) => dp,
        Err(e) => {
            crate::log::write(
                crate::log::Level::Error,
                format_args!("open the data path: {}: {}", e.msg, e.details),
            );
            return 1;
        }
    };
    let shared = Arc::new(Shared {
        conf,
        stats: Stats::default(),
        heartbeat: Mutex::new(Instant::now()),
        last_error: Mutex::new(None),
        started: std::time::SystemTime::now(),
    });
    let conf = &shared.conf;
    sync(&dp, &shared);
    let netns_cookie = match crate::datapath::netns_cookie() {
        Ok(c) => c,
        Err(e) => {
            crate::log::write(
                crate::log::Level::Error,
                format_args!("read the network namespace's cookie: {e}"),
            );
            return 1;
        }
    };
    let lease = lease::Lease {
        pid: std::process::id(),
        pin_path: dp.dir.clone(),
        netns_cookie,
        uplinks: conf.uplinks.clone(),
        attach_mode: conf.attach_mode,
    };
    let held = match lease::Held::take(&conf.state_dir, &lease, Duration::from_secs(5)) {
        Ok(h) => h,
        Err(e) => {
            crate::log::write(crate::log::Level::Error, format_args!("{e}"));
            return 1;
        }
    };
    // The first sync ran before the lease was taken: vouch only if it worked.
    held.renew(in_sync(&shared));
    if let Err(e) = http::serve(a.metrics_address, shared.clone()) {
        crate::log::write(
            crate::log::Level::Error,
            format_args!("metrics server on {}: {e}", a.metrics_address),
        );
        return 1;
    }
    info!(
        "agent running: pid {}, network {}, pins {}, metrics and probes on http://{}/",
        std::process::id(),
        conf.name,
        conf.pin_path.display(),
        a.metrics_address
    );

    let tick = Duration::from_secs(1);
    let (mut next_tick, mut next_check, mut next_prune, mut next_resync) = {
        let now = Instant::now();
        (
            now + tick,
            now + Duration::from_secs(5),
            now + Duration::from_secs(a.nat_prune_interval.max(1)),
            now + Duration::from_secs(a.resync_interval.max(1)),
        )
    };
    let mut dp = dp;
    while !STOP.load(Ordering::SeqCst) {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let n = match events.wait(wait) {
            Ok(n) => n,
            Err(e) => {
                warn!("rtnetlink events: {e}");
                std::thread::sleep(Duration::from_millis(100));
                1
            }
        };
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let mut dirty = n > 0;
        if dirty {
            // A change comes as a burst (address, routes, link): let it
            // finish, then sync once.
            std::thread::sleep(Duration::from_millis(10));
            let more = events.drain().unwrap_or(1);
            shared
                .stats
                .events
                .fetch_add((n + more) as u64, Ordering::Relaxed);
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + tick;
            held.renew(in_sync(&shared));
            *shared.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = now;
            // Cheap (a few stats): this build's pins all there?
            if !Datapath::layout(&conf.pin_path).is_ready() {
                warn!(
                    "pins under {} missing: reloading and repairing",
                    conf.pin_path.display()
                );
                match repair::open(conf) {
                    Ok(d) => dp = d,
                    Err(e) => warn!("repair: {}: {}", e.msg, e.details),
                }
                shared.stats.repairs.fetch_add(1, Ordering::Relaxed);
                dirty = true;
            }
        }
        if now >= next_check {
            next_check = now + Duration::from_secs(5);
            // Endpoints of live records missing from the maps.
            if let Some(e) = repair::lost(conf) {
                warn!("{}: repairing", e.msg);
                repair::run(&dp, conf).log();
                shared.stats.repairs.fetch_add(1, Ordering::Relaxed);
            }
        }
        if now >= next_resync {
            dirty = true;
        }
        if dirty {
            next_resync = now + Duration::from_secs(a.resync_interval.max(1));
            sync(&dp, &shared);
            if !in_sync(&shared) {
                // Stop vouching at once, not at the next tick.
                held.renew(false);
            }
        }
        if now >= next_prune {
            next_prune = now + Duration::from_secs(a.nat_prune_interval.max(1));
            match dp.prune_nat() {
                Ok(0) => {}
                Ok(k) => {
                    info!("pruned {k} dead nat entries");
                    shared
                        .stats
                        .nat_pruned
                        .fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) => warn!("prune nat: {}", crate::cni::error::chain(&e)),
            }
        }
    }
    let sig = SIGNAL.load(Ordering::SeqCst);
    info!("agent stopping (signal {sig}); the data path is left as it is");
    drop(held);
    0
}

/// Whether the last sync of node addresses and uplinks succeeded (what the
/// lease vouches for).
fn in_sync(shared: &Shared) -> bool {
    shared
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_none()
}

/// Brings `node_addrs` and the uplinks up to date and forgets uplinks whose
/// device is gone.
fn sync(dp: &Datapath, shared: &Shared) {
    let started = Instant::now();
    let r = crate::datapath::node_netlink().and_then(|nl| {
        dp.sync_addrs_and_uplinks(&nl, &settings(&shared.conf), &shared.conf.state_dir)
    });
    let took = started.elapsed();
    shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .last_sync_ns
        .store(took.as_nanos() as u64, Ordering::Relaxed);
    let mut last = shared.last_error.lock().unwrap_or_else(|e| e.into_inner());
    match r {
        Ok(_) => {
            metrics::forget_gone_uplinks(dp);
            if last.take().is_some() {
                info!("node addresses and uplinks in sync again");
            }
            crate::log::write(
                crate::log::Level::Debug,
                format_args!("synced node addresses and uplinks in {took:?}"),
            );
        }
        Err(e) => {
            shared.stats.sync_errors.fetch_add(1, Ordering::Relaxed);
            let msg = crate::cni::error::chain(&e);
            if last.as_deref() != Some(msg.as_str()) {
                warn!("sync node addresses and uplinks: {msg}");
            }
            *last = Some(msg);
        }
    }
}
