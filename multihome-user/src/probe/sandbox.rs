//! Where the probe runs: a thread of its own in a new network namespace and a new mount
//! namespace, with a fresh bpf filesystem at /sys/fs/bpf. Namespaces made by `unshare(2)` on a
//! thread belong to that thread alone; they have no name in /run/netns and nothing else holds
//! them, so the kernel frees them (the scratch devices, their qdiscs and links, the private
//! bpffs and every pin on it) when the thread ends, or with the process if it is killed. The
//! host's namespaces, its /sys/fs/bpf and the daemon's pins are never seen, let alone changed.
//! Once they exist the thread keeps only the daemon's capabilities, so that what the kernel
//! accepts of the probe is what it accepts of `multihome run` under its unit.

use std::ffi::CString;
use std::io;
use std::panic;

use super::Failure;
use crate::privileges;

/// Where the private bpffs is mounted, inside the private mount namespace only.
pub(super) const BPFFS: &str = "/sys/fs/bpf";

/// Runs `f` in the private namespaces and returns its result once the thread (and with it
/// every namespace it made) is gone; a failure to set them up is returned instead.
pub(super) fn isolated<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, Failure> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| panic::resume_unwind(panic))
    })
}

fn enter() -> Result<(), Failure> {
    // SAFETY: unshare only changes the calling thread's namespaces; this thread is ours and
    // ends with the probe.
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
        return Err(Failure::os(
            "cannot create a private network and mount namespace",
            io::Error::last_os_error(),
        ));
    }
    // The new mount namespace starts as a copy whose mounts may still propagate to the host's
    // (a shared /, as systemd sets it up): cut that first, so the bpffs below stays private.
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| Failure::os("cannot make the private mount namespace private", e))?;
    mount(Some("bpf"), BPFFS, Some("bpf"), 0, Some("mode=0700"))
        .map_err(|e| Failure::os(&format!("cannot mount a private bpffs at {BPFFS}"), e))?;
    unlimited_memlock();
    privileges::restrict_thread(&privileges::DAEMON)
        .map_err(|e| Failure::os("cannot drop to the daemon's capabilities", e))
}

/// The memlock limit the unit gives the daemon (`LimitMEMLOCK=infinity`): kernels before 5.11
/// charge BPF maps to it, and without CAP_SYS_RESOURCE, which the daemon's capabilities lack,
/// it cannot be raised later. rlimits belong to the process, not the thread: `check` keeps
/// this limit to its end. Without the privilege to raise it the limit stays as it is, and the
/// probe reports what the kernel then says.
fn unlimited_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct, which outlives the call.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: Option<&str>| s.map(CString::new).transpose();
    let (source, target, fstype, data) = (c(source)?, CString::new(target)?, c(fstype)?, c(data)?);
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or a C string that outlives the call.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
