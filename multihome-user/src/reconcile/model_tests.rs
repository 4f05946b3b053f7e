//! Model-based tests of the reconciler the daemon runs: proptest generates sequences of what the
//! world does to a host (DHCP, admins, other managers, udev, a crash and restart, time passing)
//! and the simulated kernel plays them, notifying the reconciler as the kernel notifies the
//! daemon. After every step, the pass the step causes must touch nothing that is not multihome's,
//! leave the view equal to the kernel, bring what multihome owns in the kernel to the plan (but
//! for the entries of released addresses, which linger), and leave nothing for a second pass to
//! do; once the linger is over, what it owns is exactly the plan.
//!
//! The daemon reconciles only the uplinks an event touched (`plan::Scope`); the same histories
//! check that such a pass does exactly what a full pass would.
//!
//! Actions carry indices, resolved against the simulated kernel when they are played (pick the
//! n-th address of the device, ...): every generated sequence is valid whatever came before,
//! and proptest can shrink a failure to a short one.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;

use multihome_ebpf::steer::mark_of_table;

use super::linger::LINGER;
use super::sim::Sim;
use super::Reconciler;
use crate::config::Config;
use crate::fixtures::{self, *};
use crate::model::{Address, AddressFlags, Event, Family, Link, LinkKind, Op, Route, Rule, State};
use crate::view::Touched;

const PROTO: u8 = 77;
const NAMES: [&str; 3] = ["vlan101", "vlan102", "vlan103"];
const ADDRESSES: [&str; 8] = [
    "192.168.0.100/24",
    "192.168.0.101/24",
    "192.168.0.120/24",
    "192.168.0.120/25",
    "10.0.0.5/8",
    "2001:db8:1::5/64",
    "2001:db8:1::6/64",
    "fe80::5/64",
];
const GATEWAYS: [&str; 5] = [
    "192.168.0.1",
    "192.168.0.254",
    "10.0.0.1",
    "fe80::1",
    "2001:db8:1::1",
];
/// Destinations of foreign routes, some in the shape of ours.
const DESTINATIONS: [&str; 4] = ["0.0.0.0/0", "192.168.0.0/24", "203.0.113.0/24", "::/0"];
/// Tables of foreign routes and rules: `main`, someone else's, and the ones multihome is given.
const TABLES: [u32; 5] = [254, 50, 1001, 1002, 1003];

/// A table that none of the configured uplinks has.
const LEFTOVER_TABLE: u32 = 1004;

