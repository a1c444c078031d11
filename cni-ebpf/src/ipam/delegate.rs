//! Running another IPAM plugin binary, as the reference plugins'
//! `ipam.ExecAdd` / `ExecDel` / `ExecCheck` do.
//!
//! The delegate is found by name in `CNI_PATH`, runs with this process's
//! environment (so it sees the same `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH`) with only `CNI_COMMAND` replaced,
//! reads the network configuration on stdin and answers on stdout. Its stderr
//! goes straight to ours, so its diagnostics reach the runtime's log.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::cni::{code, CniError};

/// Runs IPAM plugin `plugin_type` with `CNI_COMMAND=command` and
/// `stdin_config` (the network configuration) on stdin.
///
/// `plugin_type` must be a plain file name; it is looked up in the
/// `:`-separated directories of `cni_path`, first match wins (a
/// [`code::INVALID_CONFIG`] error when absent, as the reference's
/// `FindInPath`).
///
/// A non-zero exit passes the delegate's CNI error (`{code, msg, details}` on
/// its stdout) through unchanged; output that is not such an error becomes
/// [`code::DELEGATE`] with the raw output in `details`.
///
/// On success, `ADD` returns the delegate's result JSON (a
/// [`code::DECODE`] error if it is not JSON); every other command (`DEL`,
/// `CHECK`, ...) returns `None` and ignores stdout.
pub fn exec(
    plugin_type: &str,
    command: &str,
    stdin_config: &[u8],
    cni_path: &str,
) -> Result<Option<Value>, CniError> {
    exec_with(plugin_type, command, stdin_config, cni_path, &[])
}

/// [`exec`] with `env` set in the delegate's environment over this
/// process's: GC names each attachment it tears down this way
/// (`CNI_CONTAINERID`, `CNI_IFNAME`, `CNI_NETNS`) instead of changing its
/// own environment.
pub fn exec_with(
    plugin_type: &str,
    command: &str,
    stdin_config: &[u8],
    cni_path: &str,
    env: &[(&str, &str)],
) -> Result<Option<Value>, CniError> {
    let path = find_in_path(plugin_type, cni_path)?;
    let mut child = spawn(&path, command, env).map_err(|e| {
        CniError::new(
            code::DELEGATE,
            format!(
                "cannot run IPAM plugin {plugin_type:?} ({}): {e}",
                path.display()
            ),
        )
    })?;

    // Feed stdin from another thread while this one drains stdout: a plugin
    // that writes a lot before reading all its input must not deadlock us.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let output = std::thread::scope(|s| {
        s.spawn(move || {
            // A plugin may exit without reading its input (EPIPE); its exit
            // status and output decide the outcome, not this write.
            let _ = stdin.write_all(stdin_config);
            // Dropping `stdin` closes the pipe so the plugin sees EOF.
        });
        child.wait_with_output()
    })
    .map_err(|e| {
        CniError::new(
            code::DELEGATE,
            format!("cannot read the output of IPAM plugin {plugin_type:?}: {e}"),
        )
    })?;

    if !output.status.success() {
        return Err(plugin_error(
            plugin_type,
            command,
            output.status,
            &output.stdout,
        ));
    }
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("cannot decode the result of IPAM plugin {plugin_type:?}: {e}"),
            )
            .with_details(String::from_utf8_lossy(&output.stdout).trim().to_string())
        })
}

/// The reference's `invoke.FindInPath`: the first regular file (symlinks
/// followed) named `plugin` in the directories of `cni_path`.
fn find_in_path(plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    // The name comes from the network configuration; refusing separators and
    // dot names keeps it from picking a binary outside CNI_PATH.
    if plugin.is_empty() || plugin == "." || plugin == ".." || plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid IPAM plugin type {plugin:?}: must be a plain file name"),
        ));
    }
    // Only absolute directories: a relative entry would make the binary that
    // runs as root depend on the runtime's working directory. The
    // environment check refuses such a CNI_PATH already; this keeps the rule
    // where the binary is chosen.
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| d.starts_with('/')).collect();
    for dir in &dirs {
        let candidate = Path::new(dir).join(plugin);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            return Ok(candidate);
        }
    }
    Err(CniError::new(
        code::INVALID_CONFIG,
        format!(
            "failed to find plugin {plugin:?} in path [{}]",
            dirs.join(" ")
        ),
    ))
}

/// Starts the plugin. Retries on `ETXTBSY`, as the reference's `RawExec`
/// does: a binary just written (by an installer, or a test) can still be
/// open for writing in a child that another thread forked but has not yet
/// exec'd.
fn spawn(path: &Path, command: &str, env: &[(&str, &str)]) -> io::Result<Child> {
    const ATTEMPTS: u32 = 20;
    let mut attempt = 0;
    loop {
        let res = Command::new(path)
            .env("CNI_COMMAND", command)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        match res {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
                    && attempt + 1 < ATTEMPTS =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            other => return other,
        }
    }
}

/// The CNI error object a failing plugin prints.
#[derive(Deserialize)]
struct WireError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

