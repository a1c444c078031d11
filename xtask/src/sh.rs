//! Command helpers: every command is printed before it runs, and a failure
//! names the command, its exit status and (when captured) its stderr.

use std::{
    ffi::{OsStr, OsString},
    fmt,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
};

/// xtask's error: a message with its context already folded in.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T = ()> = std::result::Result<T, Error>;

/// Adds context to any displayable error.
pub trait Context<T> {
    /// Prefixes the error with `what()`.
    fn context<S: fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context<S: fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

extern "C" {
    fn geteuid() -> u32;
}

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// The workspace root (the parent of xtask's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `$CARGO_HOME`, or `~/.cargo`.
pub fn cargo_home() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        }
    }
}

/// The rustup cargo: the one running xtask (`$CARGO`) unless that is Debian's
/// `/usr/bin/cargo`, then `~/.cargo/bin/cargo`, then `cargo` on PATH.
pub fn cargo() -> OsString {
    if let Some(c) = std::env::var_os("CARGO") {
        if !c.is_empty() && Path::new(&c) != Path::new("/usr/bin/cargo") {
            return c;
        }
    }
    let home_cargo = cargo_home().join("bin").join("cargo");
    if home_cargo.exists() {
        return home_cargo.into();
    }
    "cargo".into()
}

/// Prints a step heading.
pub fn step(title: &str) {
    println!("\n==> {title}");
}

/// Quotes `s` for display the way a shell would need it.
fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command to run, built up fluently.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    echo: bool,
    netns: Option<PathBuf>,
}

impl Cmd {
    /// A command running `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: None,
            echo: true,
            netns: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_os_string(), Some(v.as_ref().to_os_string())));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.env.push((k.as_ref().to_os_string(), None));
        self
    }

    /// Runs in `dir`.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Feeds `data` on stdin (otherwise stdin is /dev/null).
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Runs in the network namespace at `path` (entered with setns between
    /// fork and exec, as a runtime living in that namespace would run it;
    /// cheaper than wrapping it in `nsenter`).
    pub fn netns(mut self, path: impl AsRef<Path>) -> Self {
        self.netns = Some(path.as_ref().to_path_buf());
        self
    }

    /// Does not print the command before running it (for probes).
    pub fn quiet(mut self) -> Self {
        self.echo = false;
        self
    }

    /// The command as a shell line (set variables shown as `K=V`).
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(d) = &self.dir {
            parts.push(format!("(cd {} &&", quote(d.as_os_str())));
        }
        let removed: Vec<_> = self.env.iter().filter(|(_, v)| v.is_none()).collect();
        if !removed.is_empty() {
            parts.push("env".to_string());
            parts.extend(
                removed
                    .iter()
                    .map(|(k, _)| format!("-u {}", k.to_string_lossy())),
            );
        }
        for (k, v) in &self.env {
            if let Some(v) = v {
                parts.push(format!("{}={}", k.to_string_lossy(), quote(v)));
            }
        }
        parts.push(quote(&self.program));
        parts.extend(self.args.iter().map(|a| quote(a)));
        let mut line = parts.join(" ");
        if self.dir.is_some() {
            line.push(')');
        }
        if let Some(p) = &self.netns {
            line.push_str(&format!("  # in netns {}", p.display()));
        }
        line
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        if let Some(p) = &self.netns {
            use std::os::{fd::AsRawFd, unix::process::CommandExt};
            // Opened here; a failure shows as the child failing to start.
            let ns = std::fs::File::open(p);
            // SAFETY: setns is async-signal-safe; the closure only calls it.
            unsafe {
                c.pre_exec(move || match &ns {
                    Ok(f) if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) == 0 => Ok(()),
                    Ok(_) => Err(std::io::Error::last_os_error()),
                    Err(e) => Err(std::io::Error::new(e.kind(), "open netns")),
                });
            }
        }
        c
    }

    fn print(&self) {
        if self.echo {
            println!("$ {}", self.display());
        }
    }

    fn spawn_failed(&self, e: std::io::Error) -> Error {
        Error(format!("cannot run `{}`: {e}", self.display()))
    }

    /// Runs with inherited stdout/stderr; returns the exit status.
    pub fn status(&self) -> Result<ExitStatus> {
        self.print();
        let mut c = self.command();
        if self.stdin.is_some() {
            c.stdin(Stdio::piped());
        } else {
            c.stdin(Stdio::null());
        }
        let mut child = c.spawn().map_err(|e| self.spawn_failed(e))?;
        if let (Some(data), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            pipe.write_all(data).map_err(|e| self.spawn_failed(e))?;
        }
        child.wait().map_err(|e| self.spawn_failed(e))
    }

    /// Runs with inherited stdout/stderr; fails unless it exits with 0.
    pub fn run(&self) -> Result<()> {
        let st = self.status()?;
        if st.success() {
            Ok(())
        } else {
            Err(Error(format!("`{}` failed ({st})", self.display())))
        }
    }

    /// Runs with stdout and stderr captured, whatever the exit status.
    pub fn output(&self) -> Result<Output> {
        self.print();
        let mut c = self.command();
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = c.spawn().map_err(|e| self.spawn_failed(e))?;
        if let (Some(data), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            // Inputs are small (a network config), far below a pipe's capacity.
            pipe.write_all(data).map_err(|e| self.spawn_failed(e))?;
        }
        child.wait_with_output().map_err(|e| self.spawn_failed(e))
    }

    /// Runs with output captured; returns stdout, or fails with the exit
    /// status and both streams.
    pub fn read(&self) -> Result<String> {
        let out = self.output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error(failure(self, &out)))
        }
    }
}

/// Describes a failed captured command.
pub fn failure(cmd: &Cmd, out: &Output) -> String {
    let mut msg = format!("`{}` failed ({})", cmd.display(), out.status);
    for (name, s) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let s = String::from_utf8_lossy(s);
        if !s.trim().is_empty() {
            msg.push_str(&format!(
                "\n  {name}: {}",
                s.trim_end().replace('\n', "\n    ")
            ));
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_and_env() {
        let c = Cmd::new("cargo")
            .args(["clippy", "--", "-D", "warnings"])
            .env("CNI_EBPF_TEST", "1")
            .env_remove("RUSTFLAGS")
            .arg("a b");
        assert_eq!(
            c.display(),
            "env -u RUSTFLAGS CNI_EBPF_TEST=1 cargo clippy -- -D warnings 'a b'"
        );
        let c = Cmd::new("sh").arg("it's").dir("/tmp");
        assert_eq!(c.display(), r"(cd /tmp && sh 'it'\''s')");
    }
}
