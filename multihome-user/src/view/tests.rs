//! The view's event handling, re-dumps and echo anticipation, case by case.

use super::*;
use crate::fixtures::{self, *};
use crate::model::AddressFlags;

/// Whether the view changed, and whether the routes must be dumped again.
fn effect(changed: bool, redump: bool) -> (bool, bool) {
    (changed, redump)
}

/// The seed plus a route and a rule of ours through vlan102 in table 1002.
fn start() -> KernelView {
    let mut view = seed();
    view.routes.push(Route {
        table: 1002,
        protocol: 77,
        ..client_default(WAN2, "192.168.0.1", 0)
    });
    view.rules.push(rule());
    view
}

/// The rule of ours for vlan102's address.
fn rule() -> Rule {
    fixtures::rule("192.168.0.101", 1002)
}

fn link_of(view: &KernelView, ifindex: u32) -> Link {
    view.links[&ifindex].clone()
}

#[test]
fn events() {
    let base = start();
    let wan2 = link_of(&base, WAN2);
    let dhcp2 = client_default(WAN2, "192.168.0.1", 1025);
    type Case = (
        &'static str,
        Vec<Event>,
        (bool, bool),
        fn(&KernelView) -> bool,
    );
    let cases: Vec<Case> = vec![
        (
            "a link echoed unchanged",
            vec![Event::NewLink(wan2.clone())],
            effect(false, false),
            |v| *v == start(),
        ),
        (
            "a link goes down: routes may be gone",
            vec![Event::NewLink(Link {
                up: false,
                ..wan2.clone()
            })],
            effect(true, true),
            |v| !v.links[&WAN2].up && v.routes.len() == start().routes.len(),
        ),
        (
            "a link already down stays down",
            vec![
                Event::NewLink(Link {
                    up: false,
                    ..wan2.clone()
                }),
                Event::NewLink(Link {
                    up: false,
                    mtu: 1400,
                    ..wan2.clone()
                }),
            ],
            effect(true, false),
            |v| v.links[&WAN2].mtu == 1400,
        ),
        (
            "a link comes up",
            vec![
                Event::NewLink(Link {
                    up: false,
                    ..wan2.clone()
                }),
                Event::NewLink(wan2.clone()),
            ],
            effect(true, false),
            |v| v.links[&WAN2].up,
        ),
        (
            "a link deleted takes its addresses and routes, not the rules",
            vec![Event::DelLink(WAN2)],
            effect(true, true),
            |v| {
                !v.links.contains_key(&WAN2)
                    && v.addresses.iter().all(|a| a.ifindex != WAN2)
                    && v.routes.iter().all(|r| r.oif != Some(WAN2))
                    && v.routes.len() == 3
                    && v.rules == [rule()]
            },
        ),
        (
            "a name reappearing under a new ifindex: the old device is gone",
            vec![Event::NewLink(Link {
                ifindex: 13,
                ..wan2.clone()
            })],
            effect(true, true),
            |v| {
                v.link_by_name("vlan102").map(|l| l.ifindex) == Some(13)
                    && !v.links.contains_key(&WAN2)
                    && v.routes.iter().all(|r| r.oif != Some(WAN2))
            },
        ),
        (
            "an unknown link deleted",
            vec![Event::DelLink(99)],
            effect(false, true),
            |v| *v == start(),
        ),
        (
            "a new address",
            vec![Event::NewAddress(address(WAN2, "192.168.0.150/24"))],
            effect(true, false),
            |v| v.addresses.len() == 5,
        ),
        (
            "an address's flags change in place",
            vec![Event::NewAddress(Address {
                flags: AddressFlags {
                    deprecated: true,
                    ..Default::default()
                },
                ..address(WAN2, "192.168.0.101/24")
            })],
            effect(true, false),
            |v| v.addresses.len() == 4 && v.addresses[3].flags.deprecated,
        ),
        (
            "same address, another prefix: a second address",
            vec![Event::NewAddress(address(WAN2, "192.168.0.101/16"))],
            effect(true, false),
            |v| v.addresses.len() == 5,
        ),
        (
            "an IPv4 address removed: routes may be gone",
            vec![Event::DelAddress(address(WAN2, "192.168.0.101/24"))],
            effect(true, true),
            |v| v.addresses.len() == 3,
        ),
        (
            "an IPv6 address removed: routes may have lost their source",
            vec![
                Event::NewAddress(address(WAN2, "2001:db8::1/64")),
                Event::NewRoute(Route {
                    prefsrc: Some(ip("2001:db8::1")),
                    ..kernel_prefix(WAN2, "2001:db8::/64", "2001:db8::1")
                }),
                Event::DelAddress(address(WAN2, "2001:db8::1/64")),
            ],
            effect(true, true),
            |v| v.addresses == start().addresses,
        ),
        (
            "an address no route uses as source removed: nothing to dump",
            vec![
                Event::NewAddress(address(WAN2, "2001:db8::1/64")),
                Event::DelAddress(address(WAN2, "2001:db8::1/64")),
            ],
            effect(true, false),
            |v| *v == start(),
        ),
        (
            "a route replaced at the same metric",
            vec![Event::NewRoute(Route {
                gateway: Some(ip("192.168.0.254")),
                ..dhcp2
            })],
            effect(true, false),
            |v| {
                v.routes.len() == start().routes.len()
                    && v.routes
                        .iter()
                        .any(|r| r.gateway == Some(ip("192.168.0.254")))
            },
        ),
        (
            "a route at another metric is another route",
            vec![Event::NewRoute(Route { metric: 5, ..dhcp2 })],
            effect(true, false),
            |v| v.routes.len() == start().routes.len() + 1,
        ),
        (
            "a route deleted",
            vec![Event::DelRoute(dhcp2)],
            effect(true, false),
            |v| {
                !v.routes
                    .contains(&client_default(WAN2, "192.168.0.1", 1025))
            },
        ),
        (
            "a route deleted twice",
            vec![Event::DelRoute(dhcp2), Event::DelRoute(dhcp2)],
            effect(false, false),
            |v| v.routes.len() == start().routes.len() - 1,
        ),
        (
            "a rule echoed twice is one rule",
            vec![Event::NewRule(rule()), Event::NewRule(rule())],
            effect(false, false),
            |v| v.rules == [rule()],
        ),
        (
            "a rule differing in one field is another rule",
            vec![Event::NewRule(Rule {
                protocol: 4,
                ..rule()
            })],
            effect(true, false),
            |v| v.rules.len() == 2,
        ),
        (
            "a rule deleted",
            vec![Event::DelRule(rule())],
            effect(true, false),
            |v| v.rules.is_empty(),
        ),
    ];
    for (what, events, want, check) in cases {
        let mut view = start();
        let mut last = Effect::default();
        for event in events {
            last = view.apply(event);
        }
        assert_eq!(
            (!last.touched.is_empty(), last.redump != Redump::Nothing),
            want,
            "{what}"
        );
        assert!(check(&view), "{what}: {view:#?}");
    }
}