fn plugin_error(plugin: &str, command: &str, status: ExitStatus, stdout: &[u8]) -> CniError {
    let wire = serde_json::from_slice::<Value>(stdout)
        .and_then(|v| crate::cni::gojson::from_value::<WireError>(&v));
    match wire {
        // Code 0 is not an error code; treat it as unparseable.
        Ok(w) if w.code != 0 => CniError {
            code: w.code,
            msg: w.msg,
            details: w.details,
        },
        _ => {
            let raw = String::from_utf8_lossy(stdout).trim().to_string();
            CniError::new(
                code::DELEGATE,
                format!("IPAM plugin {plugin:?} {command} failed ({status})"),
            )
            .with_details(if raw.is_empty() {
                "no output".to_string()
            } else {
                raw
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "cni-ebpf-delegate-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }

        /// Writes an executable shell script named `name`.
        fn plugin(&self, name: &str, body: &str) {
            let p = self.0.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const ECHO: &str = r#"in=$(cat)
printf '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}],"cmd":"%s","in":%s}' "$CNI_COMMAND" "$in""#;

    #[test]
    fn add_returns_result_with_command_and_stdin_passed() {
        let d = TempDir::new("ok");
        d.plugin("fake-ipam", ECHO);
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "fake-ipam"}});
        let out = exec(
            "fake-ipam",
            "ADD",
            conf.to_string().as_bytes(),
            &format!("/nonexistent::{}", d.path()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(out["cmd"], "ADD");
        assert_eq!(out["in"], conf);
        assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");
    }

    #[test]
    fn relative_path_entries_are_never_searched() {
        let d = TempDir::new("rel");
        d.plugin("fake-ipam", ECHO);
        let cwd = std::env::current_dir().unwrap();
        let rel = d.0.strip_prefix(&cwd).map_or_else(
            |_| {
                // The temp dir is outside the working directory: reach it
                // through enough `..` components.
                let ups = "../".repeat(cwd.components().count());
                format!("{ups}{}", d.path().trim_start_matches('/'))
            },
            |r| r.display().to_string(),
        );
        assert!(std::path::Path::new(&rel).join("fake-ipam").is_file());
        let e = exec("fake-ipam", "ADD", b"{}", &rel).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
        assert!(e.msg.contains("failed to find plugin"), "{e}");
    }

    #[test]
    fn del_and_check_return_none() {
        let d = TempDir::new("del");
        d.plugin("fake-ipam", ECHO);
        assert_eq!(exec("fake-ipam", "DEL", b"{}", d.path()).unwrap(), None);
        assert_eq!(exec("fake-ipam", "CHECK", b"{}", d.path()).unwrap(), None);
    }

    #[test]
    fn error_json_is_passed_through() {
        let d = TempDir::new("err");
        d.plugin(
            "fake-ipam",
            r#"cat >/dev/null
printf '{"cniVersion":"1.0.0","code":100,"msg":"no more addresses","details":"pool x"}'
exit 1"#,
        );
        let e = exec("fake-ipam", "ADD", b"{}", d.path()).unwrap_err();
        assert_eq!(
            e,
            CniError {
                code: 100,
                msg: "no more addresses".into(),
                details: "pool x".into()
            }
        );
    }

    #[test]
    fn unparseable_failure_is_delegate_error_with_raw_output() {
        let d = TempDir::new("garbage");
        d.plugin("fake-ipam", "echo boom; exit 3");
        let e = exec("fake-ipam", "DEL", b"{}", d.path()).unwrap_err();
        assert_eq!(e.code, code::DELEGATE);
        assert!(
            e.msg.contains("fake-ipam") && e.msg.contains('3'),
            "{}",
            e.msg
        );
        assert_eq!(e.details, "boom");

        d.plugin("silent", "exit 1");
        let e = exec("silent", "ADD", b"{}", d.path()).unwrap_err();
        assert_eq!(e.code, code::DELEGATE);
        assert_eq!(e.details, "no output");
    }

    #[test]
    fn add_with_non_json_output_is_decode_error() {
        let d = TempDir::new("decode");
        d.plugin("fake-ipam", "echo not-json");
        let e = exec("fake-ipam", "ADD", b"{}", d.path()).unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert_eq!(e.details, "not-json");
    }

    #[test]
    fn plugin_that_ignores_large_stdin_still_succeeds() {
        let d = TempDir::new("epipe");
        d.plugin("fake-ipam", r#"printf '{"cniVersion":"1.0.0"}'"#);
        let big = vec![b' '; 4 << 20];
        let out = exec("fake-ipam", "ADD", &big, d.path()).unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
    }

    #[test]
    fn missing_plugin_is_invalid_config() {
        let a = TempDir::new("miss-a");
        let b = TempDir::new("miss-b");
        // A directory of that name is not a plugin.
        std::fs::create_dir(a.0.join("nope")).unwrap();
        let e = exec("nope", "ADD", b"{}", &format!("{}:{}", a.path(), b.path())).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert_eq!(
            e.msg,
            format!(
                r#"failed to find plugin "nope" in path [{} {}]"#,
                a.path(),
                b.path()
            )
        );
        let e = exec("nope", "ADD", b"{}", "").unwrap_err();
        assert_eq!(e.msg, r#"failed to find plugin "nope" in path []"#);
    }

    #[test]
    fn first_directory_wins() {
        let a = TempDir::new("order-a");
        let b = TempDir::new("order-b");
        a.plugin("p", r#"cat >/dev/null; printf '{"from":"a"}'"#);
        b.plugin("p", r#"cat >/dev/null; printf '{"from":"b"}'"#);
        let out = exec("p", "ADD", b"{}", &format!("{}:{}", a.path(), b.path()))
            .unwrap()
            .unwrap();
        assert_eq!(out["from"], "a");
    }

    #[test]
    fn plugin_names_must_be_plain() {
        let d = TempDir::new("names");
        d.plugin("fake-ipam", ECHO);
        for bad in ["", ".", "..", "../fake-ipam", "/bin/sh", "sub/fake-ipam"] {
            let e = exec(bad, "ADD", b"{}", d.path()).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
        }
    }
}
