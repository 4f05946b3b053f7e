//! What an operator lives through (renumbering, a gateway change, a link flap, a re-created
//! device, restarts, leftovers, foreign objects), played on the simulated kernel through the
//! reconciler the daemon runs, pass by pass: the operations each step causes, in the order
//! `diff` gives them.

use super::sim::Sim;
use super::{linger::LINGER, Reconciler};
use crate::config::Config;
use crate::diff::tests::{rank, route, strings, PROTO};
use crate::fixtures::{self, *};
use crate::model::{Address, AddressFlags, Event, Link, LinkKind, Op, Route, Rule, RT_TABLE_MAIN};
use crate::view::KernelView;

fn down(link: &Link) -> Event {
    Event::NewLink(Link {
        up: false,
        ..link.clone()
    })
}

struct Step {
    events: Vec<Event>,
    want: &'static [&'static str],
}

/// The operations a step causes: the pass its events cause, then the pass once the linger of
/// the entries it released is over. Each pass must be in `diff`'s order, and the kernel must
/// have refused nothing.
fn settle(r: &mut Reconciler<Sim>, what: &str) -> Vec<Op> {
    let passes = [r.run(), r.wait(LINGER)];
    for ops in &passes {
        assert!(
            ops.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "{what}: order of {:#?}",
            strings(ops)
        );
    }
    assert_eq!(r.effects.refused, Vec::<String>::new(), "{what}: refused");
    passes.concat()
}

/// Brings the seed up under `config`, then plays each step's events and settles, checking the
/// ops, their order, and that a second (full) pass has nothing left to do.
fn play(what: &str, config: &Config, start: KernelView, steps: Vec<Step>) {
    let mut r = Reconciler::start(config.clone(), Sim::new(start, config.protocol));
    r.run();
    assert_eq!(r.full(), vec![], "{what}: converged at start");
    for (n, step) in steps.into_iter().enumerate() {
        r.deliver_echoes();
        for event in step.events {
            r.world(event);
        }
        let ops = settle(&mut r, &format!("{what}, step {n}"));
        assert_eq!(strings(&ops), step.want, "{what}, step {n}");
        assert_eq!(r.full(), vec![], "{what}, step {n}: second reconcile");
        assert_eq!(
            plan(config, &r.effects.kernel).routes,
            r.effects.owned().routes,
            "{what}, step {n}"
        );
    }
}

