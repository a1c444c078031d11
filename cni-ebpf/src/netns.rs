//! Running code inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so the work runs on a
//! short-lived scoped thread that enters the namespace and exits; the main
//! thread never moves (see the reference plugins' `pkg/ns` for why a thread
//! that changed namespace must not be reused). Netlink sockets opened on that
//! thread stay bound to the namespace.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// Errors entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The netns path could not be opened (it may be gone).
    #[error("cannot open netns {path}")]
    Open {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a network namespace.
    #[error("{path} is not a network namespace")]
    NotNetns {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens a netns path and checks that it really is a network namespace
    /// (a regular file, or a mount namespace, fails here, not half way).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let path_s = path.display().to_string();
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path_s.clone(),
            source,
        })?;
        // NS_GET_NSTYPE (linux/nsfs.h): one ioctl instead of entering it
        // on a thread; anything but an nsfs file answers ENOTTY.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: an ioctl without arguments on an open descriptor.
        let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if t != libc::CLONE_NEWNET {
            let source = if t < 0 {
                std::io::Error::last_os_error()
            } else {
                std::io::Error::other(format!("namespace type {t:#x}"))
            };
            return Err(NetnsError::NotNetns {
                path: path_s,
                source,
            });
        }
        Ok(Self { file, path: path_s })
    }

    /// The namespace file, e.g. to create a link directly inside it.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` on a fresh thread that has joined this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                move_into_link_name_space(self.file.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| NetnsError::NotNetns {
                        path: self.path.clone(),
                        source: e.into(),
                    })?;
                Ok(f())
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    /// True when this is the namespace the calling thread is in.
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (
            self.file.metadata(),
            std::fs::metadata("/proc/thread-self/ns/net"),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }
}
