//! A simulated kernel: the reconciler's second [`Effects`], for the scenario and model tests.
//!
//! It holds the kernel's truth (links, addresses, routes, rules; the guard's entries and
//! attachment pins) apart from the reconciler's view. The world's events change the truth with
//! what the kernel does silently alongside them, and reach the reconciler as notifications; the
//! silent part it learns only by dumping again, as the daemon does. Operations are applied as the
//! kernel and the guard would, refusing what the kernel refuses (a route through a missing or
//! down device, a duplicate rule, deleting what is not there) and what multihome must never do
//! (touch a foreign object, leave a rule pointing at an empty table); refusals are kept for the
//! tests to report, and every applied operation is echoed as the kernel's notification. Its clock
//! moves only when a test moves it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use multihome_ebpf::Egress;

use super::{Effects, Reconciler};
use crate::config::Config;
use crate::guard::Hooks;
use crate::model::{Event, Op, Route, Rule, State, RT_TABLE_MAIN};
use crate::ownership::{owned, GuardState};
use crate::plan::Scope;
use crate::view::{KernelView, Redump, Touched};

#[derive(Clone, Debug)]
pub(crate) struct Sim {
    /// The kernel's links, addresses, routes and rules as they are.
    pub(crate) kernel: KernelView,
    pub(crate) protocol: u8,
    /// The guard's entries and the devices with an attachment pin. A pin outlives its device
    /// (the kernel detaches the program, the pin stays until multihome removes it).
    pub(crate) guard: GuardState,
    /// Notifications of applied operations, not yet delivered.
    pub(crate) echoes: Vec<Event>,
    /// Every operation applied, in order; taken by the test helpers below.
    pub(crate) applied: Vec<Op>,
    /// Operations refused, with why.
    pub(crate) refused: Vec<String>,
    now: Instant,
}

impl Sim {
    pub(crate) fn new(kernel: KernelView, protocol: u8) -> Sim {
        Sim {
            kernel,
            protocol,
            guard: GuardState::default(),
            echoes: Vec::new(),
            applied: Vec::new(),
            refused: Vec::new(),
            now: Instant::now(),
        }
    }

    /// `kernel` after a reconciler brought it to the plan of `config`.
    pub(crate) fn converged(config: &Config, kernel: KernelView) -> Sim {
        let mut r = Reconciler::start(config.clone(), Sim::new(kernel, config.protocol));
        r.run();
        assert_eq!(r.effects.refused, Vec::<String>::new());
        r.effects
    }

    /// What multihome owns in the kernel, whatever the reconciler believes.
    pub(crate) fn owned(&self) -> State {
        owned(&self.kernel, self.protocol, &Scope::All, &self.guard)
    }

    /// A change of the world, with what the kernel does silently alongside it: a device going
    /// down loses its routes, an IPv4 address gone takes the routes using it as source (and the
    /// device's last one every IPv4 route through the device), an IPv6 one is dropped as their
    /// source.
    pub(crate) fn event(&mut self, event: &Event) {
        self.kernel.apply(event.clone());
        let routes = &mut self.kernel.routes;
        match event {
            Event::NewLink(link) if !link.up => {
                routes.retain(|r| r.oif != Some(link.ifindex));
            }
            Event::DelAddress(address) if address.addr.is_ipv4() => {
                routes.retain(|r| r.prefsrc != Some(address.addr));
                let v4_left = (self.kernel.addresses.iter())
                    .any(|a| a.ifindex == address.ifindex && a.addr.is_ipv4());
                if !v4_left {
                    let routes = &mut self.kernel.routes;
                    routes.retain(|r| r.oif != Some(address.ifindex) || !r.dst.is_ipv4());
                }
            }
            Event::DelAddress(address) => {
                for route in routes.iter_mut() {
                    if route.prefsrc == Some(address.addr) {
                        route.prefsrc = None;
                    }
                }
            }
            _ => {}
        }
    }

