//! What this kernel accepts of the guard, found out rather than looked up: in private network
//! and mount namespaces (see [`sandbox`]) the probe creates a scratch veth pair, loads the
//! embedded guard with the daemon's own [`Guard`] code, attaches it by TCX, by clsact and as
//! `--attach auto` would, and runs it once under BPF_PROG_TEST_RUN on a misrouted packet.
//! Each step's outcome is kept with the kernel's reason; [`verdict`] turns them into what
//! works and what to fix. Nothing of it outlives the probe's thread.

mod failure;
mod sandbox;
pub(crate) mod verdict;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use multihome_ebpf::Egress;
use serde::Serialize;

use crate::guard::{steering, AttachKind, AttachMode, Guard};
use crate::runtime;
use crate::steer::{self, cgroup2};
pub(crate) use failure::{Failure, Kind};

/// How one step went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum Step {
    Ok,
    Failed(Failure),
    /// Not tried: an earlier step failed.
    #[default]
    Skipped,
}

impl Step {
    pub(crate) fn ok(&self) -> bool {
        *self == Step::Ok
    }

    pub(crate) fn failure(&self) -> Option<&Failure> {
        match self {
            Step::Failed(f) => Some(f),
            _ => None,
        }
    }

    fn of<T>(result: Result<T>) -> Step {
        match result {
            Ok(_) => Step::Ok,
            Err(e) => Step::Failed(Failure::of(&e)),
        }
    }
}

/// Every step's outcome, in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Probe {
    /// The private network and mount namespaces, with a bpffs of their own.
    pub(crate) sandbox: Step,
    /// The scratch veth pair in them.
    pub(crate) device: Step,
    /// Loading the guard (maps and program: the verifier's verdict).
    pub(crate) load: Step,
    /// Attaching it by a TCX link, then detaching it.
    pub(crate) tcx: Step,
    /// Attaching it by a cls_bpf filter on the clsact qdisc, then detaching it.
    pub(crate) clsact: Step,
    /// Attaching it as `--attach auto` (the default) does, then detaching it.
    pub(crate) auto: Step,
    /// What `--attach auto` used.
    pub(crate) auto_uses: Option<AttachKind>,
    /// A misrouted packet under BPF_PROG_TEST_RUN: redirected (bpf_redirect_neigh) and counted.
    pub(crate) redirect: Step,
    /// Loading the steering program (cgroup/sock_create) and attaching it by a link to a
    /// throw-away cgroup beside the steering root, then detaching it; skipped without cgroup2.
    pub(crate) steer: Step,
}

/// The throw-away cgroup of the probe's steering step: `multihome-probe-PID`.
const PROBE_CGROUP_PREFIX: &str = "multihome-probe-";

/// The scratch devices' names, in the private namespace only.
const DEVICE: &str = "mhprobe0";
const PEER: &str = "mhprobe1";
/// A source address the guard's entry gives to `PEER` (a documentation range).
const MISROUTED_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// From the uapi pkt_cls.h.
const TC_ACT_REDIRECT: i32 = 7;

/// Runs every step it can and reports each; the steering step makes its cgroup in
/// `steer_parent` (none: skipped).
pub(crate) fn run(steer_parent: Option<&Path>) -> Probe {
    let mut probe = Probe::default();
    // Made and removed here, with the caller's privileges: the probe's thread keeps only the
    // daemon's capabilities, and a cgroup2 root is often mode 0555 (CAP_DAC_OVERRIDE).
    let cgroup = steer_parent.map(scratch_cgroup);
    match sandbox::isolated(|| inside(&mut probe, cgroup.as_ref())) {
        Ok(()) => probe.sandbox = Step::Ok,
        Err(failure) => probe.sandbox = Step::Failed(failure),
    }
    if let Some(Ok(dir)) = &cgroup {
        if let Err(e) = std::fs::remove_dir(dir) {
            probe.steer = Step::Failed(Failure::os(
                &format!("cannot remove the probe's cgroup {}", dir.display()),
                e,
            ));
        }
    }
    probe
}