#[test]
fn scenarios() {
    let seed = seed();
    let wan2 = seed.links[&WAN2].clone();
    let both = config(&["vlan101", "vlan102"]);
    let cases: Vec<(&str, Config, Vec<Step>)> = vec![
        (
            "gateway change",
            both.clone(),
            vec![Step {
                events: vec![Event::NewRoute(client_default(WAN2, "192.168.0.254", 1025))],
                want: &[
                    "guard 192.168.0.101/24 -> if12 via 192.168.0.254 (parent if2, vlan 102) mtu 1500",
                    "set route default via 192.168.0.254 dev if12 table 1002 proto 77 metric 0",
                ],
            }],
        ),
        (
            "renumbering in the same subnet: the new address before the old goes",
            both.clone(),
            vec![Step {
                events: vec![
                    Event::NewAddress(address(WAN2, "192.168.0.120/24")),
                    Event::DelAddress(address(WAN2, "192.168.0.101/24")),
                ],
                want: &[
                    "guard 192.168.0.120/24 -> if12 via 192.168.0.1 (parent if2, vlan 102) mtu 1500",
                    "set route 192.168.0.0/24 dev if12 table 1002 proto 77 scope link src 192.168.0.120 metric 0",
                    "add ipv4 rule 1000: from 192.168.0.120/32 lookup 1002 proto 77",
                    "delete ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
                    "unguard 192.168.0.101",
                ],
            }],
        ),
        (
            "renumbering into another subnet with another gateway, in two steps",
            both.clone(),
            vec![
                Step {
                    events: vec![
                        Event::NewAddress(address(WAN2, "10.0.0.5/8")),
                        Event::NewRoute(client_default(WAN2, "10.0.0.1", 1025)),
                    ],
                    want: &[
                        "guard 10.0.0.5/8 -> if12 via 10.0.0.1 (parent if2, vlan 102) mtu 1500",
                        "guard 192.168.0.101/24 -> if12 via 10.0.0.1 (parent if2, vlan 102) mtu 1500",
                        "set route 10.0.0.0/8 dev if12 table 1002 proto 77 scope link src 10.0.0.5 metric 0",
                        "set route default via 10.0.0.1 dev if12 table 1002 proto 77 metric 0",
                        "add ipv4 rule 1000: from 10.0.0.5/32 lookup 1002 proto 77",
                    ],
                },
                Step {
                    events: vec![Event::DelAddress(address(WAN2, "192.168.0.101/24"))],
                    want: &[
                        "delete ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
                        "unguard 192.168.0.101",
                    ],
                },
            ],
        ),
        (
            "second address on one uplink",
            both.clone(),
            vec![Step {
                events: vec![Event::NewAddress(address(WAN1, "192.168.0.150/24"))],
                want: &[
                    "guard 192.168.0.150/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                    "add ipv4 rule 1000: from 192.168.0.150/32 lookup 1001 proto 77",
                ],
            }],
        ),
        (
            "IPv6 address arrives tentative, then passes DAD",
            both.clone(),
            vec![
                Step {
                    events: vec![
                        Event::NewAddress(Address {
                            flags: AddressFlags { tentative: true, ..Default::default() },
                            ..address(WAN1, "2001:db8:1::100/64")
                        }),
                        Event::NewRoute(client_default(WAN1, "fe80::1", 1024)),
                    ],
                    want: &[],
                },
                Step {
                    events: vec![Event::NewAddress(address(WAN1, "2001:db8:1::100/64"))],
                    want: &[
                        "guard 2001:db8:1::100/64 -> if11 via fe80::1 (parent if2, vlan 101) mtu 1500",
                        "set route 2001:db8:1::/64 dev if11 table 1001 proto 77 src 2001:db8:1::100 metric 1024",
                        "set route default via fe80::1 dev if11 table 1001 proto 77 metric 1024",
                        "add ipv6 rule 1000: from 2001:db8:1::100/128 lookup 1001 proto 77",
                        "add ipv6 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                    ],
                },
            ],
        ),
        (
            "link down then up",
            both.clone(),
            vec![
                Step {
                    events: vec![down(&wan2)],
                    // The kernel flushed the DHCP default too: the entry forgets the gateway.
                    want: &[
                        "guard 192.168.0.101/24 -> if12 (parent if2, vlan 102) mtu 1500",
                        "delete ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
                        "delete ipv4 rule 1001: from all oif vlan102 lookup 1002 proto 77",
                    ],
                },
                Step {
                    events: vec![
                        Event::NewLink(wan2.clone()),
                        Event::NewRoute(client_default(WAN2, "192.168.0.1", 1025)),
                    ],
                    want: &[
                        "guard 192.168.0.101/24 -> if12 via 192.168.0.1 (parent if2, vlan 102) mtu 1500",
                        "set route 192.168.0.0/24 dev if12 table 1002 proto 77 scope link src 192.168.0.101 metric 0",
                        "set route default via 192.168.0.1 dev if12 table 1002 proto 77 metric 0",
                        "add ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
                        "add ipv4 rule 1001: from all oif vlan102 lookup 1002 proto 77",
                    ],
                },
            ],
        ),
        (
            "uplink vanishes, then comes back with a new ifindex",
            both.clone(),
            vec![
                Step {
                    events: vec![Event::DelLink(WAN2)],
                    // The device's attachment pin outlives it, and goes at once; the entry
                    // lingers, and goes in the pass after.
                    want: &[
                        "delete ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
                        "delete ipv4 rule 1001: from all oif vlan102 lookup 1002 proto 77",
                        "detach guard from if12",
                        "unguard 192.168.0.101",
                    ],
                },
                Step {
                    events: vec![
                        Event::NewLink(Link { ifindex: 13, ..wan2.clone() }),
                        Event::NewAddress(address(13, "192.168.0.101/24")),
                        Event::NewRoute(client_default(13, "192.168.0.1", 1025)),
                    ],
                    want: &[
                        "guard 192.168.0.101/24 -> if13 via 192.168.0.1 (parent if2, vlan 102) mtu 1500",
                        "attach guard to if13",
                        "set route 192.168.0.0/24 dev if13 table 1002 proto 77 scope link src 192.168.0.101 metric 0",
                        "set route default via 192.168.0.1 dev if13 table 1002 proto 77 metric 0",
                        "add ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
                        "add ipv4 rule 1001: from all oif vlan102 lookup 1002 proto 77",
                    ],
                },
            ],
        ),
        (
            "re-created between two reconciles: rules name the device and stay",
            both.clone(),
            vec![Step {
                events: vec![
                    Event::DelLink(WAN2),
                    Event::NewLink(Link { ifindex: 13, ..wan2.clone() }),
                    Event::NewAddress(address(13, "192.168.0.101/24")),
                    Event::NewRoute(client_default(13, "192.168.0.1", 1025)),
                ],
                // The old device's attachment pin outlived it.
                want: &[
                    "guard 192.168.0.101/24 -> if13 via 192.168.0.1 (parent if2, vlan 102) mtu 1500",
                    "attach guard to if13",
                    "set route 192.168.0.0/24 dev if13 table 1002 proto 77 scope link src 192.168.0.101 metric 0",
                    "set route default via 192.168.0.1 dev if13 table 1002 proto 77 metric 0",
                    "detach guard from if12",
                ],
            }],
        ),
        (
            "foreign rules and routes come and go: never an op",
            both.clone(),
            vec![Step {
                events: vec![
                    Event::NewRule(Rule { protocol: RTPROT_STATIC, priority: 900, ..rule("192.168.0.100", RT_TABLE_MAIN) }),
                    Event::NewRoute(Route { protocol: RTPROT_STATIC, table: 50, ..route(50, "203.0.113.0/24", Some("192.168.0.1"), 0) }),
                    Event::DelRoute(kernel_prefix(ETH0, "192.168.0.0/24", "192.168.0.210")),
                ],
                want: &[],
            }],
        ),
        (
            "a foreign default replaces ours in our table: left alone, ours back once it goes",
            both.clone(),
            vec![
                Step {
                    events: vec![Event::NewRoute(Route { protocol: RTPROT_STATIC, oif: Some(WAN1), ..route(1002, "0.0.0.0/0", Some("192.168.0.254"), 0) })],
                    want: &[],
                },
                Step {
                    events: vec![Event::DelRoute(Route { protocol: RTPROT_STATIC, oif: Some(WAN1), ..route(1002, "0.0.0.0/0", Some("192.168.0.254"), 0) })],
                    want: &["set route default via 192.168.0.1 dev if12 table 1002 proto 77 metric 0"],
                },
            ],
        ),
        (
            "an admin flushes our rules: repaired",
            both.clone(),
            vec![Step {
                events: vec![Event::DelRule(Rule { src: None, oif: Some("vlan101".into()), priority: 1001, ..rule("0.0.0.0", 1001) })],
                want: &["add ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77"],
            }],
        ),
    ];
    for (what, config, steps) in cases {
        play(what, &config, seed.clone(), steps);
    }
}

/// A restart of the daemon: the kernel the last one left, its guard kept with the pins or not.
fn restarted(sim: &Sim, keep_guard: bool) -> Sim {
    let mut next = Sim::new(sim.kernel.clone(), sim.protocol);
    if keep_guard {
        next.guard = sim.guard.clone();
        // The devices run the last instance's program, which the new one replaces in place.
        next.guard.outdated = next.guard.guarded.clone();
    }
    next
}

#[test]
fn restarts_adopt_and_clean_up() {
    let both = config(&["vlan101", "vlan102"]);
    let mut first = Reconciler::start(both.clone(), Sim::new(seed(), PROTO));
    let bring_up = first.run();
    assert_eq!(bring_up.len(), 2 + 1 + 2 + 4 + 4, "{bring_up:#?}");
    let stale_metric = Route {
        metric: 7,
        ..route(1001, "0.0.0.0/0", Some("192.168.0.1"), 0)
    };
    let leftover_route = Route {
        oif: Some(WAN1),
        ..route(1003, "192.168.0.0/24", None, 0)
    };
    let leftover_rule = rule("192.168.0.99", 1003);

    type Case = (
        &'static str,
        Config,
        bool,
        fn(&mut KernelView),
        Vec<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "same config, pinned guard: adopts everything, hooks its own program in place",
            both.clone(),
            true,
            |_| {},
            vec![
                "attach guard to if2",
                "attach guard to if11",
                "attach guard to if12",
            ],
        ),
        (
            "pins lost: only the guard is redone",
            both.clone(),
            false,
            |_| {},
            vec![
                "guard 192.168.0.100/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                "guard 192.168.0.101/24 -> if12 via 192.168.0.1 (parent if2, vlan 102) mtu 1500",
                "attach guard to if2",
                "attach guard to if11",
                "attach guard to if12",
            ],
        ),
        (
            "an uplink dropped from the config: removed, rules first",
            config(&["vlan101"]),
            true,
            |_| {},
            // The entry lingers, and goes in the pass after the detach.
            vec![
                "attach guard to if2",
                "attach guard to if11",
                "delete ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
                "delete ipv4 rule 1001: from all oif vlan102 lookup 1002 proto 77",
                "delete route default via 192.168.0.1 dev if12 table 1002 proto 77 metric 0",
                "delete route 192.168.0.0/24 dev if12 table 1002 proto 77 scope link src 192.168.0.101 metric 0",
                "detach guard from if12",
                "unguard 192.168.0.101",
            ],
        ),
        (
            "leftovers of ours: a stale metric, an old table and its rule",
            both.clone(),
            true,
            |v| {
                v.routes.push(Route { metric: 7, ..route(1001, "0.0.0.0/0", Some("192.168.0.1"), 0) });
                v.routes.push(Route { oif: Some(WAN1), ..route(1003, "192.168.0.0/24", None, 0) });
                v.rules.push(rule("192.168.0.99", 1003));
            },
            vec![
                "attach guard to if2",
                "attach guard to if11",
                "attach guard to if12",
                "delete ipv4 rule 1000: from 192.168.0.99/32 lookup 1003 proto 77",
                "delete route default via 192.168.0.1 dev if11 table 1001 proto 77 metric 7",
                "delete route 192.168.0.0/24 dev if11 table 1003 proto 77 metric 0",
            ],
        ),
    ];
    for (what, config, keep_guard, edit, want) in cases {
        let mut sim = restarted(&first.effects, keep_guard);
        edit(&mut sim.kernel);
        let mut r = Reconciler::start(config, sim);
        let ops = settle(&mut r, what);
        assert_eq!(strings(&ops), want, "{what}");
        assert_eq!(r.full(), vec![], "{what}: second reconcile");
        let kernel = &r.effects.kernel;
        assert!(!kernel.routes.contains(&stale_metric), "{what}");
        assert!(!kernel.routes.contains(&leftover_route), "{what}");
        assert!(!kernel.rules.contains(&leftover_rule), "{what}");
    }
}

