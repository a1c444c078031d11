//! Logging to a file (and stderr for humans); never to stdout, which carries
//! the one CNI result document.

use std::{fs::File, io::Write, path::Path, sync::Mutex};

static SINK: Mutex<Option<File>> = Mutex::new(None);
static PREFIX: Mutex<String> = Mutex::new(String::new());

/// Opens the log file (append). Failure to open it is not fatal: logs then go
/// to stderr only.
pub fn init(path: Option<&Path>, prefix: String) {
    if let Some(p) = path {
        if let Some(d) = p.parent() {
            let _ = crate::private::create_dir(d);
        }
        if let Ok(f) = crate::private::options().create(true).append(true).open(p) {
            *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        }
    }
    *PREFIX.lock().unwrap_or_else(|e| e.into_inner()) = prefix;
}

/// Writes one line.
pub fn write(level: &str, msg: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let prefix = PREFIX.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let line = format!(
        "{}.{:03} {level} [{}] {prefix} {msg}\n",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id()
    );
    if let Some(f) = SINK.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = f.write_all(line.as_bytes());
    }
    if std::env::var_os("CNI_EBPF_LOG_STDERR").is_some() {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write("INFO", format_args!($($t)*)) };
}

/// Logs at warning level.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::write("WARN", format_args!($($t)*)) };
}
