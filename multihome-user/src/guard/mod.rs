//! The eBPF guard's loader: loads the embedded TC program, keeps its maps pinned across restarts,
//! attaches it to the egress of devices, and lets a later, different process (`status`,
//! `cleanup`, a daemon restarted after a crash) find and remove all of it from the pins alone.
//! The pin directory's layout is described in [`pins`].

mod attach;
mod maps;
mod pins;
mod shortcuts;
pub(crate) mod steering;

use std::{
    collections::BTreeSet,
    io,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    include_bytes_aligned,
    programs::{CgroupSock, ProgramError, SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};

pub use maps::PinnedMaps;
pub use pins::attachments;
pub(crate) use pins::prepare as prepare_pin_dir;

/// The program's name in the object and in the kernel (which keeps 15 characters).
pub const PROGRAM_NAME: &str = "multihome_guard";
/// The steering program's (`cgroup/sock_create`).
pub const STEER_PROGRAM_NAME: &str = "multihome_steer";

/// The TC program, built for the BPF target by build.rs.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/multihome-guard"));

/// How to hook the egress of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX where the kernel has it (6.6+), else clsact.
    #[default]
    Auto,
    /// A TCX link (pinned, so it survives the process).
    Tcx,
    /// A cls_bpf filter in direct-action mode on the clsact qdisc.
    Clsact,
}

/// How a device is actually hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    Tcx,
    Clsact,
}

impl std::fmt::Display for AttachKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachKind::Tcx => "tcx",
            AttachKind::Clsact => "clsact",
        })
    }
}

