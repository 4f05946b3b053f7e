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
//!
//! Ifindexes are those of the network namespace the daemon attaches in.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{privilege_hint, AttachKind};

const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The pin recording how `ifindex` is attached.
pub(super) fn attachment_pin(pin_dir: &Path, kind: AttachKind, ifindex: u32) -> PathBuf {
    let prefix = match kind {
        AttachKind::Tcx => "link_",
        AttachKind::Clsact => "clsact_",
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
            found.insert(ifindex, kind);
        }
    }
    found
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
