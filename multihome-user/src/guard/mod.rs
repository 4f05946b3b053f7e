//! The eBPF guard's loader: loads the embedded TC program, keeps its maps pinned across restarts,
//! attaches it to the egress of devices, and lets a later, different process (`status`,
//! `cleanup`, a daemon restarted after a crash) find and remove all of it from the pins alone.
//! The pin directory's layout is described in [`pins`].

mod attach;
mod maps;
mod pins;
mod shortcuts;
pub(crate) mod steering;
mod tc;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    include_bytes_aligned,
    programs::{CgroupSock, SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};

pub use maps::PinnedMaps;
pub use pins::attachments;
pub(crate) use pins::prepare as prepare_pin_dir;
use pins::Record;

/// The program's name in the object and in the kernel (which keeps 15 characters).
pub const PROGRAM_NAME: &str = "multihome_guard";
/// The steering program's (`cgroup/sock_create`).
pub const STEER_PROGRAM_NAME: &str = "multihome_steer";

/// The TC program, built for the BPF target by build.rs.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/multihome-guard"));

/// The embedded eBPF object, as [`Guard::load`] loads it: the privileged tests load it with
/// another map layout to stand in for an older release.
pub fn object() -> &'static [u8] {
    OBJECT
}

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
    /// Both at once, for the moment of a move from clsact to TCX (see `attach`).
    #[serde(rename = "tcx+clsact")]
    Both,
}

impl std::fmt::Display for AttachKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachKind::Tcx => "tcx",
            AttachKind::Clsact => "clsact",
            AttachKind::Both => "tcx+clsact",
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
    /// The kernel's id of this instance's program.
    program_id: u32,
    /// Devices this instance hooked itself: attaching again is a no-op while they stay hooked.
    mine: BTreeSet<u32>,
    /// Auto mode: devices hooked by clsact for now, to move to TCX one by one in the
    /// background (see [`Self::move_one`]), with whether their clsact qdisc was added for it.
    moves: BTreeMap<u32, bool>,
    /// Moves that met a passing obstacle (an earlier link of the same program on the device
    /// that the kernel has not released yet, after its pin was removed): tried again once the
    /// hooks are next read (the watchdog's audit, a reload, a full pass).
    later: BTreeMap<u32, bool>,
    /// Auto mode: TCX refused a move once; the devices stay on clsact.
    tcx_refused: bool,
    /// Devices hooked by another program (an earlier instance's) as last read, not yet hooked
    /// again or unhooked; `None` until read. Once none is left, the hand-over is done.
    outdated: Option<BTreeSet<u32>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// The devices the guard is hooked to, as the pins and the kernel say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    pub guarded: BTreeSet<u32>,
    /// Of `guarded`, those running another program than this guard's: an earlier instance's,
    /// maybe of an older release, to be replaced in place.
    pub outdated: BTreeSet<u32>,
}