/// The loaded guard. It is also its maps: `put_entry`, `entries`, `counters`, ... (see
/// [`PinnedMaps`]) work on it directly.
pub struct Guard {
    ebpf: Ebpf,
    maps: PinnedMaps,
    pin_dir: PathBuf,
    mode: AttachMode,
    /// Devices this instance attached itself (as opposed to adopted ones): attaching again is a
    /// no-op, as the kernel refuses the same program twice on one TCX hook.
    mine: BTreeSet<u32>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Guard {
    /// Loads the program with its maps pinned under `pin_dir`, reusing pinned maps that fit the
    /// program (a restarted daemon keeps its entries and counters) and replacing those that do
    /// not. Attachments left by an earlier run stay in place and are listed by [`Self::attached`]
    /// until they are attached again (replaced by this program) or detached.
    pub fn load(pin_dir: &Path, mode: AttachMode) -> Result<Guard> {
        pins::prepare(pin_dir)?;
        for shape in &maps::SHAPES {
            let path = pin_dir.join(shape.name);
            if path.exists() && !shape.fits(&path) {
                log::warn!(
                    "replacing the pinned map {}: its layout does not fit this version",
                    path.display()
                );
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove the stale pin {}", path.display()))?;
            }
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = maps::SHAPES
            .iter()
            .map(|shape| (shape.name, pin_dir.join(shape.name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        // The program logs at debug level only; keep it silent unless we would print it.
        let level = log::max_level() as u8;
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        // The kernel's error stays the source (`check` reads its errno and the verifier's log).
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "cannot load the eBPF guard ({})",
                privilege_hint("run with --no-ebpf to use the rules only")
            ))
        })?;
        load_program(&mut ebpf)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("the guard's log is not readable: {e}");
                None
            }
        };
        let mut maps = PinnedMaps::open(pin_dir)?;
        maps.assign_slots()?;
        maps.sync_shortcuts()?;
        Ok(Guard {
            maps,
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            mode,
            mine: BTreeSet::new(),
            logger,
        })
    }

    /// Hooks the egress of `ifindex` (in the calling thread's network namespace), replacing an
    /// attachment of an earlier run; [`Self::attach_mode_of`] tells how it is hooked.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        if self.mine.contains(&ifindex) && self.attached().contains(&ifindex) {
            return Ok(());
        }
        let kind = attach::attach(program(&mut self.ebpf)?, &self.pin_dir, ifindex, self.mode)?;
        log::debug!("guard attached to ifindex {ifindex} ({kind})");
        self.mine.insert(ifindex);
        Ok(())
    }

    /// Attaches the steering program to the cgroup `root` (id `root_id`), loading it first:
    /// every IPv4/IPv6 socket created below `root` is then marked from the steering map, or
    /// refused. Replaces an earlier run's attachment.
    pub(crate) fn attach_steering(&mut self, root: &Path, root_id: u64) -> Result<()> {
        self.load_steering()?;
        let pin_dir = self.pin_dir.clone();
        steering::attach(self.steering_program()?, &pin_dir, root, root_id)
    }

    /// Loads the steering program unless it is loaded: a kernel without the cgroup hook
    /// (CONFIG_CGROUP_BPF) refuses it here, before anything is attached or created.
    pub(crate) fn load_steering(&mut self) -> Result<()> {
        let program = self.steering_program()?;
        if program.fd().is_err() {
            program.load().map_err(|e| {
                anyhow::Error::new(e).context(
                    "the kernel refused the steering program (cgroup/sock_create, which needs \
                     CONFIG_CGROUP_BPF)",
                )
            })?;
        }
        Ok(())
    }

    fn steering_program(&mut self) -> Result<&mut CgroupSock> {
        self.ebpf
            .program_mut(STEER_PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the embedded object has no program {STEER_PROGRAM_NAME}"))?
            .try_into()
            .context("the embedded steering program is not a cgroup/sock program")
    }

    /// How later [`Self::attach`] calls hook a device (`check` tries each way in turn).
    pub(crate) fn set_attach_mode(&mut self, mode: AttachMode) {
        self.mode = mode;
    }

    /// Unhooks `ifindex`, whoever hooked it; a device that is not hooked, or gone, is fine.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        self.mine.remove(&ifindex);
        attach::detach(&self.pin_dir, ifindex)
    }

    /// Puts back the pin directory and the maps' pins when someone removed them (`rm -r` of
    /// the directory detaches every TCX link with it; `attached` then reports them gone and the
    /// reconciler attaches again), so that `status`, `cleanup` and a restart find them.
    /// Whether anything had to be restored.
    pub(crate) fn restore_pins(&self) -> Result<bool> {
        let missing: Vec<&maps::Shape> = maps::SHAPES
            .iter()
            .filter(|shape| !self.pin_dir.join(shape.name).exists())
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        pins::prepare(&self.pin_dir)?;
        for shape in missing {
            let path = self.pin_dir.join(shape.name);
            self.ebpf
                .map(shape.name)
                .ok_or_else(|| anyhow!("the guard has no map {}", shape.name))?
                .pin(&path)
                .with_context(|| format!("cannot pin {} again", path.display()))?;
            log::warn!("the pin {} was removed: pinned again", path.display());
        }
        Ok(true)
    }

    /// The devices the guard is attached to, from the pins, less the TCX links someone detached
    /// by hand (`bpftool link detach` leaves the pin): the reconciler attaches those again.
    /// Call it in the daemon's network namespace (ifindexes are per namespace).
    pub fn attached(&self) -> BTreeSet<u32> {
        attachments(&self.pin_dir)
            .into_iter()
            .filter(|&(ifindex, kind)| {
                let live = kind != AttachKind::Tcx
                    || attach::tcx_link_attached(
                        &pins::attachment_pin(&self.pin_dir, kind, ifindex),
                        ifindex,
                    );
                if !live {
                    log::warn!("the guard's TCX link on if{ifindex} was detached: attaching again");
                }
                live
            })
            .map(|(ifindex, _)| ifindex)
            .collect()
    }

    /// How `ifindex` is hooked, if it is.
    pub fn attach_mode_of(&self, ifindex: u32) -> Option<AttachKind> {
        attachments(&self.pin_dir).get(&ifindex).copied()
    }

    /// Unloads the guard and removes everything it left: see [`remove_all`].
    pub fn remove_all(self) -> Result<Vec<String>> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        remove_all(&pin_dir)
    }

    /// Runs the program once on `frame` under BPF_PROG_TEST_RUN, with `ctx` as the `__sk_buff`
    /// (the kernel takes ifindex, mark, priority, cb and the gso fields from it and refuses the
    /// rest, the VLAN fields included), and returns the program's return code and the frame as
    /// the program left it. For tests and `check`.
    pub fn test_run(&mut self, frame: &[u8], ctx: &[u8]) -> Result<(i32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(ctx);
        let result = program(&mut self.ebpf)?
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN failed")?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value as i32, out))
    }

    /// The program's log, taken out of the guard so that its reader can wait on it apart from
    /// the guard; `None` unless debug logging is on (the only level the program logs at) and
    /// the log could be opened.
    pub(crate) fn take_log(&mut self) -> Option<GuardLog> {
        if log::max_level() < log::LevelFilter::Debug {
            return None;
        }
        self.logger.take().map(|logger| GuardLog { logger })
    }
}