    /// Applies `op` to the kernel, or says why the kernel (or multihome's own rules) refuse it.
    pub(crate) fn apply(&mut self, op: &Op) -> Result<(), String> {
        let broken_before = self.rules_without_routes();
        match op {
            // Hooking a device again replaces an earlier instance's program in place; hooking
            // it twice with this one's is a mistake.
            Op::Attach(ifindex) => {
                if !self.kernel.links.contains_key(ifindex) {
                    return Err(format!("{op}: no such device"));
                }
                if !self.guard.guarded.insert(*ifindex) && !self.guard.outdated.remove(ifindex) {
                    return Err(format!("{op}: already attached"));
                }
            }
            // A pin whose device is gone goes too: the guard's detach is fine with that.
            Op::Detach(ifindex) => {
                if !self.guard.guarded.remove(ifindex) {
                    return Err(format!("{op}: not attached"));
                }
                self.guard.outdated.remove(ifindex);
            }
            Op::PutEntry(addr, entry) => {
                self.guard.entries.insert(*addr, *entry);
            }
            Op::DelEntry(addr) => {
                if self.guard.entries.remove(addr).is_none() {
                    return Err(format!("{op}: no such entry"));
                }
            }
            Op::PutMark(mark, entry) => {
                self.guard.marks.insert(*mark, *entry);
            }
            Op::DelMark(mark) => {
                if self.guard.marks.remove(mark).is_none() {
                    return Err(format!("{op}: no such mark"));
                }
            }
            Op::ReplaceRoute(route) => self.check_replace(route)?,
            Op::DelRoute(route) => self.check_delete_route(route)?,
            Op::AddRule(rule) => {
                self.check_ours(rule.protocol, op)?;
                if self.kernel.rules.contains(rule) {
                    return Err(format!("{op}: File exists"));
                }
            }
            Op::DelRule(rule) => {
                self.check_ours(rule.protocol, op)?;
                if !self.kernel.rules.contains(rule) {
                    return Err(format!("{op}: No such file or directory"));
                }
            }
        }
        self.kernel.record(op);
        self.echoes.extend(echo(op));
        let broken = self.rules_without_routes();
        if let Some(rule) = broken.difference(&broken_before).next() {
            return Err(format!("{op}: left {rule} pointing at an empty table"));
        }
        Ok(())
    }

    fn check_ours(&self, protocol: u8, op: &Op) -> Result<(), String> {
        if protocol == self.protocol {
            Ok(())
        } else {
            Err(format!("{op}: not ours"))
        }
    }

    fn check_replace(&self, route: &Route) -> Result<(), String> {
        let op = Op::ReplaceRoute(*route);
        self.check_ours(route.protocol, &op)?;
        match route.oif.and_then(|oif| self.kernel.links.get(&oif)) {
            None => return Err(format!("{op}: No such device")),
            Some(link) if !link.up => return Err(format!("{op}: Network is down")),
            Some(_) => {}
        }
        if (self.kernel.routes.iter())
            .any(|r| r.slot() == route.slot() && r.protocol != self.protocol)
        {
            return Err(format!("{op}: would replace a foreign route"));
        }
        Ok(())
    }

    fn check_delete_route(&self, route: &Route) -> Result<(), String> {
        let op = Op::DelRoute(*route);
        self.check_ours(route.protocol, &op)?;
        if !(self.kernel.routes.iter())
            .any(|r| r.slot() == route.slot() && r.protocol == self.protocol)
        {
            return Err(format!("{op}: No such process"));
        }
        Ok(())
    }

    /// Our lookup rules whose table (one of ours: not `main`, which the steering rules look up
    /// without its defaults) holds no route of their family.
    fn rules_without_routes(&self) -> BTreeSet<Rule> {
        (self.kernel.rules.iter())
            .filter(|rule| rule.protocol == self.protocol)
            .filter(|rule| rule.table.is_some_and(|table| table != RT_TABLE_MAIN))
            .filter(|rule| {
                !(self.kernel.routes.iter())
                    .any(|r| Some(r.table) == rule.table && r.family() == rule.family)
            })
            .cloned()
            .collect()
    }
}

/// The notification the kernel sends for an applied route or rule operation.
fn echo(op: &Op) -> Option<Event> {
    match op {
        Op::ReplaceRoute(route) => Some(Event::NewRoute(*route)),
        Op::DelRoute(route) => Some(Event::DelRoute(*route)),
        Op::AddRule(rule) => Some(Event::NewRule(rule.clone())),
        Op::DelRule(rule) => Some(Event::DelRule(rule.clone())),
        Op::Attach(_)
        | Op::PutEntry(..)
        | Op::DelEntry(_)
        | Op::PutMark(..)
        | Op::DelMark(_)
        | Op::Detach(_) => None,
    }
}

impl Effects for Sim {
    async fn dump(&mut self) -> anyhow::Result<KernelView> {
        // A dump lists the routes in the kernel's order, not the view's.
        let mut view = self.kernel.clone();
        view.routes.reverse();
        Ok(view)
    }

    async fn dump_routes(&mut self, redump: &Redump) -> anyhow::Result<Vec<Route>> {
        let mut routes: Vec<Route> = (self.kernel.routes.iter())
            .filter(|r| redump.covers(r))
            .copied()
            .collect();
        routes.reverse();
        Ok(routes)
    }