#[test]
fn foreign_objects_are_never_touched() {
    // A host full of other people's routes and rules, some of them in the shape of ours.
    let both = config(&["vlan101", "vlan102"]);
    let mut view = seed();
    let ours = plan(&both, &view);
    for r in &ours.routes {
        view.routes.push(Route {
            protocol: RTPROT_STATIC,
            table: r.table + 100,
            ..*r
        });
    }
    for r in &ours.rules {
        view.rules.push(Rule {
            protocol: RTPROT_STATIC,
            ..r.clone()
        });
    }
    let mut r = Reconciler::start(both, Sim::new(view.clone(), PROTO));
    let ops = r.run();
    assert_eq!(r.effects.refused, Vec::<String>::new());
    let sim = &r.effects;
    assert_eq!(ops.len(), 13);
    for op in &ops {
        let protocol = match op {
            Op::ReplaceRoute(r) | Op::DelRoute(r) => r.protocol,
            Op::AddRule(r) | Op::DelRule(r) => r.protocol,
            _ => PROTO,
        };
        assert_eq!(protocol, PROTO, "{op}");
        assert!(!matches!(op, Op::DelRoute(_) | Op::DelRule(_)), "{op}");
    }
    for foreign in view.routes.iter().filter(|r| r.protocol != PROTO) {
        assert!(sim.kernel.routes.contains(foreign), "{foreign}");
    }
    for foreign in &view.rules {
        assert!(sim.kernel.rules.contains(foreign), "{foreign}");
    }
}