/// One thing the world does. Indices are taken modulo what exists when the action is played.
#[derive(Clone, Debug)]
enum Action {
    AddAddress {
        uplink: usize,
        address: usize,
        tentative: bool,
    },
    DelAddress {
        uplink: usize,
        pick: usize,
    },
    Flap {
        uplink: usize,
    },
    /// The device goes away (udev, a VLAN removed, a USB modem unplugged).
    Vanish {
        uplink: usize,
    },
    /// The device is created again (a new ifindex) if it is absent.
    Appear {
        uplink: usize,
    },
    /// Deleted and re-created between two reconciles: same name, new ifindex, no addresses.
    Reindex {
        uplink: usize,
    },
    /// The DHCP client (or an RA) sets the uplink's default route in `main`.
    ClientGateway {
        uplink: usize,
        gateway: usize,
        metric: u32,
    },
    /// A route of someone else's through an uplink goes (the lease expired, an admin).
    DelClientRoute {
        uplink: usize,
        pick: usize,
    },
    /// Someone adds (or replaces: same slot) a route of theirs, possibly in one of our tables.
    ForeignRoute {
        uplink: usize,
        table: usize,
        dst: usize,
        gateway: usize,
        metric: u32,
    },
    /// Someone else's rule from an address, or (marked) one on a steering mark.
    ForeignRule {
        priority: u32,
        address: usize,
        table: usize,
        marked: bool,
    },
    /// Any rule goes: ours (flushed by an admin, networkd) or someone else's.
    DelRule {
        pick: usize,
    },
    /// A route of ours goes (flushed by an admin).
    DelOurRoute {
        pick: usize,
    },
    /// A route or rule of multihome's in a table no uplink has: left by a run with another
    /// configuration (or made by hand with its protocol).
    Leftover {
        uplink: usize,
        rule: bool,
    },
    /// The daemon is killed and started again: the kernel keeps its rules and routes; the
    /// guard's map and attachments survive only with their pins.
    Restart {
        pins_kept: bool,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let i = || 0usize..16;
    prop_oneof![
        3 => (i(), i(), any::<bool>()).prop_map(|(uplink, address, tentative)| Action::AddAddress { uplink, address, tentative }),
        2 => (i(), i()).prop_map(|(uplink, pick)| Action::DelAddress { uplink, pick }),
        1 => i().prop_map(|uplink| Action::Flap { uplink }),
        1 => i().prop_map(|uplink| Action::Vanish { uplink }),
        1 => i().prop_map(|uplink| Action::Appear { uplink }),
        1 => i().prop_map(|uplink| Action::Reindex { uplink }),
        2 => (i(), i(), 1024u32..1026).prop_map(|(uplink, gateway, metric)| Action::ClientGateway { uplink, gateway, metric }),
        1 => (i(), i()).prop_map(|(uplink, pick)| Action::DelClientRoute { uplink, pick }),
        2 => (i(), i(), i(), i(), prop_oneof![Just(0u32), Just(1024), Just(5)]).prop_map(
            |(uplink, table, dst, gateway, metric)| Action::ForeignRoute { uplink, table, dst, gateway, metric }
        ),
        1 => (900u32..1002, i(), i(), any::<bool>()).prop_map(|(priority, address, table, marked)| Action::ForeignRule { priority, address, table, marked }),
        2 => i().prop_map(|pick| Action::DelRule { pick }),
        2 => i().prop_map(|pick| Action::DelOurRoute { pick }),
        1 => (i(), any::<bool>()).prop_map(|(uplink, rule)| Action::Leftover { uplink, rule }),
        1 => any::<bool>().prop_map(|pins_kept| Action::Restart { pins_kept }),
    ]
}

fn pick<T: Clone>(items: &[T], n: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[n % items.len()].clone())
}

/// The kernel events an action amounts to on the current simulated kernel (none when it does
/// not apply, e.g. deleting an address of a device that is absent).
///
/// Left out: a route notification for a slot (table, destination, metric) in which the kernel
/// holds several routes through different devices, as `main` holds the prefix route of every
/// address of a shared subnet. It does not say which of them a replace overwrote: the view takes
/// the first it holds, the kernel the first in its own order, and the two may differ until the
/// next dump.
fn events(action: &Action, sim: &Sim, next_ifindex: &mut u32) -> Vec<Event> {
    let ambiguous = |route: &Route| {
        (sim.kernel.routes.iter())
            .filter(|r| r.slot() == route.slot())
            .count()
            > 1
    };
    world_events(action, sim, next_ifindex)
        .into_iter()
        .filter(|event| !matches!(event, Event::NewRoute(route) if ambiguous(route)))
        .collect()
}