/// The guard program's log records (aya-log).
pub(crate) struct GuardLog {
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
}

impl GuardLog {
    /// A descriptor that becomes readable when the program has logged something: the daemon
    /// waits on it and then calls [`Self::flush`], so the guard's messages cost no timer.
    pub(crate) fn fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.logger.as_fd().try_clone_to_owned()
    }

    /// Writes the pending records to the `log` crate.
    pub(crate) fn flush(&mut self) {
        self.logger.flush();
    }
}

impl Deref for Guard {
    type Target = PinnedMaps;
    fn deref(&self) -> &PinnedMaps {
        &self.maps
    }
}

impl DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut PinnedMaps {
        &mut self.maps
    }
}

/// Detaches every attachment recorded under `pin_dir` (in the calling thread's network
/// namespace) and removes all pins and the directory: what `multihome cleanup` does. Returns
/// what it removed, one line each; nothing when nothing was there.
pub fn remove_all(pin_dir: &Path) -> Result<Vec<String>> {
    // Steering first: no socket is marked any more before the marks' uplinks go.
    let mut removed = steering::detach_all(pin_dir)?;
    for (ifindex, kind) in attachments(pin_dir) {
        attach::detach(pin_dir, ifindex)?;
        removed.push(format!("guard attachment ({kind}) on ifindex {ifindex}"));
    }
    for shape in &maps::SHAPES {
        let path = pin_dir.join(shape.name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(format!("pinned map {}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| {
            format!(
                "cannot remove {} (something else is pinned there?)",
                pin_dir.display()
            )
        }),
        _ => Ok(removed),
    }
}

/// How long a load is tried again while the verifier keeps being interrupted.
const LOAD_PATIENCE: Duration = Duration::from_secs(1);

/// Loads the program into the kernel. The verifier gives up with EAGAIN when the loading thread
/// has a signal pending (a SIGHUP to the daemon, say) and is then simply tried again, as libbpf
/// does; the program takes tens of milliseconds to verify, a wide window.
fn load_program(ebpf: &mut Ebpf) -> Result<()> {
    let started = Instant::now();
    loop {
        match program(ebpf)?.load() {
            Ok(()) => return Ok(()),
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN)
                    && started.elapsed() < LOAD_PATIENCE =>
            {
                log::debug!("verifying the guard was interrupted by a signal: again");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("the kernel refused the eBPF guard (run with --no-ebpf)"))
            }
        }
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| anyhow!("the embedded object has no program {PROGRAM_NAME}"))?
        .try_into()
        .context("the embedded guard is not a TC classifier")
}

/// What to tell the operator after a failure: the capabilities when we lack them, else `otherwise`.
fn privilege_hint(otherwise: &str) -> String {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        "multihome needs CAP_BPF and CAP_NET_ADMIN (and CAP_SYS_ADMIN to mount bpffs): run it as \
         root or grant them"
            .to_owned()
    } else {
        otherwise.to_owned()
    }
}
