//! `KernelView`: what multihome knows of the kernel's links, addresses, routes and rules. The
//! netlink edge fills it from dumps, the reconciler keeps it current from events (and from its own
//! operations, ahead of their echo), `plan` reads it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

mod changes;

pub use changes::{Effect, Redump, Touched};

use crate::model::{Address, Event, Family, Link, Op, Route, Rule};

/// The kernel's state as far as multihome cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelView {
    pub links: BTreeMap<u32, Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
}

impl KernelView {
    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }

    /// Keeps the view current from one kernel event. Objects are matched by the identity the
    /// kernel gives them: a link by ifindex, an address by (ifindex, address, prefix length), a
    /// route by (table, family, destination, prefix length, metric), a rule by all its fields.
    pub fn apply(&mut self, event: Event) -> Effect {
        let mut touched = Touched::default();
        let redump = match event {
            Event::NewLink(link) => {
                let (changed, redump) = self.new_link(link);
                touched.all = changed;
                redump
            }
            Event::DelLink(ifindex) => {
                touched.all = self.remove_link(ifindex);
                // The kernel drops the device's IPv4 routes without a word.
                Redump::All
            }
            Event::NewAddress(address) => {
                for old in upsert(&mut self.addresses, address, same_address) {
                    touched.address(&old);
                }
                Redump::Nothing
            }
            Event::DelAddress(address) => {
                for old in remove(&mut self.addresses, &address, same_address) {
                    touched.address(&old);
                }
                // The device's last IPv4 address gone: the kernel disables IPv4 on it and drops
                // every IPv4 route through it, in any table, without a word.
                let v4_left = (self.addresses.iter())
                    .any(|a| a.ifindex == address.ifindex && a.addr.is_ipv4());
                if address.addr.is_ipv4() && !v4_left {
                    return Effect {
                        touched,
                        redump: Redump::All,
                    };
                }
                // Otherwise IPv4 routes using it as source go silently; IPv6 routes silently lose
                // it as their source (measured on 6.18). Those are in the view, and only the
                // tables that hold them need dumping again: with many uplinks, a dump of every
                // route costs milliseconds.
                let tables: BTreeSet<(Family, u32)> = (self.routes.iter())
                    .filter(|r| r.prefsrc == Some(address.addr))
                    .map(|r| (r.family(), r.table))
                    .collect();
                if tables.is_empty() {
                    Redump::Nothing
                } else {
                    Redump::Tables(tables)
                }
            }
            Event::NewRoute(route) => {
                for old in upsert(&mut self.routes, route, same_slot) {
                    touched.route(&old);
                }
                Redump::Nothing
            }
            Event::DelRoute(route) => {
                for old in remove(&mut self.routes, &route, same_slot) {
                    touched.route(&old);
                }
                Redump::Nothing
            }
            Event::NewRule(rule) => {
                for old in upsert(&mut self.rules, rule, Rule::eq) {
                    touched.rule(&old);
                }
                Redump::Nothing
            }
            Event::DelRule(rule) => {
                for old in remove(&mut self.rules, &rule, Rule::eq) {
                    touched.rule(&old);
                }
                Redump::Nothing
            }
        };
        Effect { touched, redump }
    }

    /// Replaces the routes `dumped` covers with a fresh dump of them (routes it does not cover
    /// are left out); what differs from the routes it replaces.
    pub fn replace_routes(&mut self, dumped: &Redump, routes: Vec<Route>) -> Touched {
        let routes: Vec<Route> = routes.into_iter().filter(|r| dumped.covers(r)).collect();
        let old: HashSet<Route> = (self.routes.iter())
            .filter(|r| dumped.covers(r))
            .copied()
            .collect();
        let new: HashSet<Route> = routes.iter().copied().collect();
        let mut touched = Touched::default();
        for route in old.symmetric_difference(&new) {
            touched.route(route);
        }
        self.routes.retain(|r| !dumped.covers(r));
        self.routes.extend(routes);
        touched
    }

    /// Updates the view as if the kernel had echoed an op just applied, so that a reconcile
    /// running before the echo arrives does not apply it again. Only routes and rules live in
    /// the view; the guard's entries and attachments are the guard's own state.
    pub fn record(&mut self, op: &Op) {
        let event = match op {
            Op::ReplaceRoute(route) => Event::NewRoute(*route),
            Op::DelRoute(route) => Event::DelRoute(*route),
            Op::AddRule(rule) => Event::NewRule(rule.clone()),
            Op::DelRule(rule) => Event::DelRule(rule.clone()),
            Op::Attach(_)
            | Op::PutEntry(..)
            | Op::DelEntry(_)
            | Op::PutMark(..)
            | Op::DelMark(_)
            | Op::Detach(_) => return,
        };
        self.apply(event);
    }

    /// Whether the view changed, and which routes may have gone silently.
    fn new_link(&mut self, link: Link) -> (bool, Redump) {
        // Names are unique in a namespace: another ifindex with this name is a device whose
        // deletion we missed (lost events), gone with its routes.
        let stale: Vec<u32> = self
            .links
            .values()
            .filter(|l| l.name == link.name && l.ifindex != link.ifindex)
            .map(|l| l.ifindex)
            .collect();
        let replaced_stale = !stale.is_empty();
        for ifindex in stale {
            self.remove_link(ifindex);
        }
        let went_down = self.links.get(&link.ifindex).is_some_and(|old| old.up) && !link.up;
        let old = self.links.insert(link.ifindex, link.clone());
        let changed = replaced_stale || old.as_ref() != Some(&link);
        if replaced_stale || went_down {
            (changed, Redump::All)
        } else {
            (changed, Redump::Nothing)
        }
    }

    /// Forgets a device and what the kernel deletes with it: its addresses and the routes
    /// through it. Rules name devices, not ifindexes, and outlive them.
    fn remove_link(&mut self, ifindex: u32) -> bool {
        let had_link = self.links.remove(&ifindex).is_some();
        let addresses = self.addresses.len();
        self.addresses.retain(|a| a.ifindex != ifindex);
        let routes = self.routes.len();
        self.routes.retain(|r| r.oif != Some(ifindex));
        had_link || addresses != self.addresses.len() || routes != self.routes.len()
    }
}

fn same_address(a: &Address, b: &Address) -> bool {
    (a.ifindex, a.addr, a.prefix_len) == (b.ifindex, b.addr, b.prefix_len)
}

fn same_slot(a: &Route, b: &Route) -> bool {
    a.slot() == b.slot()
}

/// Inserts or replaces the item with `item`'s identity; what changed: the new item and the one
/// it replaced, or nothing when it was there already.
fn upsert<T: PartialEq + Clone>(
    items: &mut Vec<T>,
    item: T,
    same: impl Fn(&T, &T) -> bool,
) -> Vec<T> {
    match items.iter_mut().find(|i| same(i, &item)) {
        Some(existing) if *existing == item => vec![],
        Some(existing) => vec![std::mem::replace(existing, item.clone()), item],
        None => {
            items.push(item.clone());
            vec![item]
        }
    }
}

/// Removes every item with `item`'s identity; those removed.
fn remove<T: Clone>(items: &mut Vec<T>, item: &T, same: impl Fn(&T, &T) -> bool) -> Vec<T> {
    let mut removed = Vec::new();
    items.retain(|i| {
        let gone = same(i, item);
        if gone {
            removed.push(i.clone());
        }
        !gone
    });
    removed
}

#[cfg(test)]
mod tests;
