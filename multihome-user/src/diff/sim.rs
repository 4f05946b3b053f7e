//! A simulated kernel for tests: applies ops as the kernel and the guard would, refusing what
//! the kernel refuses (a route through a missing or down device, a duplicate rule, deleting what
//! is not there) and what multihome must never do (touch a foreign object, leave a rule pointing
//! at an empty table). Scenario tests and the model-based tests drive it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use multihome_ebpf::Egress;

use crate::config::Config;
use crate::diff::diff;
use crate::model::{Event, Op, Route, Rule, State};
use crate::ownership::{owned, GuardState};
use crate::plan::{plan_in, Scope};
use crate::view::{KernelView, Touched};

#[derive(Clone, Debug, Default)]
pub struct Sim {
    pub view: KernelView,
    pub protocol: u8,
    pub entries: BTreeMap<IpAddr, Egress>,
    pub guarded: BTreeSet<u32>,
}

impl Sim {
    pub fn new(view: KernelView, protocol: u8) -> Sim {
        Sim {
            view,
            protocol,
            ..Sim::default()
        }
    }

    /// What multihome owns, as the daemon would assemble it.
    pub fn owned(&self) -> State {
        owned(&self.view, self.protocol, &Scope::All, &self.guard())
    }

    fn guard(&self) -> GuardState {
        GuardState {
            entries: self.entries.clone(),
            guarded: self.guarded.clone(),
        }
    }

    /// A kernel event, with what the kernel does silently alongside it: a deleted device takes
    /// its guard attachment along, a device going down loses its routes, an IPv4 address gone
    /// takes the routes using it as source (and the last one every IPv4 route through the
    /// device), an IPv6 one is dropped as their source. The view
    /// learns of the silent route changes only through the re-dump the event's `Effect` asks
    /// for, as the daemon's does (a silent change without one panics); returns what changed.
    pub fn event(&mut self, event: Event) -> Touched {
        if let Event::DelLink(ifindex) = &event {
            self.guarded.remove(ifindex);
        }
        let effect = self.view.apply(event.clone());
        let mut kernel_routes = self.view.routes.clone();
        match &event {
            Event::NewLink(link) if !link.up => {
                kernel_routes.retain(|r| r.oif != Some(link.ifindex));
            }
            Event::DelAddress(address) if address.addr.is_ipv4() => {
                kernel_routes.retain(|r| r.prefsrc != Some(address.addr));
                let v4_left = (self.view.addresses.iter())
                    .any(|a| a.ifindex == address.ifindex && a.addr.is_ipv4());
                if !v4_left {
                    kernel_routes.retain(|r| r.oif != Some(address.ifindex) || !r.dst.is_ipv4());
                }
            }
            Event::DelAddress(address) => {
                for route in &mut kernel_routes {
                    if route.prefsrc == Some(address.addr) {
                        route.prefsrc = None;
                    }
                }
            }
            _ => {}
        }
        let mut touched = effect.touched;
        // The dump lists the routes in the kernel's order, not the view's.
        kernel_routes.reverse();
        touched.merge(
            self.view
                .replace_routes(&effect.redump, kernel_routes.clone()),
        );
        let view: BTreeSet<Route> = self.view.routes.iter().copied().collect();
        assert_eq!(
            view,
            kernel_routes.into_iter().collect(),
            "{event:?} changed routes silently that the daemon would not dump again"
        );
        touched
    }

    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        let broken_before = self.rules_without_routes();
        match op {
            Op::Attach(ifindex) => {
                if !self.view.links.contains_key(ifindex) {
                    return Err(format!("{op}: no such device"));
                }
                if !self.guarded.insert(*ifindex) {
                    return Err(format!("{op}: already attached"));
                }
            }
            Op::Detach(ifindex) => {
                if !self.guarded.remove(ifindex) {
                    return Err(format!("{op}: not attached"));
                }
            }
            Op::PutEntry(addr, entry) => {
                self.entries.insert(*addr, *entry);
            }
            Op::DelEntry(addr) => {
                if self.entries.remove(addr).is_none() {
                    return Err(format!("{op}: no such entry"));
                }
            }
            Op::ReplaceRoute(route) => self.check_replace(route)?,
            Op::DelRoute(route) => self.check_delete_route(route)?,
            Op::AddRule(rule) => {
                self.check_ours(rule.protocol, op)?;
                if self.view.rules.contains(rule) {
                    return Err(format!("{op}: File exists"));
                }
            }
            Op::DelRule(rule) => {
                self.check_ours(rule.protocol, op)?;
                if !self.view.rules.contains(rule) {
                    return Err(format!("{op}: No such file or directory"));
                }
            }
        }
        self.view.record(op);
        let broken = self.rules_without_routes();
        if let Some(rule) = broken.difference(&broken_before).next() {
            return Err(format!("{op}: left {rule} pointing at an empty table"));
        }
        Ok(())
    }

    /// One full reconcile: plan, diff, apply every op. Panics on an op the kernel would refuse.
    pub fn reconcile(&mut self, config: &Config) -> Vec<Op> {
        self.reconcile_in(config, &Scope::All)
    }

    /// One reconcile of the uplinks in `scope`, as the daemon makes after an event.
    pub fn reconcile_in(&mut self, config: &Config, scope: &Scope) -> Vec<Op> {
        let desired = plan_in(config, &self.view, scope).0;
        let owned = owned(&self.view, self.protocol, scope, &self.guard());
        let ops = diff(&desired, &owned);
        for op in &ops {
            self.apply(op)
                .unwrap_or_else(|e| panic!("{e}\nops: {ops:#?}"));
        }
        ops
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
        match route.oif.and_then(|oif| self.view.links.get(&oif)) {
            None => return Err(format!("{op}: No such device")),
            Some(link) if !link.up => return Err(format!("{op}: Network is down")),
            Some(_) => {}
        }
        if self
            .view
            .routes
            .iter()
            .any(|r| r.slot() == route.slot() && r.protocol != self.protocol)
        {
            return Err(format!("{op}: would replace a foreign route"));
        }
        Ok(())
    }

    fn check_delete_route(&self, route: &Route) -> Result<(), String> {
        let op = Op::DelRoute(*route);
        self.check_ours(route.protocol, &op)?;
        if !self
            .view
            .routes
            .iter()
            .any(|r| r.slot() == route.slot() && r.protocol == self.protocol)
        {
            return Err(format!("{op}: No such process"));
        }
        Ok(())
    }

    /// Our rules whose table holds no route of their family.
    fn rules_without_routes(&self) -> BTreeSet<Rule> {
        self.view
            .rules
            .iter()
            .filter(|rule| rule.protocol == self.protocol)
            .filter(|rule| {
                !self
                    .view
                    .routes
                    .iter()
                    .any(|r| Some(r.table) == rule.table && r.family() == rule.family)
            })
            .cloned()
            .collect()
    }
}