impl Guard {
    /// Loads the program with its maps pinned under `pin_dir`, reusing pinned maps that fit the
    /// program (a restarted daemon keeps its entries and counters). A pinned map of another
    /// layout is renamed aside, not removed: the program of the earlier release still uses it
    /// until it is replaced (see [`Hooks::outdated`]), and it goes once that is done.
    /// Attachments left by an earlier run stay in place until they are attached again
    /// (replaced in place by this program) or detached.
    pub fn load(pin_dir: &Path, mode: AttachMode) -> Result<Guard> {
        // The loader's feature probes, the BTF and the program: none interrupted (EAGAIN).
        let _held = SignalsHeld::new();
        pins::prepare(pin_dir)?;
        for shape in &maps::SHAPES {
            let path = pin_dir.join(shape.name);
            if path.exists() && !shape.fits(&path) {
                let aside = pins::aside(pin_dir, shape.name);
                log::warn!(
                    "the pinned map {} has another layout than this version's: renamed to {} \
                     until the devices run this version's program",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(&path, &aside).with_context(|| {
                    format!("cannot rename {} to {}", path.display(), aside.display())
                })?;
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
        let program_id = program(&mut ebpf)?
            .info()
            .context("cannot read the loaded guard's id")?
            .id();
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
            program_id,
            mine: BTreeSet::new(),
            moves: BTreeMap::new(),
            later: BTreeMap::new(),
            tcx_refused: false,
            outdated: None,
            logger,
        })
    }

    /// Hooks the egress of `ifindex` (in the calling thread's network namespace) with this
    /// guard, replacing in place whatever hooks it already (an earlier run's program, of this
    /// release or an older one); [`Self::attach_mode_of`] tells how it is hooked. In auto mode a
    /// device not hooked yet is hooked by clsact, which costs no RCU grace period (a TCX attach
    /// waits for one, 8 to 16 ms, under the kernel's network lock), and moved to TCX later by
    /// [`Self::move_one`]: so a cold start with hundreds of devices is quick.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        if self.mine.contains(&ifindex) && self.hooked_by(ifindex) == Some(self.program_id) {
            return Ok(());
        }
        let pin_dir = self.pin_dir.clone();
        let program = program(&mut self.ebpf)?;
        let hooked_tcx = attach::hooked_by(&pin_dir, ifindex, Record::Link).is_some();
        let kind = match self.mode {
            AttachMode::Tcx => {
                attach::attach_tcx(program, &pin_dir, ifindex).map(|()| AttachKind::Tcx)
            }
            AttachMode::Clsact => {
                attach::attach_clsact(program, &pin_dir, ifindex).map(|_| AttachKind::Clsact)
            }
            AttachMode::Auto if hooked_tcx => {
                attach::attach_tcx(program, &pin_dir, ifindex).map(|()| AttachKind::Tcx)
            }
            AttachMode::Auto => match attach::attach_clsact(program, &pin_dir, ifindex) {
                Ok(added_qdisc) => {
                    if !self.tcx_refused {
                        self.moves.insert(ifindex, added_qdisc);
                    }
                    Ok(AttachKind::Clsact)
                }
                Err(clsact) => {
                    log::debug!("clsact attach to if{ifindex} failed ({clsact:#}); trying TCX");
                    attach::attach_tcx(program, &pin_dir, ifindex)
                        .map(|()| AttachKind::Tcx)
                        .map_err(|tcx| anyhow!("{tcx:#} (clsact attach failed too: {clsact:#})"))
                }
            },
        }
        .with_context(|| {
            format!(
                "cannot attach the guard to ifindex {ifindex} ({})",
                privilege_hint("`multihome check` tells whether this kernel has TCX and clsact")
            )
        })?;
        log::debug!("guard attached to ifindex {ifindex} ({kind})");
        self.mine.insert(ifindex);
        self.settled(ifindex);
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
        self.moves.remove(&ifindex);
        self.later.remove(&ifindex);
        attach::detach(&self.pin_dir, ifindex)?;
        self.settled(ifindex);
        Ok(())
    }

    /// Whether devices wait to move from clsact to TCX.
    pub fn moves_pending(&self) -> bool {
        !self.moves.is_empty()
    }

    /// Moves one device hooked by clsact to TCX (auto mode): the TCX link first, then the
    /// filter, and the clsact qdisc if the guard added it and nothing else filters there. The
    /// daemon calls it when it has nothing else to do; each move waits for a grace period. The
    /// first TCX refusal (a kernel before 6.6) leaves every device on clsact.
    pub fn move_one(&mut self) {
        let Some((ifindex, added_qdisc)) = self.moves.pop_first() else {
            return;
        };
        let pin_dir = self.pin_dir.clone();
        let moved = program(&mut self.ebpf)
            .and_then(|program| attach::attach_tcx(program, &pin_dir, ifindex));
        match moved {
            Ok(()) => {
                log::debug!("guard on ifindex {ifindex} moved from clsact to tcx");
                if added_qdisc {
                    if let Err(err) = attach::remove_qdisc_if_unused(ifindex) {
                        log::warn!("{err:#}");
                    }
                }
            }
            Err(err) if passing(&err) => {
                log::debug!("guard on ifindex {ifindex} stays on clsact for now ({err:#})");
                self.later.insert(ifindex, added_qdisc);
            }
            Err(err) => {
                log::info!("the guard stays on clsact: TCX refused it ({err:#})");
                self.tcx_refused = true;
                self.moves.clear();
            }
        }
    }

    /// Runs every pending move (`check`, tests).
    pub fn finish_moves(&mut self) {
        while self.moves_pending() {
            self.move_one();
        }
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

    /// The devices the guard is hooked to, from the pins and the kernel, less what someone
    /// unhooked by hand (`bpftool link detach` leaves the pin, so does `tc filter del`): the
    /// reconciler attaches those again. Call it in the daemon's network namespace (ifindexes
    /// are per namespace).
    pub fn hooks(&mut self) -> Hooks {
        self.moves.append(&mut self.later);
        let mut hooks = Hooks::default();
        for (ifindex, kind) in attachments(&self.pin_dir) {
            match self.hooked_by(ifindex) {
                Some(id) => {
                    hooks.guarded.insert(ifindex);
                    if id != self.program_id {
                        hooks.outdated.insert(ifindex);
                    }
                }
                None => log::warn!(
                    "the guard's {kind} attachment on if{ifindex} is gone: attaching again"
                ),
            }
        }
        self.outdated = Some(hooks.outdated.clone());
        self.finish_hand_over();
        hooks
    }

    /// The devices the guard is hooked to (see [`Self::hooks`]).
    pub fn attached(&mut self) -> BTreeSet<u32> {
        self.hooks().guarded
    }

    /// How `ifindex` is hooked, if it is.
    pub fn attach_mode_of(&self, ifindex: u32) -> Option<AttachKind> {
        attachments(&self.pin_dir).get(&ifindex).copied()
    }

    /// The program hooking `ifindex` now, by whichever kind its pins record (TCX first).
    fn hooked_by(&self, ifindex: u32) -> Option<u32> {
        [Record::Link, Record::Filter]
            .into_iter()
            .filter(|&record| pins::attachment_pin(&self.pin_dir, record, ifindex).exists())
            .find_map(|record| attach::hooked_by(&self.pin_dir, ifindex, record))
    }

    /// `ifindex` runs this guard's program now, or nothing: one outdated device less.
    fn settled(&mut self, ifindex: u32) {
        if let Some(outdated) = &mut self.outdated {
            if outdated.remove(&ifindex) {
                self.finish_hand_over();
            }
        }
    }

    /// Once no device runs an earlier program, the maps an earlier release pinned that this
    /// one does not use (renamed aside at load, or gone from its layout) are unpinned: nothing
    /// runs with them any more.
    fn finish_hand_over(&mut self) {
        if !self.outdated.as_ref().is_some_and(BTreeSet::is_empty) {
            return;
        }
        let current: Vec<&str> = maps::SHAPES.iter().map(|s| s.name).collect();
        for path in pins::foreign_maps(&self.pin_dir, &current) {
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!(
                    "hand-over done: removed {}, an earlier release's map",
                    path.display()
                ),
                Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
            }
        }
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
    // The maps, and whatever an earlier release left there: the directory is multihome's.
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", pin_dir.display())),
    };
    let mut entries: Vec<PathBuf> = entries;
    entries.sort();
    for path in entries {
        let what = match pins::kind_of(&path) {
            Some(pins::Pinned::Map) => "pinned map",
            Some(pins::Pinned::Program) => "pinned program",
            Some(pins::Pinned::Link) => "pinned link",
            None => "pin",
        };
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(format!("{what} {}", path.display())),
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

/// Whether a TCX attach failed for a reason that passes (EEXIST: an unpinned link of the same
/// program not released yet; EBUSY), rather than for want of TCX.
fn passing(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|errno| errno == libc::EEXIST || errno == libc::EBUSY)
    })
}

/// Loads the program into the kernel; the caller holds every signal back ([`SignalsHeld`]).
fn load_program(ebpf: &mut Ebpf) -> Result<()> {
    program(ebpf)?.load().map_err(|e| {
        anyhow::Error::new(e).context("the kernel refused the eBPF guard (run with --no-ebpf)")
    })
}

/// Every signal blocked on the calling thread until this is dropped (SIGKILL and SIGSTOP
/// cannot be). The verifier gives up with EAGAIN when the loading thread has a signal pending,
/// and verifying takes tens of milliseconds (more on a loaded machine), so a daemon sent
/// SIGHUPs while it starts could otherwise be refused every time. A signal that arrives
/// meanwhile stays pending and is handled once the load is done.
struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: sigset_t is plain data, filled by sigfillset; pthread_sigmask only changes
        // this thread's mask and writes the previous one into `old`.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            SignalsHeld(old)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`, on the same thread (the value never leaves
        // `load_program`'s frame).
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
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
