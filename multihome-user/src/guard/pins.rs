//! The pin directory: a bpf filesystem directory holding everything that must outlive a
//! `multihome run` process, so that a restarted daemon, `status` and `cleanup` find it.
//!
//! Layout of `<pin_dir>` (default `/sys/fs/bpf/multihome`):
//! - `SRC_V4`, `SRC_V6`, `COUNTERS`, `OWN_SOURCES`, `SOURCE_FILTER`: the maps (`maps::SHAPES`;
//!   BTF maps, so `bpftool map dump pinned` names their fields);
//! - `link_<ifindex>`: the TCX link attaching the guard to the egress of `ifindex`; removing the
//!   pin (with no process holding the link) detaches it;
//! - `clsact_<ifindex>`: the program itself, pinned as the record of a cls_bpf filter named
//!   `multihome_guard` on the clsact egress hook of `ifindex` (bpffs holds no plain files, and a
//!   filter cannot be pinned); detaching deletes the filters of that name, then this pin.
//!   While a device moves from clsact to TCX both pins exist for a moment, and both hook it:
//!   `attachments` says `tcx+clsact` then.
//! - `<MAP>:old`: a map of an earlier release whose layout this one does not share, renamed
//!   aside at load (its programs keep using it until they are replaced), removed with any other
//!   map this release does not have once no device runs an earlier program.
//!
//! Ifindexes are those of the network namespace the daemon attaches in.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{privilege_hint, AttachKind};

const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The two records of an attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Record {
    /// `link_<ifindex>`: a TCX link.
    Link,
    /// `clsact_<ifindex>`: a cls_bpf filter on the clsact qdisc.
    Filter,
}

/// The pin recording that `ifindex` is attached the `record` way.
pub(super) fn attachment_pin(pin_dir: &Path, record: Record, ifindex: u32) -> PathBuf {
    let prefix = match record {
        Record::Link => "link_",
        Record::Filter => "clsact_",
    };
    pin_dir.join(format!("{prefix}{ifindex}"))
}

/// Every attachment recorded under `pin_dir`; none when the directory does not exist or cannot
/// be read (logged: status and reconciliation carry on with what they know).
pub fn attachments(pin_dir: &Path) -> BTreeMap<u32, AttachKind> {
    let mut found = BTreeMap::new();
    let dir = match std::fs::read_dir(pin_dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return found,
        Err(e) => {
            log::warn!(
                "cannot list {}: {e}; {}",
                pin_dir.display(),
                privilege_hint("check the pin directory")
            );
            return found;
        }
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let parsed = if let Some(n) = name.strip_prefix("link_") {
            n.parse().ok().map(|n| (n, AttachKind::Tcx))
        } else if let Some(n) = name.strip_prefix("clsact_") {
            n.parse().ok().map(|n| (n, AttachKind::Clsact))
        } else {
            None
        };
        if let Some((ifindex, kind)) = parsed {
            let entry = found.entry(ifindex).or_insert(kind);
            if *entry != kind {
                *entry = AttachKind::Both;
            }
        }
    }
    found
}

/// Where a pinned map of another layout goes while the programs using it are replaced.
pub(super) fn aside(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(format!("{map}:old"))
}

/// The maps pinned under `pin_dir` that are not among `current`: an earlier release's,
/// renamed aside or no longer used.
pub(super) fn foreign_maps(pin_dir: &Path, current: &[&str]) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|entry| !current.contains(&entry.file_name().to_string_lossy().as_ref()))
        .map(|entry| entry.path())
        .filter(|path| kind_of(path) == Some(Pinned::Map))
        .collect()
}

/// What kind of BPF object is pinned somewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pinned {
    Map,
    Program,
    Link,
}

/// The kind of the object pinned at `path`, as the kernel describes its descriptor in
/// /proc/self/fdinfo (BPF_OBJ_GET_INFO_BY_FD answers for maps, programs and links alike, so
/// it cannot tell them apart).
pub(super) fn kind_of(path: &Path) -> Option<Pinned> {
    let fd = open_pin(path).ok()??;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines().find_map(|line| match line.split(':').next()? {
        "map_type" => Some(Pinned::Map),
        "prog_type" => Some(Pinned::Program),
        "link_type" => Some(Pinned::Link),
        _ => None,
    })
}

// From the uapi bpf.h.
const BPF_OBJ_GET: libc::c_long = 7;

/// The bpf(2) system call with command `cmd` and its attribute struct.
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is the command's attribute struct, valid for the call; the kernel reads
    // only `size_of::<T>()` bytes of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// The BPF object pinned at `path`, or `None` when nothing is pinned there.
pub(super) fn open_pin(path: &Path) -> Result<Option<OwnedFd>> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
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

/// Makes sure `pin_dir` exists on a bpf filesystem, mounting bpffs at /sys/fs/bpf when the
/// directory is meant to live there and nothing is mounted yet.
pub(crate) fn prepare(pin_dir: &Path) -> Result<()> {
    if pin_dir.starts_with(BPFFS_ROOT) && !is_bpffs(Path::new(BPFFS_ROOT)) {
        mount_bpffs()?;
    }
    // Refuse before creating anything: a wrong --pin-dir must leave no directory behind.
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        bail!(
            "the pin directory {} is not on a bpf filesystem: choose one under {BPFFS_ROOT} \
             (--pin-dir) or mount one there (mount -t bpf bpf DIR)",
            pin_dir.display()
        );
    }
    std::fs::create_dir_all(pin_dir).with_context(|| {
        format!(
            "cannot create the pin directory {}; {}",
            pin_dir.display(),
            privilege_hint("choose a writable --pin-dir on a bpf filesystem")
        )
    })
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } == 0;
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    let magic = fs.f_type as i64;
    ok && magic == BPF_FS_MAGIC
}

fn mount_bpffs() -> Result<()> {
    let target = CString::new(BPFFS_ROOT)?;
    let fstype = CString::new("bpf")?;
    let options = CString::new("mode=0700")?;
    // SAFETY: all pointers are valid C strings for the duration of the call.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if ret != 0 {
        let e = io::Error::last_os_error();
        bail!(
            "no bpf filesystem at {BPFFS_ROOT} and mounting one failed ({e}); mount it \
             (mount -t bpf bpf {BPFFS_ROOT}) or grant CAP_SYS_ADMIN"
        );
    }
    Ok(())
}
