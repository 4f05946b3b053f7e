//! Hooking the loaded program to a device's egress, using only the pin directory (see `pins`)
//! as the record, so that a later process (a restart, an upgrade, `cleanup`) finds everything.
//!
//! Never unhook first and hook again after: a packet that passes in between goes out unguarded
//! (measured: deleting and adding a clsact filter back to back let 75 % of a 2,000 packets/s
//! stream through). What is hooked already is replaced in place: a TCX link is updated to the
//! new program (`BPF_LINK_UPDATE`: the kernel swaps the program in the link's slot, no grace
//! period, 3 us), a cls_bpf filter is replaced at its own priority and handle (the classifier
//! swaps it under RCU). Moving a device from one kind to the other hooks the new kind before
//! the old one goes: for that moment both run (TCX first, then the clsact filters), and the
//! guard passes a packet on (TC_ACT_UNSPEC) or ends the chain by redirecting it, so a packet
//! meets one guard or both, and both decide alike (tested in guard_traffic).

use std::{
    ffi::CStr,
    io,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use anyhow::{anyhow, Context, Result};
use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcError},
    ProgramInfo, SchedClassifier,
};

use super::pins::{attachment_pin, bpf, open_pin, Record};
use super::{privilege_hint, tc as netlink_tc, PROGRAM_NAME};

/// Hooks `program` to the egress of `ifindex` by a TCX link: the pinned link is updated in
/// place when there is a live one, else a new link is made and pinned; a clsact filter of the
/// guard on the device goes afterwards.
pub(super) fn attach_tcx(
    program: &mut SchedClassifier,
    pin_dir: &Path,
    ifindex: u32,
) -> Result<()> {
    let name = ifname(ifindex)?;
    let pin = attachment_pin(pin_dir, Record::Link, ifindex);
    if link_program(&pin, ifindex, &name).is_some() {
        update_link(&pin, program).context("cannot update the guard's TCX link in place")?;
    } else {
        let id = program.attach_with_options(
            &name,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        // A pin left by a link someone detached by hand.
        detach_link(&pin)?;
        remove_pin(&pin)?;
        // Dropping the returned `PinnedLink` closes our fd; the pin keeps the link alive.
        link.pin(&pin)?;
    }
    remove_clsact_filter(pin_dir, ifindex, &name)
}

/// Hooks `program` to the egress of `ifindex` by a cls_bpf filter on the clsact qdisc,
/// replacing the guard's filter there in place if it has one; a TCX link of the guard on the
/// device goes afterwards. Whether it had to add the clsact qdisc.
pub(super) fn attach_clsact(
    program: &mut SchedClassifier,
    pin_dir: &Path,
    ifindex: u32,
) -> Result<bool> {
    let name = ifname(ifindex)?;
    let mut added_qdisc = false;
    let id = match netlink_tc::named_filter(ifindex, PROGRAM_NAME)? {
        Some(filter) => {
            let link = SchedClassifierLink::attached(
                &name,
                TcAttachType::Egress,
                filter.priority,
                filter.handle.into(),
                None,
            )?;
            program.attach_to_link(link)?
        }
        None => {
            match tc::qdisc_add_clsact(&name) {
                Ok(()) => added_qdisc = true,
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).context("cannot add the clsact qdisc"),
            }
            program.attach_with_options(
                &name,
                TcAttachType::Egress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )?
        }
    };
    // The filter must outlive this process: dropping aya's netlink link would delete it, and it
    // holds no file descriptor, so forgetting it leaks nothing.
    std::mem::forget(program.take_link(id)?);
    // The record names the program that runs there now; swapped in by a rename, so that the pin
    // is never missing.
    let pin = attachment_pin(pin_dir, Record::Filter, ifindex);
    let fresh = pin.with_file_name(format!("{}:new", file_name(&pin)));
    remove_pin(&fresh)?;
    program.pin(&fresh)?;
    std::fs::rename(&fresh, &pin)
        .with_context(|| format!("cannot rename {} to {}", fresh.display(), pin.display()))?;
    let tcx = attachment_pin(pin_dir, Record::Link, ifindex);
    detach_link(&tcx)?;
    remove_pin(&tcx)?;
    Ok(added_qdisc)
}

/// Deletes the clsact qdisc of `ifindex` if nothing is filtered there any more (no filter on
/// either hook): for a qdisc the guard added itself on its way to TCX.
pub(super) fn remove_qdisc_if_unused(ifindex: u32) -> Result<()> {
    let used = !netlink_tc::filters(ifindex, netlink_tc::Hook::Egress)?.is_empty()
        || !netlink_tc::filters(ifindex, netlink_tc::Hook::Ingress)?.is_empty();
    if !used {
        netlink_tc::delete_clsact(ifindex)
            .with_context(|| format!("cannot delete the clsact qdisc of if{ifindex}"))?;
    }
    Ok(())
}

