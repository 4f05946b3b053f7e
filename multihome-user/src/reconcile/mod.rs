//! The reconciler: the one loop from the kernel's events to operations. It keeps the view
//! current from events, dumps again what the kernel changes without a word, picks the uplinks a
//! pass looks at (`plan::Scope`), plans, diffs against what multihome owns, holds back the
//! removal of a released address's guard entry for a moment (`linger`), applies the operations
//! in order and keeps its record of the guard in step. Its timers (the linger, the retries after
//! a failure) are deadlines it hands to its caller.
//!
//! Everything it does to the world goes through [`Effects`]: netlink and the guard in the daemon
//! ([`Kernel`]), a simulated kernel in the model tests, which so drive exactly the code that
//! runs. The decisions are `plan` and `diff`'s; this module carries them out and says what
//! changed.

mod kernel;
mod linger;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
pub(crate) mod sim;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use multihome_ebpf::Egress;

use crate::config::Config;
use crate::diff::diff;
use crate::guard::Hooks;
use crate::model::{Event, Op, Route, State};
use crate::ownership::{self, GuardState};
use crate::plan::{self, Assignments, Scope};
use crate::view::{KernelView, Redump, Touched};

pub(crate) use kernel::Kernel;
use linger::Linger;
pub use linger::LINGER;

/// Pauses between attempts after an operation failed (doubling up to the last).
const RETRY_PAUSES: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

/// What the reconciler does to the world, and the clock it reads.
pub(crate) trait Effects {
    /// Everything the view holds, dumped again.
    async fn dump(&mut self) -> anyhow::Result<KernelView>;
    /// The routes `redump` names, dumped again (routes it does not name may come too).
    async fn dump_routes(&mut self, redump: &Redump) -> anyhow::Result<Vec<Route>>;
    /// Applies one operation: a route or rule through netlink, the rest to the guard.
    async fn apply(&mut self, op: &Op) -> anyhow::Result<()>;
    /// The guard's entries, as its maps hold them.
    fn guard_entries(&self) -> anyhow::Result<BTreeMap<IpAddr, Egress>>;
    /// The devices the guard is hooked to, and which run an earlier instance's program, as its
    /// pins and the kernel say.
    fn guard_hooks(&mut self) -> Hooks;
    /// The steering marks' uplinks, as the guard's map holds them.
    fn guard_marks(&self) -> anyhow::Result<BTreeMap<u32, Egress>>;
    /// Pins again what someone removed from the pin directory.
    fn restore_pins(&mut self) -> anyhow::Result<()>;
    /// Detaches the guard everywhere and removes its pins; one line per object removed.
    fn remove_guard(&mut self) -> anyhow::Result<Vec<String>>;
    /// Whether work waits for a quiet moment: the guard's moves from clsact to TCX, which
    /// change how a device is hooked, not whether.
    fn background(&self) -> bool;
    /// One step of that work.
    fn background_step(&mut self);
    fn now(&self) -> Instant;
}

#[derive(Clone)]
pub(crate) struct Reconciler<E> {
    config: Config,
    effects: E,
    view: KernelView,
    /// The guard's entries and attachments as last read from the kernel, kept current by our
    /// own operations. Reading the whole map and the pin directory on every pass costs system
    /// calls in proportion to the number of uplinks (measured: ~1,000 bpf calls for one
    /// address change with 256 uplinks); they are read again only where the kernel could have
    /// changed them behind our back: at start, on a re-dump, and on the watchdog's audit.
    guard: GuardState,
    /// What the next pass must dump again and look at.
    pending: Pending,
    /// The bindings last logged, so that only changes are logged.
    assignments: Assignments,
    /// Guard entries of released addresses, removed a moment later.
    linger: Linger,
    /// Foreign routes in our tables last warned about, so that each is reported once.
    foreign: Vec<(u32, Route)>,
    retry: Retry,
}

/// What the events since the last pass call for.
#[derive(Clone, Debug, Default)]
struct Pending {
    /// Notifications were lost, or an operation failed: dump everything again.
    resync: bool,
    /// Routes the kernel may have changed without a word.
    routes: Redump,
    /// What changed in the view, or everything.
    touched: Touched,
}

/// Retrying after failed operations.
#[derive(Clone, Debug, Default)]
struct Retry {
    /// Attempts since the last full pass that went through.
    attempt: usize,
    /// When the next one is due. A deadline rather than a pause re-armed on every pass:
    /// watchdog ticks come more often than the longest pause and would postpone it for ever.
    at: Option<Instant>,
}

/// How a pass went.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) applied: usize,
    /// Operations that failed; the reconciler dumps and tries again after a pause.
    pub(crate) failed: usize,
}

