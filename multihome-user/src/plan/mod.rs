//! `plan`: from the configuration and the kernel's state, the routes, rules and guard entries
//! multihome wants. Pure: the same view always gives the same plan, so the reconciler can run it
//! after every event and `diff` turns any difference into ops.
//!
//! Desired routes are written exactly as the kernel reports them in dumps (metric, scope), so
//! that once applied they compare equal to what `owned` reads back and the next diff is empty.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use multihome_ebpf::{steer::mark_of_table, Egress};

use crate::config::{Config, UplinkConfig};
use crate::model::{
    Address, Family, Link, LinkKind, Route, Rule, State, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE,
};
use crate::ownership;
use crate::view::KernelView;

mod describe;
mod index;
mod scope;
mod steering;

pub(crate) use describe::{describe, Assignment, Assignments};
pub(crate) use scope::Scope;
pub(crate) use steering::is_catch_all;

use index::Index;

/// The metric the kernel gives an IPv6 route added without one (IP6_RT_PRIO_USER); IPv4 routes
/// get 0.
const IPV6_DEFAULT_METRIC: u32 = 1024;

/// The plan and the operator's view of it (`assignments`), from one look at the view: the
/// reconciler and `status` need both on every pass.
pub(crate) fn plan_and_assignments(config: &Config, view: &KernelView) -> (State, Assignments) {
    plan_in(config, view, &Scope::All)
}

/// The part of the plan (and of its assignments) that belongs to the uplinks in `scope`: with
/// `Scope::All`, the whole plan; otherwise exactly what the whole plan holds for those uplinks.
pub(crate) fn plan_in(config: &Config, view: &KernelView, scope: &Scope) -> (State, Assignments) {
    let present = uplinks(config, view, scope);
    (
        desired(config, view, scope, &present),
        describe::of(config, &present),
    )
}

fn desired(config: &Config, view: &KernelView, scope: &Scope, present: &[Uplink]) -> State {
    let mut state = State::default();
    for uplink in present {
        if config.ebpf {
            uplink.guard(&mut state);
        }
        if config.steer {
            state.marks.insert(
                mark_of_table(uplink.config.table),
                uplink.device_egress(0, [0; 16]),
            );
        }
        if uplink.path(config) == Path::Routed {
            uplink.route(config, &mut state);
        }
    }
    // Not an uplink's: a full pass plans (and owns) them.
    if config.steer && *scope == Scope::All {
        state.rules.extend(steering::shared_rules(config));
    }
    // A route of someone else's in the slot of one of ours (`ip route replace ... table T` at
    // run time): multihome never overwrites what is not its own. It yields the slot (the
    // reconciler warns about foreign routes in its tables) and takes it back once the other
    // route is gone; meanwhile the guard keeps sources on their uplinks.
    let held: BTreeSet<_> = (ownership::foreign_routes(config, view, scope).iter())
        .map(|(_, route)| route.slot())
        .collect();
    state.routes.retain(|r| !held.contains(&r.slot()));
    state
}

/// Why an uplink that is present does or does not get its table and rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Table routes and rules are wanted.
    Routed,
    /// The device is down: the kernel refuses routes through it; the guard entries stay.
    LinkDown,
    /// `--no-rules`: the guard alone keeps sources on their uplinks.
    GuardOnly,
}

/// One configured uplink whose device exists, with what `plan` derived for it.
struct Uplink<'a> {
    config: &'a UplinkConfig,
    link: &'a Link,
    /// The parent device, when it is in the view and is not the uplink itself.
    lower: Option<&'a Link>,
    /// Usable addresses this uplink won, sorted; one address may appear with two prefixes.
    addresses: Vec<&'a Address>,
    gateway_v4: Option<IpAddr>,
    gateway_v6: Option<IpAddr>,
}

/// The present uplinks of `scope` in configuration order. An address on several uplinks goes
/// to the first (identical DHCP leases): deterministic, and one source can only leave through
/// one device.
fn uplinks<'a>(config: &'a Config, view: &'a KernelView, scope: &Scope) -> Vec<Uplink<'a>> {
    let index = Index::new(config, view, scope);
    let mut present = Vec::new();
    for position in scope.positions(config) {
        let uplink = &config.uplinks[position];
        let Some(&link) = index.links.get(uplink.name.as_str()) else {
            continue;
        };
        let mut addresses: Vec<&Address> = index
            .addresses
            .get(&link.ifindex)
            .into_iter()
            .flatten()
            .copied()
            .filter(|a| usable(a) && index.winners.get(&a.addr) == Some(&position))
            .collect();
        addresses.sort();
        let discovered = |family| index.gateways.get(&(link.ifindex, family)).map(|g| g.1);
        present.push(Uplink {
            config: uplink,
            link,
            lower: lower_of(view, link),
            addresses,
            gateway_v4: uplink
                .gateway_v4
                .map(IpAddr::V4)
                .or_else(|| discovered(Family::V4)),
            gateway_v6: uplink
                .gateway_v6
                .map(IpAddr::V6)
                .or_else(|| discovered(Family::V6)),
        });
    }
    present
}

/// The parent device of `link`, when it is in the view and is not the device itself.
pub(super) fn lower_of<'a>(view: &'a KernelView, link: &Link) -> Option<&'a Link> {
    link.lower
        .filter(|&lower| lower != link.ifindex)
        .and_then(|lower| view.links.get(&lower))
}