/// The id of the program that hooks `ifindex` according to its pins and the kernel: a live
/// TCX link's, else the guard's clsact filter's. `None` when neither is there (a link detached
/// by hand, a filter deleted by hand). What cannot be checked (the device is gone) counts as
/// hooked, by the program the pin names: the pin is the record, and a detach removes it.
pub(super) fn hooked_by(pin_dir: &Path, ifindex: u32, record: Record) -> Option<u32> {
    let pin = attachment_pin(pin_dir, record, ifindex);
    let Ok(name) = ifname(ifindex) else {
        return pinned_program(&pin, record).or(Some(0));
    };
    match record {
        Record::Link => link_program(&pin, ifindex, &name),
        Record::Filter => match netlink_tc::named_filter(ifindex, PROGRAM_NAME) {
            Ok(filter) => filter.map(|f| f.program_id.unwrap_or(0)),
            Err(_) => pinned_program(&pin, record).or(Some(0)),
        },
    }
}

/// The program a pin names: a link's program, or the pinned program itself.
fn pinned_program(pin: &Path, record: Record) -> Option<u32> {
    match record {
        Record::Link => {
            let link = PinnedLink::from_pin(pin).ok()?;
            Some(FdLink::from(link).info().ok()?.program_id())
        }
        Record::Filter => Some(ProgramInfo::from_pin(pin).ok()?.id()),
    }
}

/// The program of the TCX link pinned at `pin` if that link is attached to the egress of
/// `ifindex` (`name`) in the caller's network namespace: `bpftool link detach` leaves the pin of
/// a detached link behind. Anything that cannot be checked counts as attached.
fn link_program(pin: &Path, ifindex: u32, name: &str) -> Option<u32> {
    let link = PinnedLink::from_pin(pin).ok()?;
    let Ok(info) = FdLink::from(link).info() else {
        return Some(0);
    };
    match SchedClassifier::query_tcx(name, TcAttachType::Egress) {
        Ok((_, programs)) => programs
            .iter()
            .any(|p| p.id() == info.program_id())
            .then_some(info.program_id()),
        Err(_) => {
            log::debug!(
                "cannot query the TCX programs of {name} (if{ifindex}): counted as attached"
            );
            Some(info.program_id())
        }
    }
}

/// Removes the guard from the egress of `ifindex`, whichever way it was attached and by whichever
/// process; nothing attached is not an error, nor is a device that is gone.
pub(super) fn detach(pin_dir: &Path, ifindex: u32) -> Result<()> {
    if let Ok(name) = ifname(ifindex) {
        remove_clsact_filter(pin_dir, ifindex, &name)?;
    } else {
        remove_pin(&attachment_pin(pin_dir, Record::Filter, ifindex))?;
    }
    let tcx = attachment_pin(pin_dir, Record::Link, ifindex);
    detach_link(&tcx)?;
    remove_pin(&tcx)
}

/// Deletes the guard's clsact filter from `name` (`ifindex`) and its pin, if there is one.
fn remove_clsact_filter(pin_dir: &Path, ifindex: u32, name: &str) -> Result<()> {
    let pin = attachment_pin(pin_dir, Record::Filter, ifindex);
    if !pin.exists() {
        return Ok(());
    }
    match tc::qdisc_detach_program(name, TcAttachType::Egress, PROGRAM_NAME) {
        Ok(()) => {}
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow!(
                "cannot remove the guard's clsact filter from {name}: {e}; {}",
                privilege_hint(&format!("run `tc filter del dev {name} egress` by hand"))
            ))
        }
    }
    remove_pin(&pin)
}

// From the uapi bpf.h: the commands used here and the leading fields of their `union bpf_attr`
// arms.
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Points the BPF link pinned at `pin` at `program` (BPF_LINK_UPDATE): any kind of link (TCX,
/// cgroup, ...), in place, with no moment in which the hook runs nothing.
fn update_link(pin: &Path, program: &SchedClassifier) -> Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let link = open_pin(pin)?.ok_or_else(|| anyhow!("no link pinned at {}", pin.display()))?;
    let prog = program.fd()?;
    let update = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &update)
        .map(drop)
        .with_context(|| format!("BPF_LINK_UPDATE of {}", pin.display()))
}

/// Detaches the BPF link pinned at `path` now (BPF_LINK_DETACH). Removing the pin alone would
/// detach it only when bpffs frees the pin's inode, after an RCU grace period: `cleanup` or a
/// detach could return while the program still runs on the device. No pin, or a link that is
/// detached already, is not an error.
pub(super) fn detach_link(path: &Path) -> Result<()> {
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let Some(link) = open_pin(path)? else {
        return Ok(());
    };
    let detach = LinkDetach {
        link_fd: link.as_raw_fd() as u32,
    };
    match bpf(BPF_LINK_DETACH, &detach) {
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(()),
        other => other
            .map(drop)
            .with_context(|| format!("cannot detach the link pinned at {}", path.display())),
    }
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

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

pub(super) fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove the pin {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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