fn world_events(action: &Action, sim: &Sim, next_ifindex: &mut u32) -> Vec<Event> {
    let link_of = |uplink: usize| {
        sim.kernel
            .link_by_name(NAMES[uplink % NAMES.len()])
            .cloned()
    };
    let mut fresh = |uplink: usize| {
        *next_ifindex += 1;
        let n = uplink % NAMES.len();
        fixtures::link(
            *next_ifindex,
            NAMES[n],
            LinkKind::Vlan(101 + n as u16),
            Some(ETH0),
        )
    };
    match *action {
        Action::AddAddress {
            uplink,
            address,
            tentative,
        } => link_of(uplink)
            .map(|link| {
                Event::NewAddress(Address {
                    flags: AddressFlags {
                        tentative,
                        ..AddressFlags::default()
                    },
                    ..fixtures::address(link.ifindex, ADDRESSES[address % ADDRESSES.len()])
                })
            })
            .into_iter()
            .collect(),
        Action::DelAddress { uplink, pick: n } => link_of(uplink)
            .and_then(|link| {
                let on_link: Vec<Address> = sim
                    .kernel
                    .addresses
                    .iter()
                    .filter(|a| a.ifindex == link.ifindex)
                    .copied()
                    .collect();
                pick(&on_link, n)
            })
            .map(Event::DelAddress)
            .into_iter()
            .collect(),
        Action::Flap { uplink } => link_of(uplink)
            .map(|link| {
                Event::NewLink(Link {
                    up: !link.up,
                    ..link
                })
            })
            .into_iter()
            .collect(),
        Action::Vanish { uplink } => link_of(uplink)
            .map(|link| Event::DelLink(link.ifindex))
            .into_iter()
            .collect(),
        Action::Appear { uplink } => match link_of(uplink) {
            Some(_) => vec![],
            None => vec![Event::NewLink(fresh(uplink))],
        },
        Action::Reindex { uplink } => match link_of(uplink) {
            Some(link) => vec![Event::DelLink(link.ifindex), Event::NewLink(fresh(uplink))],
            None => vec![],
        },
        Action::ClientGateway {
            uplink,
            gateway,
            metric,
        } => link_of(uplink)
            .filter(|link| link.up)
            .map(|link| {
                Event::NewRoute(client_default(
                    link.ifindex,
                    GATEWAYS[gateway % GATEWAYS.len()],
                    metric,
                ))
            })
            .into_iter()
            .collect(),
        Action::DelClientRoute { uplink, pick: n } => link_of(uplink)
            .and_then(|link| {
                let theirs: Vec<Route> = sim
                    .kernel
                    .routes
                    .iter()
                    .filter(|r| r.oif == Some(link.ifindex) && r.protocol != PROTO)
                    .copied()
                    .collect();
                pick(&theirs, n)
            })
            .map(Event::DelRoute)
            .into_iter()
            .collect(),
        Action::ForeignRoute {
            uplink,
            table,
            dst,
            gateway,
            metric,
        } => link_of(uplink)
            .filter(|link| link.up)
            .map(|link| {
                let (dst, len) = DESTINATIONS[dst % DESTINATIONS.len()]
                    .split_once('/')
                    .unwrap();
                let dst = ip(dst);
                // A next hop of the route's family, as the kernel insists.
                let gateway = GATEWAYS
                    .iter()
                    .map(|g| ip(g))
                    .filter(|g| g.is_ipv4() == dst.is_ipv4())
                    .nth(gateway % 2);
                Event::NewRoute(Route {
                    table: TABLES[table % TABLES.len()],
                    protocol: RTPROT_STATIC,
                    dst,
                    dst_len: len.parse().unwrap(),
                    gateway,
                    oif: Some(link.ifindex),
                    prefsrc: None,
                    metric,
                    scope: 0,
                })
            })
            .into_iter()
            .collect(),
        Action::ForeignRule {
            priority,
            address,
            table,
            marked,
        } => {
            let addr = ip(ADDRESSES[address % ADDRESSES.len()]
                .split('/')
                .next()
                .unwrap());
            let family = Family::of(&addr);
            let table = TABLES[table % TABLES.len()];
            let (src, fwmark) = if marked {
                (None, Some((mark_of_table(table), u32::MAX)))
            } else {
                (Some((addr, if addr.is_ipv4() { 32 } else { 128 })), None)
            };
            vec![Event::NewRule(Rule {
                family,
                priority,
                protocol: RTPROT_STATIC,
                src,
                oif: None,
                fwmark,
                table: Some(table),
                suppress_prefix_len: None,
                unreachable: false,
                other_selectors: false,
            })]
        }
        Action::DelRule { pick: n } => pick(&sim.kernel.rules, n)
            .map(Event::DelRule)
            .into_iter()
            .collect(),
        Action::DelOurRoute { pick: n } => {
            let ours: Vec<Route> = sim
                .kernel
                .routes
                .iter()
                .filter(|r| r.protocol == PROTO)
                .copied()
                .collect();
            pick(&ours, n).map(Event::DelRoute).into_iter().collect()
        }
        Action::Leftover { rule: true, .. } => vec![Event::NewRule(Rule {
            family: Family::V4,
            priority: 1000,
            protocol: PROTO,
            src: Some((ip("192.168.0.100"), 32)),
            oif: None,
            fwmark: None,
            table: Some(LEFTOVER_TABLE),
            suppress_prefix_len: None,
            unreachable: false,
            other_selectors: false,
        })],
        Action::Leftover {
            uplink,
            rule: false,
        } => link_of(uplink)
            .filter(|link| link.up)
            .map(|link| {
                Event::NewRoute(Route {
                    table: LEFTOVER_TABLE,
                    protocol: PROTO,
                    ..client_default(link.ifindex, "192.168.0.1", 0)
                })
            })
            .into_iter()
            .collect(),
        Action::Restart { .. } => vec![],
    }
}

