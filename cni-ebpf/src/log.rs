//! Logging to a file (and stderr for humans, with `CNI_EBPF_LOG_STDERR=1`);
//! never to stdout, which carries the one CNI result document.
//!
//! Every line (`logFormat: "text"`, the default): `<RFC 3339 time with
//! zone> <LEVEL> [<pid>] <command> <network> <container>/<ifname>
//! <message>`, for example `2026-05-20T14:03:07.412+02:00 INFO [811] ADD
//! net1 4f2e…/eth0 ADD done`. With `logFormat: "json"`, one JSON object per
//! line: `time`, `level`, `pid`, `call` (the prefix) and `msg`, and the
//! summary line's fields as fields of their own. Lines below `logLevel` are
//! dropped; the one summary line each call ends with ([`summary`]) is always
//! written.

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

/// How lines are written (`logFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One line of text (default).
    #[default]
    Text = 0,
    /// One JSON object per line.
    Json = 1,
}

impl Format {
    /// Parses `logFormat`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "text" => Self::Text,
            "json" => Self::Json,
            _ => return None,
        })
    }
}

static SINK: Mutex<Option<File>> = Mutex::new(None);
static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);
static STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
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

/// Writes every line to stderr too (the agent: `kubectl logs`).
pub fn also_stderr() {
    STDERR.store(true, Ordering::Relaxed);
}

/// Sets the line format.
pub fn set_format(f: Format) {
    FORMAT.store(f as u8, Ordering::Relaxed);
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
    emit_fields(level, msg, &[]);
}

/// `now` as RFC 3339 with milliseconds and the local zone's offset (`Z` in
/// UTC), from `localtime_r` (TZ, /etc/localtime).
pub fn rfc3339(now: std::time::SystemTime) -> String {
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as libc::time_t;
    // SAFETY: an all-zero `tm` is valid; localtime_r only writes it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    if !ok {
        // SAFETY: as above; gmtime_r cannot fail for a time_t from now.
        unsafe { libc::gmtime_r(&secs, &mut tm) };
    }
    let off = tm.tm_gmtoff;
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        let a = off.abs();
        format!(
            "{}{:02}:{:02}",
            if off < 0 { '-' } else { '+' },
            a / 3600,
            a % 3600 / 60
        )
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{zone}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        d.subsec_millis()
    )
}

/// A summary field value.
enum Field<'a> {
    Str(&'a str),
    Num(f64),
}

fn emit_fields(level: Level, msg: std::fmt::Arguments<'_>, fields: &[(&str, Field<'_>)]) {
    let time = rfc3339(std::time::SystemTime::now());
    let prefix = PREFIX.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let line = if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        let mut o = serde_json::Map::new();
        o.insert("time".into(), time.into());
        o.insert("level".into(), level.name().into());
        o.insert("pid".into(), std::process::id().into());
        o.insert("call".into(), prefix.into());
        o.insert("msg".into(), msg.to_string().into());
        for (k, v) in fields {
            let v = match v {
                Field::Str(s) => serde_json::Value::from(*s),
                Field::Num(n) => serde_json::Value::from(*n),
            };
            o.insert((*k).into(), v);
        }
        let mut l = serde_json::Value::Object(o).to_string();
        l.push('\n');
        l
    } else {
        format!(
            "{time} {} [{}] {prefix} {msg}\n",
            level.name(),
            std::process::id()
        )
    };
    // One write per line: O_APPEND keeps lines of concurrent calls whole.
    if let Some(f) = SINK.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = f.write_all(line.as_bytes());
    }
    if STDERR.load(Ordering::Relaxed) || std::env::var_os("CNI_EBPF_LOG_STDERR").is_some() {
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
    let (c, i) = (dash(container), dash(ifname));
    let head = format!("cni command={command} container={c} ifname={i}");
    let ms_r = (ms * 10.0).round() / 10.0;
    let mut fields = vec![
        ("command", Field::Str(command)),
        ("container", Field::Str(&c)),
        ("ifname", Field::Str(&i)),
    ];
    match result {
        Ok(()) => {
            fields.push(("result", Field::Str("ok")));
            fields.push(("duration_ms", Field::Num(ms_r)));
            emit_fields(
                Level::Info,
                format_args!("{head} result=ok duration_ms={ms:.1}"),
                &fields,
            )
        }
        Err(e) => {
            fields.push(("result", Field::Str("error")));
            fields.push(("code", Field::Num(f64::from(e.code))));
            fields.push(("error", Field::Str(&e.msg)));
            fields.push(("duration_ms", Field::Num(ms_r)));
            emit_fields(
                Level::Error,
                format_args!(
                    "{head} result=error code={} msg={:?} duration_ms={ms:.1}",
                    e.code, e.msg
                ),
                &fields,
            )
        }
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
        assert_eq!(Format::parse("JSON"), Some(Format::Json));
        assert_eq!(Format::parse("xml"), None);
    }

    #[test]
    fn rfc3339_times() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_226_551_338);
        let s = rfc3339(t);
        // 2026-12-02T..., local zone: the date part may differ by a day.
        assert!(s.len() >= "2026-12-02T12:29:11.338Z".len(), "{s}");
        assert!(s.starts_with("2026-12-0"), "{s}");
        assert!(s.contains(".338"), "{s}");
        assert!(
            s.ends_with('Z') || s[s.len() - 6..].starts_with(['+', '-']),
            "{s}"
        );
    }
}