impl<E: Effects> Reconciler<E> {
    /// A reconciler over `view` (a dump made after subscribing to the kernel's events), which
    /// reads the guard's state and whose first pass is a full one. `config.ebpf` says whether
    /// `effects` has a guard.
    pub(crate) fn new(config: Config, effects: E, view: KernelView) -> Self {
        let mut reconciler = Reconciler {
            config,
            effects,
            view,
            guard: GuardState::default(),
            pending: Pending {
                touched: Touched::all(),
                ..Pending::default()
            },
            assignments: Assignments::new(),
            linger: Linger::default(),
            foreign: Vec::new(),
            retry: Retry::default(),
        };
        reconciler.reread_guard();
        reconciler
    }

    /// Its effects, for the daemon's steering, which shares the loaded guard.
    pub(crate) fn effects_mut(&mut self) -> &mut E {
        &mut self.effects
    }

    /// Folds one kernel notification into the view.
    pub(crate) fn event(&mut self, event: Event) {
        let effect = self.view.apply(event);
        self.pending.routes.merge(effect.redump);
        self.pending.touched.merge(effect.touched);
    }

    /// Notifications were lost: the next pass dumps everything again.
    pub(crate) fn sync_lost(&mut self) {
        log::warn!("netlink notifications were lost, dumping the kernel's state again");
        self.pending.resync = true;
    }

    /// The watchdog's audit of the guard: removing a pin or detaching a TCX link by hand sends
    /// no notification. Pins are put back, the attachments read again, and the next pass is a
    /// full one, which attaches again what was detached.
    pub(crate) fn audit(&mut self) {
        if self.config.ebpf {
            if let Err(err) = self.effects.restore_pins() {
                log::warn!("restoring the guard's pins: {err:#}");
            }
        }
        self.reread_guard();
        self.pending.touched = Touched::all();
    }