/// The steps, in the private namespaces.
fn inside(probe: &mut Probe, steer_cgroup: Option<&Result<PathBuf>>) {
    let (device, peer) = match scratch_devices() {
        Ok(ifindexes) => ifindexes,
        Err(failure) => {
            probe.device = Step::Failed(failure);
            return;
        }
    };
    probe.device = Step::Ok;
    let pin_dir = Path::new(sandbox::BPFFS).join("multihome-probe");
    let mut guard = match Guard::load(&pin_dir, AttachMode::Auto) {
        Ok(guard) => guard,
        Err(e) => {
            probe.load = Step::Failed(Failure::of(&e));
            return;
        }
    };
    probe.load = Step::Ok;
    for mode in [AttachMode::Tcx, AttachMode::Clsact, AttachMode::Auto] {
        guard.set_attach_mode(mode);
        let attached = guard.attach(device);
        if mode == AttachMode::Auto {
            // Where auto ends up: clsact first, TCX after the move where the kernel has it.
            guard.finish_moves();
            probe.auto_uses = guard.attach_mode_of(device);
        }
        let step = match attached {
            Ok(()) => match guard.detach(device) {
                Ok(()) => Step::Ok,
                Err(e) => {
                    let failure = Failure::of(&e);
                    Step::Failed(Failure {
                        reason: format!("attached, but detaching failed: {}", failure.reason),
                        ..failure
                    })
                }
            },
            Err(e) => Step::Failed(Failure::of(&e)),
        };
        match mode {
            AttachMode::Tcx => probe.tcx = step,
            AttachMode::Clsact => probe.clsact = step,
            AttachMode::Auto => probe.auto = step,
        }
    }
    probe.redirect = Step::of(redirect(&mut guard, device, peer));
    probe.steer = match steer_cgroup {
        Some(Ok(dir)) => Step::of(steer(&mut guard, dir, &pin_dir)),
        Some(Err(e)) => Step::Failed(Failure::of(e)),
        None => Step::Skipped,
    };
    if let Err(e) = guard.remove_all() {
        // The private bpffs goes with the namespace anyway.
        log::debug!("removing the probe's pins: {e:#}");
    }
}

/// A veth pair, left down: attaching and BPF_PROG_TEST_RUN need no traffic.
fn scratch_devices() -> Result<(u32, u32), Failure> {
    let what = format!("cannot create a scratch veth pair ({DEVICE}, {PEER})");
    let runtime = runtime::current_thread().map_err(|e| Failure::os(&what, e))?;
    runtime
        .block_on(async {
            // Made on this thread, so the socket is in the private network namespace.
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            let veth = rtnetlink::LinkVeth::new(DEVICE, PEER).build();
            handle
                .link()
                .add(veth)
                .execute()
                .await
                .map_err(|e| match e {
                    rtnetlink::Error::NetlinkError(message) => message.to_io(),
                    other => std::io::Error::other(other.to_string()),
                })
        })
        .map_err(|e| Failure::os(&what, e))?;
    let ifindex = |name| ifindex(name).map_err(|e| Failure::os(&what, e));
    Ok((ifindex(DEVICE)?, ifindex(PEER)?))
}

fn ifindex(name: &str) -> std::io::Result<u32> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: a valid C string; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        ifindex => Ok(ifindex),
    }
}

/// A new empty cgroup in `parent` for the steering step. The cgroup tree is the host's, not
/// the sandbox's: a probe killed half-way leaves the empty directory (its link goes with the
/// process), which the next probe removes.
fn scratch_cgroup(parent: &Path) -> Result<PathBuf> {
    sweep_probe_cgroups(parent);
    let dir = parent.join(format!("{PROBE_CGROUP_PREFIX}{}", std::process::id()));
    cgroup2::create(&dir).with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
    Ok(dir)
}

/// Attaches the steering program to the cgroup `dir` as the daemon does (a pinned link, in
/// the private bpffs here), then detaches it.
fn steer(guard: &mut Guard, dir: &Path, pin_dir: &Path) -> Result<()> {
    let id = cgroup2::id(dir)?;
    guard.attach_steering(dir, id)?;
    steering::detach_all(pin_dir)?;
    Ok(())
}

/// Removes the empty cgroups of earlier probes that were killed.
fn sweep_probe_cgroups(parent: &Path) {
    for name in cgroup2::children(parent) {
        let pid = name
            .strip_prefix(PROBE_CGROUP_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !steer::process_lives(pid)) {
            let _ = std::fs::remove_dir(parent.join(name));
        }
    }
}

/// Gives `MISROUTED_SOURCE` to `peer`, runs a packet from it leaving by `device`, and wants it
/// redirected to `peer` and counted as such.
fn redirect(guard: &mut Guard, device: u32, peer: u32) -> Result<()> {
    let entry = Egress {
        uplink_ifindex: peer,
        mtu: 1500,
        prefix_len: 24,
        ..bytemuck::Zeroable::zeroed()
    };
    guard.put_entry(MISROUTED_SOURCE.into(), &entry)?;
    let (verdict, _) = guard.test_run(&udp_frame(MISROUTED_SOURCE), &skb_on(device))?;
    let counted = guard
        .counters()?
        .get(&peer)
        .map_or(0, |counters| counters.redirected);
    if verdict != TC_ACT_REDIRECT || counted != 1 {
        bail!(
            "a misrouted packet got verdict {verdict} (a redirect is {TC_ACT_REDIRECT}) and \
             {counted} redirect(s) were counted (1 expected)"
        );
    }
    Ok(())
}

/// An Ethernet frame with a minimal IPv4 UDP packet from `src` to 198.51.100.1.
fn udp_frame(src: Ipv4Addr) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let total_len: u16 = 20 + 8;
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&total_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&[198, 51, 100, 1]);
    frame.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    frame
}

/// A `__sk_buff` for BPF_PROG_TEST_RUN up to its `ifindex` field (offset 40): the kernel
/// zero-fills the rest.
fn skb_on(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 44];
    ctx[40..].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}