/// A restart: a new reconciler over the kernel the killed one left (its tables and rules stay;
/// the guard's map and attachments only with their pins).
fn restart(r: Reconciler<Sim>, pins_kept: bool) -> Reconciler<Sim> {
    let config = r.config.clone();
    let mut sim = r.effects;
    sim.echoes.clear();
    if pins_kept {
        // Every attachment now runs the killed instance's program.
        sim.guard.outdated = sim.guard.guarded.clone();
    } else {
        sim.guard = Default::default();
    }
    Reconciler::start(config, sim)
}

/// Whether an op names only what multihome may touch: its own protocol, and for a deletion an
/// object it owned.
fn only_ours(op: &Op, owned: &State) -> bool {
    match op {
        Op::ReplaceRoute(r) => r.protocol == PROTO,
        Op::AddRule(r) => r.protocol == PROTO,
        Op::DelRoute(r) => r.protocol == PROTO && owned.routes.contains(r),
        Op::DelRule(r) => r.protocol == PROTO && owned.rules.contains(r),
        Op::DelEntry(addr) => owned.entries.contains_key(addr),
        Op::Detach(ifindex) => owned.guarded.contains(ifindex),
        Op::DelMark(mark) => owned.marks.contains_key(mark),
        Op::Attach(_) | Op::PutEntry(..) | Op::PutMark(..) => true,
    }
}

fn foreign(sim: &Sim) -> (BTreeSet<Route>, BTreeSet<Rule>) {
    (
        sim.kernel
            .routes
            .iter()
            .filter(|r| r.protocol != PROTO)
            .copied()
            .collect(),
        sim.kernel
            .rules
            .iter()
            .filter(|r| r.protocol != PROTO)
            .cloned()
            .collect(),
    )
}

/// How the passes after a step are chosen.
#[derive(Clone, Copy, Debug)]
enum Pass {
    /// Every uplink, as after a re-dump.
    Full,
    /// The uplinks the step's events touched, as the daemon chooses; a restart begins with a
    /// full pass.
    Touched,
}

/// One step of a history: what the world does, then whether the linger is over before the
/// next step (otherwise a quarter of it passes).
#[derive(Clone, Debug)]
struct Step {
    actions: Vec<Action>,
    wait: bool,
}

/// `owned` is the plan, but for entries of released addresses that linger: those must be
/// entries from before the step, unchanged.
fn owned_is_the_plan_but_lingering(owned: &State, plan: &State, before: &State) -> bool {
    let lingering_ok = owned.entries.iter().all(|(addr, entry)| {
        plan.entries.get(addr).or_else(|| before.entries.get(addr)) == Some(entry)
    });
    let planned_there = plan.entries.keys().all(|a| owned.entries.contains_key(a));
    lingering_ok
        && planned_there
        && (
            &owned.routes,
            &owned.rules,
            &owned.marks,
            &owned.guarded,
            &owned.outdated,
        ) == (
            &plan.routes,
            &plan.rules,
            &plan.marks,
            &plan.guarded,
            &plan.outdated,
        )
}

