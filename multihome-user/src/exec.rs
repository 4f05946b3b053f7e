//! `multihome exec UPLINK [--] CMD [ARGS...]`: runs CMD, and everything it starts, in the
//! uplink's slice, so that every socket it creates carries the uplink's mark and leaves through
//! it. The process checks that the daemon steers the slice, moves itself into a scope of the
//! slice and then becomes CMD (exec): CMD's exit status is the command's own, and CMD runs with
//! the caller's identity and privileges, never more.
//!
//! Under systemd (PID 1) the scope is systemd's: `systemd-run --scope` creates a transient
//! `multihome-exec-PID.scope` in the slice and becomes CMD. Elsewhere multihome makes
//! `exec-PID.scope` itself; the daemon removes it once it is empty.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::cli::ExecArgs;
use crate::config::UplinkSpec;
use crate::guard::{steering, PinnedMaps};
use crate::privileges::{self, CAP_BPF};
use crate::steer::{self, cgroup2, Root};
use crate::Fatal;

/// How often a move into a fresh scope is tried again: the daemon leaves an empty scope alone
/// while its exec process lives, but an operator's `cleanup` may remove it just after mkdir.
const JOIN_ATTEMPTS: usize = 5;

pub(crate) fn main(args: ExecArgs) -> Result<ExitCode, Fatal> {
    let uplink = args
        .uplink
        .parse::<UplinkSpec>()
        .map_err(Fatal::usage)?
        .name;
    if let Some(cap) = privileges::missing(privileges::effective(), &[CAP_BPF]).first() {
        return Err(Fatal::usage(format!(
            "missing capability {} (to read the steering map), and multihome exec needs write \
             access to the cgroup tree: run it as root (sudo multihome exec ...)",
            cap.name
        )));
    }
    let root = Root::locate(&args.owned.cgroup_root).map_err(|e| Fatal::usage(format!("{e:#}")))?;
    let slice = steered_slice(&root, &args.owned.pin_dir, &uplink)?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Fatal::usage("no command given: multihome exec UPLINK -- CMD [ARGS...]"))?;
    let error = if let Some(unit) = systemd_slice_unit(&root, &uplink) {
        let mut cmd = Command::new("systemd-run");
        cmd.args(["--scope", "--quiet", "--collect"])
            .arg(format!("--slice={unit}"))
            .arg(format!("--unit=multihome-exec-{}", std::process::id()))
            .arg("--")
            .arg(program)
            .args(rest);
        as_caller(&mut cmd).exec()
    } else {
        join(&slice)?;
        let mut cmd = Command::new(program);
        cmd.args(rest);
        as_caller(&mut cmd).exec()
    };
    Err(not_run(program, &error))
}

/// The uplink's slice, once it is sure the daemon steers it: the directory exists, the steering
/// program is attached to the root, and the steering map gives the slice the uplink's mark.
fn steered_slice(root: &Root, pin_dir: &Path, uplink: &str) -> Result<std::path::PathBuf, Fatal> {
    let slice = root.slice(uplink);
    let not_steered = |why: String| {
        Fatal::usage(format!(
            "uplink {uplink} is not steered: {why}; is `multihome run` running with {uplink} as \
             an uplink (without --no-steer, with this --cgroup-root and --pin-dir)?"
        ))
    };
    if steering::links(pin_dir).is_empty() && PinnedMaps::open(pin_dir).is_ok() {
        return Err(Fatal::usage(format!(
            "uplink {uplink} is not steered: multihome runs (its maps are pinned in {}) but \
             steers no program onto an uplink; its log says why (`multihome check` shows whether \
             cgroup2 and the hook are there)",
            pin_dir.display()
        )));
    }
    let id = cgroup2::id(&slice)
        .map_err(|e| not_steered(format!("cannot find its slice {}: {e}", slice.display())))?;
    let root_id = root
        .id()
        .map_err(|e| not_steered(format!("{}: {e}", root.path.display())))?;
    if !steering::attached(pin_dir, root_id) {
        return Err(not_steered(format!(
            "no steering program is attached to {} (pins in {})",
            root.path.display(),
            pin_dir.display()
        )));
    }
    let maps = PinnedMaps::open(pin_dir).map_err(|e| not_steered(format!("{e:#}")))?;
    let steered = maps.steered().map_err(|e| not_steered(format!("{e:#}")))?;
    if !steered.contains_key(&id) {
        return Err(not_steered(format!(
            "the steering map has no entry for {}",
            slice.display()
        )));
    }
    Ok(slice)
}

/// Moves this process into a new scope of `slice`: every socket it (and then CMD) creates is
/// steered from here on.
fn join(slice: &Path) -> Result<(), Fatal> {
    let scope = slice.join(steer::exec_scope_name(std::process::id()));
    let mut last = None;
    for _ in 0..JOIN_ATTEMPTS {
        let moved =
            cgroup2::create(&scope).and_then(|()| std::fs::write(scope.join("cgroup.procs"), b"0"));
        match moved {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Fatal::usage(format!(
                    "cannot move into {}: {e}: multihome exec needs root (write access to the \
                     cgroup tree, CAP_DAC_OVERRIDE)",
                    scope.display()
                )))
            }
            Err(e) => {
                return Err(Fatal::from(anyhow::anyhow!(
                    "cannot move into {}: {e}",
                    scope.display()
                )))
            }
        }
    }
    Err(Fatal::from(anyhow::anyhow!(
        "cannot move into {}: {}",
        scope.display(),
        last.map_or_else(String::new, |e| e.to_string())
    )))
}

/// The slice unit to give `systemd-run` when systemd runs this host and the root is its
/// `multihome.slice` at the top of the hierarchy: systemd then owns the scope. `None` otherwise.
fn systemd_slice_unit(root: &Root, uplink: &str) -> Option<String> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let top = cgroup2::mount_point().ok()?.join(steer::DEFAULT_ROOT);
    (root.path == top).then(|| cgroup2::slice_name(uplink))
}

/// CMD runs as the caller: a set-uid or set-gid installation of multihome gives up its
/// effective ids first (the environment, the supplementary groups and the caller's own
/// capabilities stay as they were).
fn as_caller(cmd: &mut Command) -> &mut Command {
    // SAFETY: the real ids, read before the fork, are plain integers.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (uid, gid) != (euid, egid) {
        // SAFETY: the closure only calls async-signal-safe setresgid/setresuid.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setresgid(gid, gid, gid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Why CMD did not run, with a shell's exit status: 127 not found, 126 not executable.
fn not_run(program: &OsString, error: &io::Error) -> Fatal {
    Fatal {
        status: if error.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        },
        message: format!("cannot run {}: {error}", program.to_string_lossy()),
    }
}