/// What an event touched names the old object as well as the new: a route replaced in its
/// slot may have come from another device and protocol.
#[test]
fn touched_names_old_and_new() {
    let dhcp2 = client_default(WAN2, "192.168.0.1", 1025);
    let touched = |devices: &[u32], addresses: &[&str], tables: &[(Option<u32>, u8)]| Touched {
        all: false,
        devices: devices.iter().copied().collect(),
        addresses: addresses.iter().map(|a| ip(a)).collect(),
        tables: tables.iter().copied().collect(),
    };
    let cases: Vec<(&str, Event, Touched)> = vec![
        (
            "an address added",
            Event::NewAddress(address(WAN2, "192.168.0.150/24")),
            touched(&[WAN2], &["192.168.0.150"], &[]),
        ),
        (
            "an address removed",
            Event::DelAddress(address(WAN2, "192.168.0.101/24")),
            touched(&[WAN2], &["192.168.0.101"], &[]),
        ),
        (
            "a route replaced in its slot by one through another device, of another protocol",
            Event::NewRoute(Route {
                oif: Some(WAN1),
                protocol: 4,
                ..dhcp2
            }),
            touched(&[WAN1, WAN2], &[], &[(Some(254), 4), (Some(254), 16)]),
        ),
        (
            "a rule removed",
            Event::DelRule(rule()),
            touched(&[], &[], &[(Some(1002), 77)]),
        ),
        (
            "a rule that is not a lookup",
            Event::NewRule(Rule {
                table: None,
                ..rule()
            }),
            touched(&[], &[], &[(None, 77)]),
        ),
        ("an echo", Event::NewRule(rule()), Touched::default()),
        (
            "a device changed",
            Event::NewLink(Link {
                mtu: 1400,
                ..link_of(&start(), WAN2)
            }),
            Touched::all(),
        ),
        ("a device deleted", Event::DelLink(WAN2), Touched::all()),
    ];
    for (what, event, want) in cases {
        assert_eq!(start().apply(event).touched, want, "{what}");
    }
}

