//! Attaching the loaded program to a device's egress, and detaching whatever an earlier process
//! left, using only the pin directory (see `pins`) as the record.

use std::{
    ffi::{CStr, CString},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use anyhow::{anyhow, Context, Result};
use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{self, NlOptions, TcAttachOptions, TcAttachType, TcError},
    SchedClassifier,
};

use super::{pins::attachment_pin, privilege_hint, AttachKind, AttachMode, PROGRAM_NAME};

/// Attaches `program` to the egress of `ifindex`, replacing an attachment an earlier run left
/// there. A TCX link is made before the old one goes, so the device is never unguarded; clsact
/// filters are found by name, so the old one goes first.
pub(super) fn attach(
    program: &mut SchedClassifier,
    pin_dir: &Path,
    ifindex: u32,
    mode: AttachMode,
) -> Result<AttachKind> {
    let name = ifname(ifindex)?;
    match mode {
        AttachMode::Tcx => attach_tcx(program, pin_dir, ifindex, &name),
        AttachMode::Clsact => attach_clsact(program, pin_dir, ifindex, &name),
        AttachMode::Auto => attach_tcx(program, pin_dir, ifindex, &name).or_else(|tcx| {
            log::debug!("TCX attach to {name} failed ({tcx:#}); trying clsact");
            attach_clsact(program, pin_dir, ifindex, &name)
                .map_err(|clsact| anyhow!("{clsact:#} (TCX attach failed too: {tcx:#})"))
        }),
    }
    .with_context(|| {
        format!(
            "cannot attach the guard to {name} (ifindex {ifindex}; {})",
            privilege_hint("`multihome check` tells whether this kernel has TCX and clsact")
        )
    })
}

fn attach_tcx(
    program: &mut SchedClassifier,
    pin_dir: &Path,
    ifindex: u32,
    name: &str,
) -> Result<AttachKind> {
    let id = program.attach_with_options(
        name,
        TcAttachType::Egress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    let link: FdLink = program.take_link(id)?.try_into()?;
    detach(pin_dir, ifindex)?;
    // Dropping the returned `PinnedLink` closes our fd; the pin keeps the link alive.
    link.pin(attachment_pin(pin_dir, AttachKind::Tcx, ifindex))?;
    Ok(AttachKind::Tcx)
}

fn attach_clsact(
    program: &mut SchedClassifier,
    pin_dir: &Path,
    ifindex: u32,
    name: &str,
) -> Result<AttachKind> {
    detach(pin_dir, ifindex)?;
    match tc::qdisc_add_clsact(name) {
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        other => other.context("cannot add the clsact qdisc")?,
    }
    let id = program.attach_with_options(
        name,
        TcAttachType::Egress,
        TcAttachOptions::Netlink(NlOptions::default()),
    )?;
    // The filter must outlive this process: dropping aya's netlink link would delete it, and it
    // holds no file descriptor, so forgetting it leaks nothing.
    std::mem::forget(program.take_link(id)?);
    let pin = attachment_pin(pin_dir, AttachKind::Clsact, ifindex);
    program.pin(&pin)?;
    Ok(AttachKind::Clsact)
}

/// Whether the TCX link pinned at `pin` is still attached to `ifindex` of the caller's network
/// namespace: `bpftool link detach` leaves the pin of a detached link behind. Anything that
/// cannot be checked counts as attached (the pin is the record).
pub(super) fn tcx_link_attached(pin: &Path, ifindex: u32) -> bool {
    let Ok(link) = PinnedLink::from_pin(pin) else {
        return true;
    };
    let Ok(info) = FdLink::from(link).info() else {
        return true;
    };
    let Ok(name) = ifname(ifindex) else {
        return true;
    };
    match SchedClassifier::query_tcx(&name, TcAttachType::Egress) {
        Ok((_, programs)) => programs.iter().any(|p| p.id() == info.program_id()),
        Err(_) => true,
    }
}

/// Removes the guard from the egress of `ifindex`, whichever way it was attached and by whichever
/// process; nothing attached is not an error, nor is a device that is gone.
pub(super) fn detach(pin_dir: &Path, ifindex: u32) -> Result<()> {
    let clsact = attachment_pin(pin_dir, AttachKind::Clsact, ifindex);
    if clsact.exists() {
        if let Ok(name) = ifname(ifindex) {
            match tc::qdisc_detach_program(&name, TcAttachType::Egress, PROGRAM_NAME) {
                Ok(()) => {}
                Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow!(
                        "cannot remove the guard's clsact filter from {name}: {e}; {}",
                        privilege_hint(&format!("run `tc filter del dev {name} egress` by hand"))
                    ))
                }
            }
        }
        remove_pin(&clsact)?;
    }
    let tcx = attachment_pin(pin_dir, AttachKind::Tcx, ifindex);
    detach_link(&tcx)?;
    remove_pin(&tcx)
}

/// Detaches the BPF link pinned at `path` now (BPF_LINK_DETACH). Removing the pin alone would
/// detach it only when bpffs frees the pin's inode, after an RCU grace period: `cleanup` or a
/// detach could return while the program still runs on the device. No pin is not an error.
pub(super) fn detach_link(path: &Path) -> Result<()> {
    let Some(link) = open_pin(path)? else {
        return Ok(());
    };
    let detach = LinkDetach {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &detach)
        .map(drop)
        .with_context(|| format!("cannot detach the link pinned at {}", path.display()))
}

/// The cgroup a cgroup link pinned at `path` is attached to (`bpf_link_info.cgroup.cgroup_id`):
/// 0 once that cgroup was removed (the link is then defunct), `None` without such a pin.
pub(super) fn link_cgroup_id(path: &Path) -> Result<Option<u64>> {
    /// The leading fields of `struct bpf_link_info` and its `cgroup` arm.
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        kind: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _pad2: u32,
    }
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let Some(link) = open_pin(path)? else {
        return Ok(None);
    };
    let mut info = LinkInfo::default();
    let get = GetInfo {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<LinkInfo>() as u32,
        info: &raw mut info as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &get)
        .with_context(|| format!("cannot read the link pinned at {}", path.display()))?;
    Ok(Some(info.cgroup_id))
}

// From the uapi bpf.h: the commands and the leading fields of their `union bpf_attr` arms.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct LinkDetach {
    link_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is the command's attribute struct, valid for the call; the kernel reads
    // (and for BPF_OBJ_GET_INFO_BY_FD writes through its pointer) only what it describes.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// The object pinned at `path`, or `None` when nothing is.
fn open_pin(path: &Path) -> Result<Option<OwnedFd>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let get = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    match bpf(BPF_OBJ_GET, &get) {
        // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open the pin {}", path.display())),
    }
}

pub(super) fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove the pin {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The name of `ifindex` in this thread's network namespace.
fn ifname(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes if_indextoname requires.
    let ret = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ret.is_null() {
        return Err(anyhow!(
            "no network device with ifindex {ifindex} in this network namespace"
        ));
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}
