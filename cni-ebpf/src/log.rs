//! Logging to a file (and stderr for humans, with `CNI_EBPF_LOG_STDERR=1`);
//! never to stdout, which carries the one CNI result document.
//!
//! Every line: `<unix time>.<ms> <LEVEL> [<pid>] <command> <network>
//! <container>/<ifname> <message>`. Lines below `logLevel` are dropped; the
//! one summary line each call ends with ([`summary`]) is always written.

use std::{
    fs::File,
    io::Write,
    path::Path,
    sync::{
        atomic::{AtomicU8, Ordering},
        Mutex,
    },
};

/// How much is logged (`logLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    /// Failures only.
    Error = 0,
    /// Also what went wrong but was worked around (rollback, teardown).
    Warn = 1,
    /// Also each step of a call (default).
    #[default]
    Info = 2,
    /// Everything.
    Debug = 3,
}

impl Level {
    /// Parses `logLevel`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Warn => "WARN",
            Self::Info => "INFO",
            Self::Debug => "DEBUG",
        }
    }
}

static SINK: Mutex<Option<File>> = Mutex::new(None);
static PREFIX: Mutex<String> = Mutex::new(String::new());
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Opens the log file (append) and sets the level. Failure to open it is
/// not fatal: logs then go to stderr only (if asked for).
pub fn init(path: Option<&Path>, level: Level) {
    if let Some(p) = path {
        if let Some(d) = p.parent() {
            let _ = crate::private::create_dir(d);
        }
        if let Ok(f) = crate::private::options().create(true).append(true).open(p) {
            *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        }
    }
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Sets what every later line starts with (the call it belongs to).
pub fn set_prefix(prefix: String) {
    *PREFIX.lock().unwrap_or_else(|e| e.into_inner()) = prefix;
}

/// Writes one line at `level`, if the configured level lets it through.
pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    if level as u8 <= LEVEL.load(Ordering::Relaxed) {
        emit(level, msg);
    }
}

fn emit(level: Level, msg: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let prefix = PREFIX.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let line = format!(
        "{}.{:03} {} [{}] {prefix} {msg}\n",
        now.as_secs(),
        now.subsec_millis(),
        level.name(),
        std::process::id()
    );
    // One write per line: O_APPEND keeps lines of concurrent calls whole.
    if let Some(f) = SINK.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = f.write_all(line.as_bytes());
    }
    if std::env::var_os("CNI_EBPF_LOG_STDERR").is_some() {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// The line each CNI call ends with, whatever the level:
/// `cni command=ADD container=… ifname=… result=ok duration_ms=12.3`, or
/// `result=error code=7 msg="…"` (at ERROR).
pub fn summary(
    command: &str,
    container: &str,
    ifname: &str,
    result: Result<(), &crate::cni::CniError>,
    took: std::time::Duration,
) {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let ms = took.as_secs_f64() * 1000.0;
    let head = format!(
        "cni command={command} container={} ifname={}",
        dash(container),
        dash(ifname)
    );
    match result {
        Ok(()) => emit(
            Level::Info,
            format_args!("{head} result=ok duration_ms={ms:.1}"),
        ),
        Err(e) => emit(
            Level::Error,
            format_args!(
                "{head} result=error code={} msg={:?} duration_ms={ms:.1}",
                e.code, e.msg
            ),
        ),
    }
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) };
}

/// Logs at warning level.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("warning"), Some(Level::Warn));
        assert_eq!(Level::parse("verbose"), None);
        assert!(Level::Error < Level::Warn && Level::Info < Level::Debug);
    }
}