#[test]
fn the_simulated_kernel_refuses() {
    let both = config(&["vlan101", "vlan102"]);
    let sim = Sim::converged(&both, seed());
    let table_rule = rule("192.168.0.100", 1001);
    let down_route = Route {
        oif: Some(99),
        ..route(1001, "10.0.0.0/8", None, 0)
    };
    let foreign = Route {
        protocol: RTPROT_STATIC,
        ..route(1001, "0.0.0.0/0", None, 0)
    };
    let cases: Vec<(&str, Op, &str)> = vec![
        (
            "duplicate rule",
            Op::AddRule(table_rule.clone()),
            "File exists",
        ),
        (
            "rule to an empty table",
            Op::AddRule(rule("192.168.0.100", 1009)),
            "empty table",
        ),
        (
            "foreign rule",
            Op::AddRule(Rule {
                protocol: 3,
                ..table_rule
            }),
            "not ours",
        ),
        (
            "route through a missing device",
            Op::ReplaceRoute(down_route),
            "No such device",
        ),
        (
            "deleting what is not there",
            Op::DelRoute(route(1001, "10.0.0.0/8", None, 0)),
            "No such process",
        ),
        (
            "deleting a foreign route",
            Op::DelRoute(foreign),
            "not ours",
        ),
        (
            "deleting the routes under a rule",
            Op::DelRoute(route(1001, "0.0.0.0/0", Some("192.168.0.1"), 0)),
            "",
        ),
        (
            "detaching what is not attached",
            Op::Detach(99),
            "not attached",
        ),
    ];
    for (what, op, want) in cases {
        let mut trial = sim.clone();
        match trial.apply(&op) {
            Err(e) => assert!(e.contains(want), "{what}: {e}"),
            Ok(()) => assert!(want.is_empty(), "{what}: accepted"),
        }
    }
    // The table keeps its prefix route, so only deleting both empties it under the rules.
    let mut trial = sim.clone();
    trial
        .apply(&Op::DelRoute(route(
            1001,
            "0.0.0.0/0",
            Some("192.168.0.1"),
            0,
        )))
        .unwrap();
    let prefix = *trial
        .kernel
        .routes
        .iter()
        .find(|r| r.table == 1001)
        .unwrap();
    let e = trial.apply(&Op::DelRoute(prefix)).unwrap_err();
    assert!(e.contains("empty table"), "{e}");
}