/// Plays `steps` from the seed under `config`.
fn check(config: &Config, steps: &[Step], pass: Pass) -> Result<(), TestCaseError> {
    let mut r = Reconciler::start(config.clone(), Sim::new(seed(), PROTO));
    let mut next_ifindex = 20;
    r.run();
    for (n, step) in steps.iter().enumerate() {
        r.deliver_echoes();
        for action in &step.actions {
            for event in events(action, &r.effects, &mut next_ifindex) {
                r.world(event);
            }
            if let Action::Restart { pins_kept } = *action {
                r = restart(r, pins_kept);
            }
        }
        if let Pass::Full = pass {
            r.pending.touched = Touched::all();
        }
        let owned = r.effects.owned();
        let before = foreign(&r.effects);
        let mut full = r.clone();
        full.pending.touched = Touched::all();
        let full = full.run();
        let ops = r.run();
        prop_assert_eq!(
            &r.effects.refused,
            &Vec::<String>::new(),
            "step {}: the kernel refused operations of {:#?}",
            n,
            ops
        );
        prop_assert_eq!(&ops, &full, "step {}: the pass differs from a full pass", n);
        for op in &ops {
            prop_assert!(
                only_ours(op, &owned),
                "step {n}: {op} touches what is not ours"
            );
        }
        prop_assert_eq!(
            &foreign(&r.effects),
            &before,
            "step {}: foreign objects changed",
            n
        );
        if let Err(diff) = r.view_is_the_kernel() {
            return Err(TestCaseError::fail(format!("step {n}: {diff}")));
        }
        let planned = plan(config, &r.effects.kernel);
        prop_assert!(
            owned_is_the_plan_but_lingering(&r.effects.owned(), &planned, &owned),
            "step {}: owned is not the plan after {:#?}:\n{:#?}\nplan:\n{:#?}",
            n,
            ops,
            r.effects.owned(),
            planned
        );
        let again = r.clone().full();
        prop_assert!(
            again.is_empty(),
            "step {n}: second reconcile not a no-op: {again:#?}"
        );
        let waited = r.wait(if step.wait { LINGER } else { LINGER / 4 });
        prop_assert!(
            waited
                .iter()
                .all(|op| matches!(op, Op::DelEntry(a) if !planned.entries.contains_key(a))),
            "step {n}: waiting did more than remove lingering entries: {waited:#?}"
        );
        if step.wait {
            prop_assert_eq!(
                &r.effects.owned(),
                &planned,
                "step {}: owned is not the plan once the linger is over",
                n
            );
        }
    }
    r.wait(LINGER);
    prop_assert_eq!(
        &r.effects.owned(),
        &plan(config, &r.effects.kernel),
        "owned is not the plan once the history's last linger is over"
    );
    Ok(())
}

/// The daemon's configuration with its cgroup hook attached: steering rules and marks planned.
fn steered() -> Config {
    config_with(
        &["vlan101", "vlan102", "vlan103"],
        crate::config::Params {
            steer: true,
            ..crate::config::Params::default()
        },
    )
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (prop::collection::vec(action(), 1..4), any::<bool>())
        .prop_map(|(actions, wait)| Step { actions, wait });
    prop::collection::vec(step, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        // Failures are reported with the shrunk sequence; no regression files in the tree.
        failure_persistence: None,
        // ChaCha unoptimised would take most of the time of a debug build.
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_history_converges_to_the_plan(steps in steps()) {
        check(&steered(), &steps, Pass::Full)?;
    }

    /// A pass over the uplinks the events touched does what a full pass does.
    #[test]
    fn a_pass_over_what_changed_is_a_full_pass(steps in steps()) {
        check(&steered(), &steps, Pass::Touched)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        // ChaCha unoptimised would take most of the time of a debug build.
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Guard-only and rules-only runs own half as much, and without steering neither marks nor
    /// their rules; the same laws hold.
    #[test]
    fn every_history_converges_in_either_mode(steps in steps(), ebpf in any::<bool>()) {
        let params = crate::config::Params {
            ebpf,
            rules: !ebpf,
            ..crate::config::Params::default()
        };
        check(&config_with(&["vlan101", "vlan102", "vlan103"], params), &steps, Pass::Touched)?;
    }
}