#[test]
fn a_dump_touches_what_differs() {
    let mut view = start();
    let dhcp2 = client_default(WAN2, "192.168.0.1", 1025);
    let mut routes: Vec<Route> = view.routes.iter().rev().copied().collect();
    routes.retain(|r| *r != dhcp2);
    routes.push(Route {
        prefsrc: None,
        ..kernel_prefix(WAN1, "10.0.0.0/8", "10.0.0.1")
    });
    let touched = view.replace_routes(&Redump::All, routes.clone());
    assert_eq!(view.routes, routes);
    assert_eq!(
        touched,
        Touched {
            devices: [WAN1, WAN2].into(),
            tables: [(Some(254), 2), (Some(254), 16)].into(),
            ..Touched::default()
        }
    );
    routes.reverse();
    assert!(
        view.replace_routes(&Redump::All, routes).is_empty(),
        "the same routes in another order"
    );
}

/// An address removed (not the device's last IPv4 one, which takes every IPv4 route through
/// the device): only the tables holding routes with it as source are dumped again, and the
/// dump replaces those tables' routes of that family alone.
#[test]
fn a_dump_of_some_tables_replaces_those() {
    let mut view = start();
    // A renumbering: the new address comes first, so the old one is not the last.
    view.apply(Event::NewAddress(address(WAN2, "192.168.0.150/24")));
    let effect = view.apply(Event::DelAddress(address(WAN2, "192.168.0.101/24")));
    let main = Redump::Tables([(Family::V4, 254)].into());
    assert_eq!(effect.redump, main);
    let kept: Vec<Route> = (view.routes.iter())
        .filter(|r| r.table != 254)
        .copied()
        .collect();
    // The kernel dropped the prefix route with that source; the dump of main lacks it.
    // A dump that ignored the table filter (no strict checking) lists other tables too.
    let dumped: Vec<Route> = (view.routes.iter())
        .filter(|r| r.prefsrc != Some(ip("192.168.0.101")))
        .copied()
        .collect();
    let touched = view.replace_routes(&main, dumped);
    assert_eq!(
        touched,
        Touched {
            devices: [WAN2].into(),
            tables: [(Some(254), 2)].into(),
            ..Touched::default()
        }
    );
    assert!(view
        .routes
        .iter()
        .all(|r| r.prefsrc != Some(ip("192.168.0.101"))));
    assert!(kept.iter().all(|r| view.routes.contains(r)));
    assert_eq!(view.routes.len(), start().routes.len() - 1);
}

#[test]
fn redumps_merge() {
    let tables = |t: &[u32]| Redump::Tables(t.iter().map(|&t| (Family::V4, t)).collect());
    let cases = [
        (Redump::Nothing, tables(&[1]), tables(&[1])),
        (tables(&[1]), tables(&[2]), tables(&[1, 2])),
        (tables(&[1]), Redump::All, Redump::All),
        (Redump::All, tables(&[2]), Redump::All),
        (tables(&[1]), Redump::Nothing, tables(&[1])),
    ];
    for (mut a, b, want) in cases {
        a.merge(b);
        assert_eq!(a, want);
    }
}

#[test]
fn record_anticipates_the_echo() {
    let ours = Route {
        table: 1002,
        protocol: 77,
        ..client_default(WAN2, "192.168.0.1", 0)
    };
    let moved = Route {
        gateway: Some(ip("192.168.0.254")),
        ..ours
    };
    let cases: Vec<(&str, Op)> = vec![
        ("replace route", Op::ReplaceRoute(moved)),
        ("delete route", Op::DelRoute(ours)),
        (
            "add rule",
            Op::AddRule(Rule {
                priority: 1001,
                ..rule()
            }),
        ),
        ("delete rule", Op::DelRule(rule())),
    ];
    for (what, op) in cases {
        let mut recorded = start();
        recorded.record(&op);
        let echo = match op.clone() {
            Op::ReplaceRoute(r) => Event::NewRoute(r),
            Op::DelRoute(r) => Event::DelRoute(r),
            Op::AddRule(r) => Event::NewRule(r),
            Op::DelRule(r) => Event::DelRule(r),
            _ => unreachable!(),
        };
        assert_ne!(recorded, start(), "{what}: recorded");
        assert_eq!(
            recorded.apply(echo),
            Effect::default(),
            "{what}: the echo changes nothing"
        );
    }
    // The guard's ops are not the view's business.
    let mut view = start();
    for op in [
        Op::Attach(WAN2),
        Op::DelEntry(ip("192.168.0.101")),
        Op::Detach(WAN2),
    ] {
        view.record(&op);
    }
    assert_eq!(view, start());
}
