//! What this kernel accepts of the guard, found out rather than looked up: in private network
//! and mount namespaces (see [`sandbox`]) the probe creates a scratch veth pair, loads the
//! embedded guard with the daemon's own [`Guard`] code, attaches it by TCX, by clsact and as
//! `--attach auto` would, and runs it once under BPF_PROG_TEST_RUN on a misrouted packet.
//! Each step's outcome is kept with the kernel's reason; [`verdict`] turns them into what
//! works and what to fix. Nothing of it outlives the probe's thread.

mod failure;
mod sandbox;
pub mod verdict;

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Result};
use multihome_ebpf::Egress;
use serde::Serialize;

use crate::guard::{AttachKind, AttachMode, Guard};
pub use failure::{Failure, Kind};

/// How one step went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Step {
    Ok,
    Failed(Failure),
    /// Not tried: an earlier step failed.
    #[default]
    Skipped,
}

impl Step {
    pub fn ok(&self) -> bool {
        *self == Step::Ok
    }

    pub fn failure(&self) -> Option<&Failure> {
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
pub struct Probe {
    /// The private network and mount namespaces, with a bpffs of their own.
    pub sandbox: Step,
    /// The scratch veth pair in them.
    pub device: Step,
    /// Loading the guard (maps and program: the verifier's verdict).
    pub load: Step,
    /// Attaching it by a TCX link, then detaching it.
    pub tcx: Step,
    /// Attaching it by a cls_bpf filter on the clsact qdisc, then detaching it.
    pub clsact: Step,
    /// Attaching it as `--attach auto` (the default) does, then detaching it.
    pub auto: Step,
    /// What `--attach auto` used.
    pub auto_uses: Option<AttachKind>,
    /// A misrouted packet under BPF_PROG_TEST_RUN: redirected (bpf_redirect_neigh) and counted.
    pub redirect: Step,
}

/// The scratch devices' names, in the private namespace only.
const DEVICE: &str = "mhprobe0";
const PEER: &str = "mhprobe1";
/// A source address the guard's entry gives to `PEER` (a documentation range).
const MISROUTED_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// From the uapi pkt_cls.h.
const TC_ACT_REDIRECT: i32 = 7;

/// Runs every step it can and reports each.
pub fn run() -> Probe {
    let mut probe = Probe::default();
    match sandbox::isolated(|| inside(&mut probe)) {
        Ok(()) => probe.sandbox = Step::Ok,
        Err(failure) => probe.sandbox = Step::Failed(failure),
    }
    probe
}

/// The steps, in the private namespaces.
fn inside(probe: &mut Probe) {
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
    if let Err(e) = guard.remove_all() {
        // The private bpffs goes with the namespace anyway.
        log::debug!("removing the probe's pins: {e:#}");
    }
}

/// A veth pair, left down: attaching and BPF_PROG_TEST_RUN need no traffic.
fn scratch_devices() -> Result<(u32, u32), Failure> {
    let what = format!("cannot create a scratch veth pair ({DEVICE}, {PEER})");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Failure::os(&what, e))?;
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