    /// A reload: the guard's audit, and the next pass dumps everything again first.
    pub(crate) fn reload(&mut self) {
        self.audit();
        self.pending.resync = true;
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn view(&self) -> &KernelView {
        &self.view
    }

    /// Whether the effects have work for a quiet moment (see [`Effects::background`]).
    pub(crate) fn background(&self) -> bool {
        self.effects.background()
    }

    pub(crate) fn background_step(&mut self) {
        self.effects.background_step();
    }

    /// When the reconciler wants to run again by itself: a retry, or a lingering entry's
    /// removal coming due. Never without either: an idle daemon does not wake up.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        [self.retry.at, self.linger.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes note of what came due by `wake_at`.
    pub(crate) fn tick(&mut self) {
        let now = self.effects.now();
        if self.retry.at.is_some_and(|at| at <= now) {
            self.retry.at = None;
            self.retry.attempt += 1;
            self.pending.resync = true;
        }
        if self.linger.deadline().is_some_and(|at| at <= now) {
            self.pending.touched = Touched::all();
        }
    }

    /// One pass over what changed since the last: dumps what must be dumped again, then
    /// reconciles the uplinks concerned. Fails only when a dump fails.
    pub(crate) async fn pass(&mut self) -> anyhow::Result<Outcome> {
        let pending = std::mem::take(&mut self.pending);
        let mut touched = pending.touched;
        if pending.resync {
            self.view = self.effects.dump().await?;
            self.reread_guard();
            touched = Touched::all();
        } else if pending.routes != Redump::Nothing {
            let routes = self.effects.dump_routes(&pending.routes).await?;
            touched.merge(self.view.replace_routes(&pending.routes, routes));
        }
        let scope = Scope::of(&self.config, &self.view, &touched);
        let outcome = self.reconcile(&scope).await;
        if outcome.failed > 0 {
            let pause = RETRY_PAUSES[self.retry.attempt.min(RETRY_PAUSES.len() - 1)];
            self.retry.at = Some(self.effects.now() + pause);
        } else if scope == Scope::All {
            // A pass over a few uplinks says nothing of a failure elsewhere: only a full pass
            // that went through ends the retries.
            self.retry = Retry::default();
        }
        Ok(outcome)
    }

    /// Removes everything owned, the guard and its pins included (shutdown without
    /// --keep-on-exit).
    pub(crate) async fn teardown(&mut self) -> anyhow::Result<Outcome> {
        let outcome = self
            .apply_all(diff(&State::default(), &self.owned(&Scope::All)))
            .await;
        for (addr, assignment) in std::mem::take(&mut self.assignments) {
            log::info!("{}: {addr} released", assignment.uplink);
        }
        if self.config.ebpf {
            for line in self.effects.remove_guard()? {
                log::debug!("removed {line}");
            }
        }
        Ok(outcome)
    }

    /// Reads the guard's entries and attachments from the kernel again (what an earlier run
    /// left, or what someone removed by hand).
    fn reread_guard(&mut self) {
        if !self.config.ebpf {
            return;
        }
        match self.effects.guard_entries() {
            Ok(entries) => self.guard.entries = entries,
            Err(err) => log::warn!("reading the guard's map: {err:#}"),
        }
        match self.effects.guard_marks() {
            Ok(marks) => self.guard.marks = marks,
            Err(err) => log::warn!("reading the guard's steering marks: {err:#}"),
        }
        let hooks = self.effects.guard_hooks();
        self.guard.guarded = hooks.guarded;
        self.guard.outdated = hooks.outdated;
    }

    /// What multihome owns within `scope`: its routes and rules from the view, its entries and
    /// attachments from the guard.
    fn owned(&self, scope: &Scope) -> State {
        ownership::owned(&self.view, self.config.protocol, scope, &self.guard)
    }

    /// Brings the kernel to the plan, for the uplinks in `scope`.
    async fn reconcile(&mut self, scope: &Scope) -> Outcome {
        if scope.is_empty() {
            return Outcome::default();
        }
        let (desired, assignments) = plan::plan_in(&self.config, &self.view, scope);
        let ops = diff(&desired, &self.owned(scope));
        let ops = self.linger.hold_back(ops, &desired, self.effects.now());
        let outcome = self.apply_all(ops).await;
        self.describe(scope, assignments);
        self.warn_foreign_routes(scope);
        outcome
    }

    /// Logs the bindings of the scope's addresses that changed. An address that changed hands
    /// did so between uplinks that are both in the scope (`Scope::of` takes every holder).
    fn describe(&mut self, scope: &Scope, assignments: Assignments) {
        let config = &self.config;
        let in_scope = |addr: &IpAddr, a: &plan::Assignment| {
            assignments.contains_key(addr) || scope.has_uplink(config, &a.uplink)
        };
        let before: Assignments = (self.assignments.iter())
            .filter(|(addr, a)| in_scope(addr, a))
            .map(|(addr, a)| (*addr, a.clone()))
            .collect();
        for line in plan::describe(&before, &assignments) {
            log::info!("{line}");
        }
        self.assignments.retain(|addr, a| !in_scope(addr, a));
        self.assignments.extend(assignments);
    }

    /// Someone put a route in one of our tables while we run (start-up refuses them): `plan`
    /// yields its slot rather than overwrite it; the operator has to hear about it.
    fn warn_foreign_routes(&mut self, scope: &Scope) {
        let foreign = ownership::foreign_routes(&self.config, &self.view, scope);
        for (table, route) in foreign.iter().filter(|f| !self.foreign.contains(f)) {
            log::warn!(
                "table {table} holds a route that is not multihome's ({route}): left alone, the \
                 guard keeps sources on their uplinks; delete it or give multihome another table"
            );
        }
        self.foreign
            .retain(|(table, _)| !scope.has_table(Some(*table)));
        self.foreign.extend(foreign);
    }

    async fn apply_all(&mut self, ops: Vec<Op>) -> Outcome {
        let mut outcome = Outcome::default();
        for op in ops {
            match self.effects.apply(&op).await {
                Ok(()) => {
                    log::debug!("{op}");
                    self.view.record(&op);
                    self.record_guard(&op);
                    outcome.applied += 1;
                }
                Err(err) => {
                    log::warn!("{op}: {err:#}");
                    outcome.failed += 1;
                }
            }
        }
        outcome
    }

    /// Keeps the guard's state in step with an operation that succeeded.
    fn record_guard(&mut self, op: &Op) {
        let state = &mut self.guard;
        match op {
            Op::Attach(ifindex) => {
                state.guarded.insert(*ifindex);
                state.outdated.remove(ifindex);
            }
            Op::Detach(ifindex) => {
                state.guarded.remove(ifindex);
                state.outdated.remove(ifindex);
            }
            Op::PutEntry(addr, egress) => {
                state.entries.insert(*addr, *egress);
            }
            Op::DelEntry(addr) => {
                state.entries.remove(addr);
            }
            Op::PutMark(mark, egress) => {
                state.marks.insert(*mark, *egress);
            }
            Op::DelMark(mark) => {
                state.marks.remove(mark);
            }
            Op::ReplaceRoute(_) | Op::DelRoute(_) | Op::AddRule(_) | Op::DelRule(_) => {}
        }
    }
}