/// A small deterministic generator (xorshift64*): random scenarios without a dependency, the
/// same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// One random thing the world does to the host: DHCP, an admin, a flapping link, udev.
fn random_event(rng: &mut Rng, sim: &Sim, next_ifindex: &mut u32) -> Option<Event> {
    const NAMES: [&str; 3] = ["vlan101", "vlan102", "vlan103"];
    const ADDRESSES: [&str; 7] = [
        "192.168.0.100/24",
        "192.168.0.101/24",
        "192.168.0.120/24",
        "10.0.0.5/8",
        "2001:db8:1::5/64",
        "2001:db8:1::6/64",
        "fe80::5/64",
    ];
    const GATEWAYS: [&str; 4] = ["192.168.0.1", "192.168.0.254", "10.0.0.1", "fe80::1"];
    let name = NAMES[rng.below(NAMES.len())];
    let link = sim.kernel.link_by_name(name).cloned();
    let ours = |r: &&Route| r.protocol == PROTO;
    Some(match (rng.below(10), link) {
        (0, Some(link)) => Event::NewAddress(Address {
            flags: AddressFlags {
                tentative: rng.below(4) == 0,
                ..AddressFlags::default()
            },
            ..address(link.ifindex, ADDRESSES[rng.below(ADDRESSES.len())])
        }),
        (1, Some(link)) => {
            let on_link: Vec<Address> = sim
                .kernel
                .addresses
                .iter()
                .filter(|a| a.ifindex == link.ifindex)
                .copied()
                .collect();
            Event::DelAddress(*rng.pick(&on_link)?)
        }
        (2, Some(link)) => Event::NewLink(Link {
            up: !link.up,
            ..link
        }),
        (3, Some(link)) => Event::DelLink(link.ifindex),
        (4, None) => {
            *next_ifindex += 1;
            let vlan = 100 + *next_ifindex as u16;
            Event::NewLink(fixtures::link(
                *next_ifindex,
                name,
                LinkKind::Vlan(vlan),
                Some(ETH0),
            ))
        }
        (5, Some(link)) if link.up => Event::NewRoute(client_default(
            link.ifindex,
            GATEWAYS[rng.below(GATEWAYS.len())],
            1024 + rng.below(2) as u32,
        )),
        (6, Some(link)) => {
            let theirs: Vec<Route> = sim
                .kernel
                .routes
                .iter()
                .filter(|r| r.oif == Some(link.ifindex) && r.protocol != PROTO)
                .copied()
                .collect();
            Event::DelRoute(*rng.pick(&theirs)?)
        }
        (7, _) => Event::DelRule(rng.pick(&sim.kernel.rules)?.clone()),
        (8, _) => {
            let routes: Vec<Route> = sim.kernel.routes.iter().filter(ours).copied().collect();
            Event::DelRoute(*rng.pick(&routes)?)
        }
        (9, _) => Event::NewRule(Rule {
            protocol: RTPROT_STATIC,
            priority: 900 + rng.below(3) as u32,
            ..rule("192.168.0.100", RT_TABLE_MAIN)
        }),
        _ => return None,
    })
}

#[test]
fn random_histories_converge() {
    let config = config_with(
        &["vlan101", "vlan102", "vlan103"],
        crate::config::Params {
            steer: true,
            ..crate::config::Params::default()
        },
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = std::collections::BTreeSet::new();
    for run in 0..200 {
        let mut r = Reconciler::start(config.clone(), Sim::new(seed(), PROTO));
        let mut next_ifindex = 20;
        r.run();
        for step in 0..40 {
            r.deliver_echoes();
            for _ in 0..1 + rng.below(4) {
                if let Some(event) = random_event(&mut rng, &r.effects, &mut next_ifindex) {
                    r.world(event);
                }
            }
            let ops = settle(&mut r, &format!("run {run}, step {step}"));
            seen.extend(ops.iter().map(rank));
            let context = format!("run {run}, step {step}: {:#?}", strings(&ops));
            let desired = plan(&config, &r.effects.kernel);
            assert_eq!(desired, r.effects.owned(), "{context}");
            assert_eq!(r.full(), vec![], "{context}");
        }
    }
    // Every kind of op happened (Detach: the parent once no uplink is left on it).
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    );
}
