//! CNI call counts and latencies, kept where a short-lived plugin can add to
//! them cheaply and an agent can read them: one fixed-size file in the state
//! directory (`cni-calls.stats`), updated under `flock` by every call.
//!
//! The file never grows: a header, then for each (command, result) slot the
//! number of calls, the sum of their durations in nanoseconds and one count
//! per latency bucket ([`BUCKETS`] upper bounds, then +Inf), all
//! little-endian `u64`. Counts only ever grow (they wrap after 2^64), as
//! Prometheus counters expect; deleting the file resets them, which a
//! scraper sees as a counter reset.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::fs::{flock, FlockOperation};

/// File name under the state directory.
pub const FILE: &str = "cni-calls.stats";
/// Commands with a slot of their own (anything else counts as `other`).
pub const COMMANDS: [&str; 7] = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "other"];
/// Results.
pub const RESULTS: [&str; 2] = ["ok", "error"];
/// Latency bucket upper bounds, seconds (then +Inf).
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const MAGIC: &[u8; 8] = b"CEBPCS01";
/// u64 words per slot: count, sum (ns), buckets + Inf.
const WORDS: usize = 2 + BUCKETS.len() + 1;
const SLOTS: usize = COMMANDS.len() * RESULTS.len();
/// Size of the file.
pub const SIZE: usize = MAGIC.len() + SLOTS * WORDS * 8;

/// One (command, result) slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    /// Calls.
    pub count: u64,
    /// Total duration, seconds.
    pub sum_seconds: f64,
    /// Calls per bucket (not cumulative), the last one +Inf.
    pub buckets: Vec<u64>,
}

/// Every slot as (command, result, slot).
pub type Table = Vec<(&'static str, &'static str, Slot)>;

fn slot_index(command: &str, ok: bool) -> usize {
    let c = COMMANDS
        .iter()
        .position(|c| *c == command)
        .unwrap_or(COMMANDS.len() - 1);
    c * RESULTS.len() + usize::from(!ok)
}

/// The file of `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn words(buf: &[u8]) -> Vec<u64> {
    if buf.len() != SIZE || &buf[..MAGIC.len()] != MAGIC {
        return vec![0; SLOTS * WORDS];
    }
    buf[MAGIC.len()..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Adds one call. Only where `state_dir` exists already (a VERSION call or
/// a config that names no usable directory creates nothing); failures are
/// ignored: statistics never fail a call.
pub fn record(state_dir: &Path, command: &str, ok: bool, took: Duration) {
    if !state_dir.is_dir() {
        return;
    }
    let _ = add(&path(state_dir), command, ok, took);
}

fn add(p: &Path, command: &str, ok: bool, took: Duration) -> std::io::Result<()> {
    let mut f = crate::private::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)?;
    loop {
        match flock(&f, FlockOperation::LockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = Vec::with_capacity(SIZE);
    f.read_to_end(&mut buf)?;
    let mut w = words(&buf);
    let base = slot_index(command, ok) * WORDS;
    let secs = took.as_secs_f64();
    let bucket = BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BUCKETS.len());
    w[base] = w[base].wrapping_add(1);
    w[base + 1] = w[base + 1].wrapping_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    w[base + 2 + bucket] = w[base + 2 + bucket].wrapping_add(1);
    let mut out = Vec::with_capacity(SIZE);
    out.extend_from_slice(MAGIC);
    for x in w {
        out.extend_from_slice(&x.to_le_bytes());
    }
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&out)
}

/// Reads the table (all zero when the file is missing or not ours).
pub fn read(state_dir: &Path) -> Table {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path(state_dir)) {
        // A shared lock: never a half-written file.
        let _ = flock(&f, FlockOperation::LockShared);
        let _ = f.read_to_end(&mut buf);
    }
    let w = words(&buf);
    let mut out = Vec::new();
    for (ci, c) in COMMANDS.iter().enumerate() {
        for (ri, r) in RESULTS.iter().enumerate() {
            let base = (ci * RESULTS.len() + ri) * WORDS;
            out.push((
                *c,
                *r,
                Slot {
                    count: w[base],
                    sum_seconds: w[base + 1] as f64 / 1e9,
                    buckets: w[base + 2..base + WORDS].to_vec(),
                },
            ));
        }
    }
    out
}

/// The state directory a raw config names (`stateDir`, matched as the
/// parser matches it: Go's rule), else the default.
pub fn state_dir_of(doc: Option<&serde_json::Value>) -> PathBuf {
    use crate::{cni::gojson::Fields, config::Key};
    doc.and_then(|v| v.as_object())
        .and_then(|o| {
            crate::cni::gojson::fold_iter(o, Key::NAMES)
                .find(|(k, _)| *k == Key::StateDir.name())
                .and_then(|(_, v)| v.as_str())
        })
        .and_then(|s| crate::config::absolute_path("stateDir", s).ok())
        .unwrap_or_else(|| crate::config::DEFAULT_STATE_DIR.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_as_the_parser_reads_it() {
        let sd = |v: serde_json::Value| state_dir_of(Some(&v));
        // The exact spelling wins over a folded one, as in the parser.
        assert_eq!(
            sd(serde_json::json!({"StateDir": "/a", "stateDir": "/b"})),
            PathBuf::from("/b")
        );
        // Go's fold: U+017F is an `s`.
        assert_eq!(
            sd(serde_json::json!({"\u{17f}tatedir": "/c"})),
            PathBuf::from("/c")
        );
        assert_eq!(
            sd(serde_json::json!({"stateDir": "/x/../y"})),
            PathBuf::from(crate::config::DEFAULT_STATE_DIR)
        );
    }

    #[test]
    fn counts_and_buckets() {
        let d = std::env::temp_dir().join(format!("cni-ebpf-callstats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        record(&d, "ADD", true, Duration::from_millis(3));
        record(&d, "ADD", true, Duration::from_millis(70));
        record(&d, "DEL", false, Duration::from_secs(100));
        record(&d, "BOGUS", true, Duration::ZERO);
        assert_eq!(std::fs::metadata(path(&d)).unwrap().len() as usize, SIZE);
        let t = read(&d);
        let get = |c: &str, r: &str| t.iter().find(|x| x.0 == c && x.1 == r).unwrap().2.clone();
        let add = get("ADD", "ok");
        assert_eq!(add.count, 2);
        assert!((add.sum_seconds - 0.073).abs() < 1e-9);
        assert_eq!(add.buckets[0], 1);
        assert_eq!(add.buckets[4], 1);
        assert_eq!(get("DEL", "error").buckets[BUCKETS.len()], 1);
        assert_eq!(get("other", "ok").count, 1);
        assert_eq!(
            get("GC", "ok"),
            Slot {
                buckets: vec![0; BUCKETS.len() + 1],
                ..Default::default()
            }
        );
        std::fs::remove_dir_all(&d).unwrap();
        // No state directory: nothing written.
        record(&d, "ADD", true, Duration::ZERO);
        assert!(!d.exists());
    }
}
