//! One reconcile pass: plan from the view, diff against what is owned, apply in order, over
//! every uplink or over those an event touched (`plan::Scope`). The decisions are `plan` and
//! `diff`'s; this module only carries them out and says what changed.

use crate::config::Config;
use crate::diff::diff;
use crate::guard::Guard;
use crate::linger::Linger;
use crate::model::{Op, Route, State};
use crate::netlink::Netlink;
use crate::ownership::{self, GuardState};
use crate::plan::{self, Assignments, Scope};
use crate::view::KernelView;

pub struct Reconciler {
    pub config: Config,
    pub netlink: Netlink,
    /// `None` in rules-only mode, asked for or forced (the guard could not load).
    pub guard: Option<Guard>,
    pub view: KernelView,
    /// The bindings last logged, so that only changes are logged.
    assignments: Assignments,
    /// Guard entries of released addresses, removed a moment later.
    linger: Linger,
    /// Foreign routes in our tables last warned about, so that each is reported once.
    foreign: Vec<(u32, Route)>,
    /// The guard's entries and attachments as last read from the kernel, kept current by our
    /// own operations. Reading the whole map and the pin directory on every pass costs system
    /// calls in proportion to the number of uplinks (measured: ~1,000 bpf calls for one
    /// address change with 256 uplinks); they are read again only where the kernel could have
    /// changed them behind our back: at start, on a resync, and on the watchdog's audit.
    guard_state: GuardState,
}

/// How a pass went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub applied: usize,
    /// Operations that failed; the daemon dumps and tries again after a pause.
    pub failed: usize,
}

impl Reconciler {
    pub fn new(config: Config, netlink: Netlink, guard: Option<Guard>, view: KernelView) -> Self {
        let mut reconciler = Reconciler {
            config,
            netlink,
            guard,
            view,
            assignments: Assignments::new(),
            linger: Linger::default(),
            foreign: Vec::new(),
            guard_state: GuardState::default(),
        };
        reconciler.reread_guard();
        reconciler
    }

    /// Reads the guard's entries and attachments from the kernel again (what an earlier run
    /// left, or what someone removed by hand).
    pub fn reread_guard(&mut self) {
        let Some(guard) = &self.guard else {
            return;
        };
        match guard.entries() {
            Ok(entries) => self.guard_state.entries = entries,
            Err(err) => log::warn!("reading the guard's map: {err:#}"),
        }
        self.guard_state.guarded = guard.attached();
    }

    /// What multihome owns within `scope`: its routes and rules from the view, its entries and
    /// attachments from the guard.
    fn owned(&self, scope: &Scope) -> State {
        ownership::owned(&self.view, self.config.protocol, scope, &self.guard_state)
    }

    /// Brings the kernel to the plan, for the uplinks in `scope`.
    pub async fn reconcile(&mut self, scope: &Scope) -> Outcome {
        if scope.is_empty() {
            return Outcome::default();
        }
        let (desired, assignments) = plan::plan_in(&self.config, &self.view, scope);
        let ops = diff(&desired, &self.owned(scope));
        let ops = self
            .linger
            .hold_back(ops, &desired, std::time::Instant::now());
        let outcome = self.apply_all(ops).await;
        self.describe(scope, assignments);
        self.warn_foreign_routes(scope);
        outcome
    }

    /// Logs the bindings of the scope's addresses that changed. An address that changed hands
    /// did so between uplinks that are both in the scope (`Scope::of` takes every holder).
    fn describe(&mut self, scope: &Scope, assignments: Assignments) {
        let config = &self.config;
        let in_scope = |addr: &std::net::IpAddr, a: &plan::Assignment| {
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

    /// Removes everything owned (shutdown without --keep-on-exit).
    pub async fn teardown(&mut self) -> Outcome {
        let outcome = self
            .apply_all(diff(&State::default(), &self.owned(&Scope::All)))
            .await;
        for (addr, assignment) in std::mem::take(&mut self.assignments) {
            log::info!("{}: {addr} released", assignment.uplink);
        }
        outcome
    }

    /// When a held-back entry removal becomes due: the daemon reconciles again then.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.linger.deadline()
    }

    async fn apply_all(&mut self, ops: Vec<Op>) -> Outcome {
        let mut outcome = Outcome::default();
        for op in ops {
            match self.apply(&op).await {
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

    /// Keeps `guard_state` in step with an operation that succeeded.
    fn record_guard(&mut self, op: &Op) {
        let state = &mut self.guard_state;
        match op {
            Op::Attach(ifindex) => {
                state.guarded.insert(*ifindex);
            }
            Op::Detach(ifindex) => {
                state.guarded.remove(ifindex);
            }
            Op::PutEntry(addr, egress) => {
                state.entries.insert(*addr, *egress);
            }
            Op::DelEntry(addr) => {
                state.entries.remove(addr);
            }
            Op::ReplaceRoute(_) | Op::DelRoute(_) | Op::AddRule(_) | Op::DelRule(_) => {}
        }
    }

    async fn apply(&mut self, op: &Op) -> anyhow::Result<()> {
        match (op, self.guard.as_mut()) {
            (Op::ReplaceRoute(_) | Op::DelRoute(_) | Op::AddRule(_) | Op::DelRule(_), _) => {
                Ok(self.netlink.apply(op).await?)
            }
            (Op::Attach(ifindex), Some(guard)) => guard.attach(*ifindex),
            (Op::Detach(ifindex), Some(guard)) => guard.detach(*ifindex),
            (Op::PutEntry(addr, egress), Some(guard)) => guard.put_entry(*addr, egress),
            (Op::DelEntry(addr), Some(guard)) => guard.remove_entry(*addr),
            (_, None) => anyhow::bail!("the guard is not loaded"),
        }
    }
}
