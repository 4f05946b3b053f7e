//! Waking the daemon when the steering root's cgroups change: a slice created (by systemd,
//! `multihome exec` or an operator's `mkdir`) or removed, an exec scope created or emptied, the
//! root itself removed. inotify is not recursive on cgroupfs, so the root, each uplink slice and
//! each exec scope's `cgroup.events` (modified on every populated transition) are watched one by
//! one; the daemon then looks at the whole (small) tree again.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{cgroup2, Root};

pub(crate) struct Watch {
    fd: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watches `root` and what is below it now.
    pub(crate) fn new(root: &Root) -> io::Result<Watch> {
        // SAFETY: inotify_init1 takes flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd stays open, on the same description, for as long as it lives,
        // and the AsyncFd owns it.
        let watch = Watch {
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?,
        };
        watch.rewatch(root);
        Ok(watch)
    }

    /// Adds watches for what appeared below `root` (adding one twice is a no-op); those of
    /// removed directories go by themselves.
    pub(crate) fn rewatch(&self, root: &Root) {
        let dirs = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_DELETE_SELF;
        self.add(&root.path, dirs);
        for name in cgroup2::children(&root.path) {
            if cgroup2::uplink_of_slice(&name).is_some() {
                self.add(&root.path.join(name), dirs);
            }
        }
        for scope in root.exec_scopes() {
            self.add(&scope.join("cgroup.events"), libc::IN_MODIFY);
        }
    }

    fn add(&self, path: &Path, mask: u32) {
        let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a valid inotify descriptor and C string.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            log::debug!(
                "cannot watch {}: {}",
                path.display(),
                io::Error::last_os_error()
            );
        }
    }

    /// Waits until something below the root changed, and takes every event queued: the caller
    /// looks at the whole tree again anyway.
    pub(crate) async fn changed(&self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut drained = false;
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reading into our buffer of its length.
                let n =
                    unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    drained = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                if n < 0 && err.kind() == io::ErrorKind::WouldBlock {
                    ready.clear_ready();
                    break;
                }
                return Err(err);
            }
            if drained {
                return Ok(());
            }
        }
    }
}