    async fn apply(&mut self, op: &Op) -> anyhow::Result<()> {
        match Sim::apply(self, op) {
            Ok(()) => {
                self.applied.push(op.clone());
                Ok(())
            }
            Err(refusal) => {
                self.refused.push(refusal.clone());
                Err(anyhow!(refusal))
            }
        }
    }

    fn guard_entries(&self) -> anyhow::Result<BTreeMap<IpAddr, Egress>> {
        Ok(self.guard.entries.clone())
    }

    fn guard_hooks(&mut self) -> Hooks {
        Hooks {
            guarded: self.guard.guarded.clone(),
            outdated: self.guard.outdated.clone(),
        }
    }

    fn guard_marks(&self) -> anyhow::Result<BTreeMap<u32, Egress>> {
        Ok(self.guard.marks.clone())
    }

    fn restore_pins(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn remove_guard(&mut self) -> anyhow::Result<Vec<String>> {
        let removed = (self.guard.guarded.iter())
            .map(|ifindex| format!("guard attachment on ifindex {ifindex}"))
            .collect();
        self.guard = GuardState::default();
        Ok(removed)
    }

    fn background(&self) -> bool {
        false
    }

    fn background_step(&mut self) {}

    fn now(&self) -> Instant {
        self.now
    }
}

/// Driving a reconciler over the simulated kernel as the daemon drives it over the real one.
impl Reconciler<Sim> {
    /// The daemon starts on the kernel `sim` holds: a dump, the guard's state read.
    pub(crate) fn start(config: Config, sim: Sim) -> Reconciler<Sim> {
        let view = futures::executor::block_on(sim.clone().dump()).expect("a simulated dump");
        Reconciler::new(config, sim, view)
    }

    /// The world changes: the kernel takes `event` (and what it does silently with it), and
    /// the daemon is notified.
    pub(crate) fn world(&mut self, event: Event) {
        self.effects.event(&event);
        self.event(event);
    }

    /// The kernel's notifications of the operations applied so far reach the daemon.
    pub(crate) fn deliver_echoes(&mut self) {
        for echo in std::mem::take(&mut self.effects.echoes) {
            self.event(echo);
        }
    }

    /// One pass over what is pending; the operations it applied.
    pub(crate) fn run(&mut self) -> Vec<Op> {
        futures::executor::block_on(self.pass()).expect("simulated dumps do not fail");
        std::mem::take(&mut self.effects.applied)
    }

    /// A full pass, as after the watchdog's audit (but believing its record of the guard).
    pub(crate) fn full(&mut self) -> Vec<Op> {
        self.pending.touched = Touched::all();
        self.run()
    }

    /// Time passes: the clock moves by `elapsed`, the reconciler wakes for what came due, and
    /// passes once.
    pub(crate) fn wait(&mut self, elapsed: Duration) -> Vec<Op> {
        self.effects.now += elapsed;
        self.tick();
        self.run()
    }

    /// The view is the kernel: what the daemon believes after a pass, it would read in a dump.
    pub(crate) fn view_is_the_kernel(&self) -> Result<(), String> {
        let (view, kernel) = (&self.view, &self.effects.kernel);
        let sets = |v: &KernelView| {
            (
                v.links.clone(),
                v.addresses.iter().copied().collect::<BTreeSet<_>>(),
                v.routes.iter().copied().collect::<BTreeSet<_>>(),
                v.rules.iter().cloned().collect::<BTreeSet<_>>(),
            )
        };
        let (v, k) = (sets(view), sets(kernel));
        let mut differences = Vec::new();
        if v.0 != k.0 {
            differences.push(format!("links: view {:?}, kernel {:?}", v.0, k.0));
        }
        let mut differ = |what: &str, view: Vec<String>, kernel: Vec<String>| {
            let only_view: Vec<&String> = view.iter().filter(|x| !kernel.contains(x)).collect();
            let only_kernel: Vec<&String> = kernel.iter().filter(|x| !view.contains(x)).collect();
            if !only_view.is_empty() || !only_kernel.is_empty() {
                differences.push(format!(
                    "{what}: only in the view {only_view:?}, only in the kernel {only_kernel:?}"
                ));
            }
        };
        let debug = |items: &BTreeSet<_>| items.iter().map(|i| format!("{i:?}")).collect();
        differ("addresses", debug(&v.1), debug(&k.1));
        let shown = |items: &BTreeSet<Route>| items.iter().map(Route::to_string).collect();
        differ("routes", shown(&v.2), shown(&k.2));
        let shown = |items: &BTreeSet<Rule>| items.iter().map(Rule::to_string).collect();
        differ("rules", shown(&v.3), shown(&k.3));
        if differences.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the view is not the kernel: {}",
                differences.join("; ")
            ))
        }
    }
}