impl Uplink<'_> {
    fn path(&self, config: &Config) -> Path {
        if !config.rules {
            Path::GuardOnly
        } else if !self.link.up {
            Path::LinkDown
        } else {
            Path::Routed
        }
    }

    fn gateway(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.gateway_v4,
            Family::V6 => self.gateway_v6,
        }
    }

    /// The addresses as the guard and the rules see them: one per address (the shortest prefix
    /// if the device holds an address twice).
    fn distinct_addresses(&self) -> impl Iterator<Item = &Address> + '_ {
        let mut seen = BTreeSet::new();
        self.addresses
            .iter()
            .copied()
            .filter(move |a| seen.insert(a.addr))
    }

    fn guard(&self, state: &mut State) {
        state.guarded.insert(self.link.ifindex);
        if let Some(lower) = self.lower {
            state.guarded.insert(lower.ifindex);
        }
        for address in self.distinct_addresses() {
            let entry = self.egress(address);
            state.entries.insert(address.addr, entry);
        }
    }

    fn egress(&self, address: &Address) -> Egress {
        let mut gateway = [0u8; 16];
        match self.gateway(Family::of(&address.addr)) {
            Some(IpAddr::V4(v4)) => gateway[..4].copy_from_slice(&v4.octets()),
            Some(IpAddr::V6(v6)) => gateway = v6.octets(),
            None => {}
        }
        self.device_egress(address.prefix_len, gateway)
    }

    /// The uplink's device as the guard recognises it (itself, or its frames on its parent).
    fn device_egress(&self, prefix_len: u8, gateway: [u8; 16]) -> Egress {
        let lower_ifindex = self.lower.map_or(0, |l| l.ifindex);
        // The parent can only tell the uplink's frames apart when the guard is on the parent.
        let (vlan_id, match_mac) = match (self.lower, self.link.kind) {
            (Some(_), LinkKind::Vlan(id)) => (id, 0),
            (Some(_), LinkKind::Macvlan) => (0, 1),
            _ => (0, 0),
        };
        Egress {
            uplink_ifindex: self.link.ifindex,
            lower_ifindex,
            mtu: self.link.mtu,
            vlan_id,
            match_mac,
            prefix_len,
            mac: self.link.mac,
            // The guard's map layer assigns the slot when it writes the entry.
            counter_slot: 0,
            gateway,
        }
    }

    /// Table routes and rules, per family that has an address (a rule never points at a table
    /// without routes of its family).
    fn route(&self, config: &Config, state: &mut State) {
        for family in [Family::V4, Family::V6] {
            let addresses: Vec<&Address> = self
                .addresses
                .iter()
                .copied()
                .filter(|a| Family::of(&a.addr) == family)
                .collect();
            if addresses.is_empty() {
                continue;
            }
            state
                .routes
                .extend(self.table_routes(config, family, &addresses));
            let rule = |src: Option<(IpAddr, u8)>, oif: Option<String>, priority: u32| Rule {
                family,
                priority,
                protocol: config.protocol,
                src,
                oif,
                fwmark: None,
                table: Some(self.config.table),
                suppress_prefix_len: None,
                unreachable: false,
                other_selectors: false,
            };
            for address in self.distinct_addresses() {
                if Family::of(&address.addr) == family {
                    let host = host_len(family);
                    state
                        .rules
                        .insert(rule(Some((address.addr, host)), None, config.priority));
                }
            }
            state.rules.insert(rule(
                None,
                Some(self.link.name.clone()),
                config.priority + 1,
            ));
            if config.steer {
                state
                    .rules
                    .extend(steering::uplink_rules(config, family, self.config.table));
            }
        }
    }

    /// One on-link route per distinct prefix (source: its lowest address) and the default route
    /// via the gateway, keyed by destination so that no two routes of the table share one (an
    /// address with prefix length 0 yields to the gateway's default route).
    fn table_routes(&self, config: &Config, family: Family, addresses: &[&Address]) -> Vec<Route> {
        let (metric, link_scope) = match family {
            Family::V4 => (0, RT_SCOPE_LINK),
            Family::V6 => (IPV6_DEFAULT_METRIC, RT_SCOPE_UNIVERSE),
        };
        let route = |dst: IpAddr, dst_len: u8| Route {
            table: self.config.table,
            protocol: config.protocol,
            dst,
            dst_len,
            gateway: None,
            oif: Some(self.link.ifindex),
            prefsrc: None,
            metric,
            scope: RT_SCOPE_UNIVERSE,
        };
        let mut routes: BTreeMap<(IpAddr, u8), Route> = BTreeMap::new();
        for address in addresses {
            let dst = network(address.addr, address.prefix_len);
            // Addresses are sorted: the first one seen in a prefix is its lowest.
            routes.entry((dst, address.prefix_len)).or_insert(Route {
                prefsrc: Some(address.addr),
                scope: link_scope,
                ..route(dst, address.prefix_len)
            });
        }
        if let Some(gateway) = self.gateway(family) {
            let any = unspecified(family);
            routes.insert(
                (any, 0),
                Route {
                    gateway: Some(gateway),
                    ..route(any, 0)
                },
            );
        }
        routes.into_values().collect()
    }
}

/// Addresses a source-routed packet may carry: global unicast that DAD has accepted.
/// Deprecated addresses stay: existing flows still use them.
pub(super) fn usable(address: &Address) -> bool {
    if address.flags.tentative || address.flags.dad_failed {
        return false;
    }
    match address.addr {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.is_multicast())
        }
    }
}

fn host_len(family: Family) -> u8 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// The network address of `addr/prefix_len`.
fn network(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            Ipv4Addr::from(u32::from(v4) & mask).into()
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            Ipv6Addr::from(u128::from(v6) & mask).into()
        }
    }
}

#[cfg(test)]
mod tests;
