//! Table-driven tests of `plan`: each case is a configuration, a kernel view and the routes,
//! rules, entries and guarded devices expected, written as the operator reads them.

use super::*;
use crate::config::Params;
use crate::fixtures::*;
use crate::model::{AddressFlags, LinkKind, Op};
use crate::view::Touched;

struct Expect {
    routes: &'static [&'static str],
    rules: &'static [&'static str],
    entries: &'static [&'static str],
    guarded: &'static [u32],
}

const SEED_ROUTES: &[&str] = &[
    "default via 192.168.0.1 dev if11 table 1001 proto 77 metric 0",
    "192.168.0.0/24 dev if11 table 1001 proto 77 scope link src 192.168.0.100 metric 0",
    "default via 192.168.0.1 dev if12 table 1002 proto 77 metric 0",
    "192.168.0.0/24 dev if12 table 1002 proto 77 scope link src 192.168.0.101 metric 0",
];
const SEED_RULES: &[&str] = &[
    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
    "ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
    "ipv4 rule 1001: from all oif vlan102 lookup 1002 proto 77",
];
const SEED_ENTRIES: &[&str] = &[
    "guard 192.168.0.100/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
    "guard 192.168.0.101/24 -> if12 via 192.168.0.1 (parent if2, vlan 102) mtu 1500",
];

fn sorted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.into_iter().collect();
    items.sort();
    items
}

fn expected(items: &[&str]) -> Vec<String> {
    sorted(items.iter().map(|s| s.to_string()))
}

fn check(what: &str, state: &State, want: &Expect) {
    assert_eq!(
        sorted(state.routes.iter().map(Route::to_string)),
        expected(want.routes),
        "{what}: routes"
    );
    assert_eq!(
        sorted(state.rules.iter().map(Rule::to_string)),
        expected(want.rules),
        "{what}: rules"
    );
    assert_eq!(
        sorted(
            state
                .entries
                .iter()
                .map(|(a, e)| Op::PutEntry(*a, *e).to_string())
        ),
        expected(want.entries),
        "{what}: entries"
    );
    assert_eq!(
        state.guarded.iter().copied().collect::<Vec<_>>(),
        want.guarded,
        "{what}: guarded"
    );
}

fn flags(tentative: bool, dad_failed: bool, deprecated: bool) -> AddressFlags {
    AddressFlags {
        tentative,
        dad_failed,
        deprecated,
    }
}

fn set_up(view: &mut KernelView, ifindex: u32, up: bool) {
    view.links.get_mut(&ifindex).expect("link").up = up;
}

#[test]
fn plans() {
    type Case = (&'static str, Config, fn(&mut KernelView), Expect);
    let both = config(&["vlan101", "vlan102"]);
    let cases: Vec<Case> = vec![
        (
            "seed: overlapping subnets, identical gateways, one table each",
            both.clone(),
            |_| {},
            Expect {
                routes: SEED_ROUTES,
                rules: SEED_RULES,
                entries: SEED_ENTRIES,
                guarded: &[ETH0, WAN1, WAN2],
            },
        ),
        (
            "uplink missing: waited for, contributes nothing",
            config(&["vlan101", "vlan103"]),
            |_| {},
            Expect {
                routes: &SEED_ROUTES[..2],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &SEED_ENTRIES[..1],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "link down: no routes or rules, entries and guard kept",
            both.clone(),
            |v| set_up(v, WAN2, false),
            Expect {
                routes: &SEED_ROUTES[..2],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: SEED_ENTRIES,
                guarded: &[ETH0, WAN1, WAN2],
            },
        ),
        (
            "uplink without usable address: guarded, but no table or rules",
            both.clone(),
            |v| v.addresses.retain(|a| a.ifindex != WAN2),
            Expect {
                routes: &SEED_ROUTES[..2],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &SEED_ENTRIES[..1],
                guarded: &[ETH0, WAN1, WAN2],
            },
        ),
        (
            "same address on two uplinks: the first configured wins",
            config(&["vlan102", "vlan101"]),
            |v| v.addresses.push(address(WAN1, "192.168.0.101/24")),
            Expect {
                routes: &[
                    "default via 192.168.0.1 dev if11 table 1002 proto 77 metric 0",
                    "192.168.0.0/24 dev if11 table 1002 proto 77 scope link src 192.168.0.100 metric 0",
                    "default via 192.168.0.1 dev if12 table 1001 proto 77 metric 0",
                    "192.168.0.0/24 dev if12 table 1001 proto 77 scope link src 192.168.0.101 metric 0",
                ],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1002 proto 77",
                    "ipv4 rule 1000: from 192.168.0.101/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1002 proto 77",
                    "ipv4 rule 1001: from all oif vlan102 lookup 1001 proto 77",
                ],
                entries: SEED_ENTRIES,
                guarded: &[ETH0, WAN1, WAN2],
            },
        ),
        (
            "second address on one uplink: one prefix route from the lowest, a rule each",
            config(&["vlan101"]),
            |v| {
                v.addresses.push(address(WAN1, "192.168.0.150/24"));
                v.addresses.push(address(WAN1, "192.168.0.50/24"));
            },
            Expect {
                routes: &[
                    "default via 192.168.0.1 dev if11 table 1001 proto 77 metric 0",
                    "192.168.0.0/24 dev if11 table 1001 proto 77 scope link src 192.168.0.50 metric 0",
                ],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1000: from 192.168.0.150/32 lookup 1001 proto 77",
                    "ipv4 rule 1000: from 192.168.0.50/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &[
                    "guard 192.168.0.100/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                    "guard 192.168.0.150/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                    "guard 192.168.0.50/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                ],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "second address in another subnet: a prefix route each",
            config(&["vlan101"]),
            |v| v.addresses.push(address(WAN1, "10.1.2.3/16")),
            Expect {
                routes: &[
                    "default via 192.168.0.1 dev if11 table 1001 proto 77 metric 0",
                    "192.168.0.0/24 dev if11 table 1001 proto 77 scope link src 192.168.0.100 metric 0",
                    "10.1.0.0/16 dev if11 table 1001 proto 77 scope link src 10.1.2.3 metric 0",
                ],
                rules: &[
                    "ipv4 rule 1000: from 10.1.2.3/32 lookup 1001 proto 77",
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &[
                    "guard 10.1.2.3/16 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                    "guard 192.168.0.100/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                ],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "unusable addresses: tentative, dad failed, link-local, loopback; deprecated kept",
            config(&["vlan101"]),
            |v| {
                v.addresses.retain(|a| a.ifindex != WAN1);
                let mut add = |cidr: &str, f: AddressFlags| {
                    v.addresses.push(Address { flags: f, ..address(WAN1, cidr) })
                };
                add("192.168.0.100/24", flags(false, false, true));
                add("2001:db8:1::1/64", flags(true, false, false));
                add("2001:db8:1::2/64", flags(false, true, false));
                add("169.254.7.7/16", flags(false, false, false));
                add("fe80::1234/64", flags(false, false, false));
                add("127.0.0.2/8", flags(false, false, false));
                add("::1/128", flags(false, false, false));
            },
            Expect {
                routes: &SEED_ROUTES[..2],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &SEED_ENTRIES[..1],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "IPv6: metric 1024, scope universe, link-local gateway from the RA",
            config(&["vlan101"]),
            |v| {
                v.addresses.push(address(WAN1, "2001:db8:1::100/64"));
                v.addresses.push(address(WAN1, "fe80::2:0:0:0:b/64"));
                v.routes.push(client_default(WAN1, "fe80::1", 1024));
            },
            Expect {
                routes: &[
                    "default via 192.168.0.1 dev if11 table 1001 proto 77 metric 0",
                    "192.168.0.0/24 dev if11 table 1001 proto 77 scope link src 192.168.0.100 metric 0",
                    "default via fe80::1 dev if11 table 1001 proto 77 metric 1024",
                    "2001:db8:1::/64 dev if11 table 1001 proto 77 src 2001:db8:1::100 metric 1024",
                ],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                    "ipv6 rule 1000: from 2001:db8:1::100/128 lookup 1001 proto 77",
                    "ipv6 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &[
                    "guard 192.168.0.100/24 -> if11 via 192.168.0.1 (parent if2, vlan 101) mtu 1500",
                    "guard 2001:db8:1::100/64 -> if11 via fe80::1 (parent if2, vlan 101) mtu 1500",
                ],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "an RA default but no IPv6 address: no IPv6 table or rules",
            config(&["vlan101"]),
            |v| v.routes.push(client_default(WAN1, "fe80::1", 1024)),
            Expect {
                routes: &SEED_ROUTES[..2],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &SEED_ENTRIES[..1],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "no gateway known: the on-link route and the rules only",
            config(&["vlan101"]),
            |v| v.routes.retain(|r| !r.is_default()),
            Expect {
                routes: &SEED_ROUTES[1..2],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &["guard 192.168.0.100/24 -> if11 (parent if2, vlan 101) mtu 1500"],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "configured gateway overrides the discovered one",
            config_with(
                &["vlan101"],
                Params {
                    gateways: vec!["vlan101=192.168.0.254".parse().unwrap()],
                    ..Params::default()
                },
            ),
            |_| {},
            Expect {
                routes: &[
                    "default via 192.168.0.254 dev if11 table 1001 proto 77 metric 0",
                    "192.168.0.0/24 dev if11 table 1001 proto 77 scope link src 192.168.0.100 metric 0",
                ],
                rules: &[
                    "ipv4 rule 1000: from 192.168.0.100/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif vlan101 lookup 1001 proto 77",
                ],
                entries: &["guard 192.168.0.100/24 -> if11 via 192.168.0.254 (parent if2, vlan 101) mtu 1500"],
                guarded: &[ETH0, WAN1],
            },
        ),
        (
            "gateway: lowest metric among foreign defaults through the uplink",
            config(&["vlan101", "vlan102"]),
            |v| {
                // Ours (a table or the protocol) and other devices' never count.
                v.routes.push(Route { table: 1001, ..client_default(WAN1, "192.168.0.9", 1) });
                v.routes.push(Route { protocol: 77, table: 50, ..client_default(WAN1, "192.168.0.8", 1) });
                v.routes.push(client_default(WAN2, "192.168.0.7", 1));
                v.routes.push(Route { table: 100, ..client_default(WAN1, "192.168.0.6", 1023) });
                v.routes.push(client_default(WAN1, "192.168.0.5", 2000));
            },
            Expect {
                routes: &[
                    "default via 192.168.0.6 dev if11 table 1001 proto 77 metric 0",
                    "192.168.0.0/24 dev if11 table 1001 proto 77 scope link src 192.168.0.100 metric 0",
                    "default via 192.168.0.7 dev if12 table 1002 proto 77 metric 0",
                    "192.168.0.0/24 dev if12 table 1002 proto 77 scope link src 192.168.0.101 metric 0",
                ],
                rules: SEED_RULES,
                entries: &[
                    "guard 192.168.0.100/24 -> if11 via 192.168.0.6 (parent if2, vlan 101) mtu 1500",
                    "guard 192.168.0.101/24 -> if12 via 192.168.0.7 (parent if2, vlan 102) mtu 1500",
                ],
                guarded: &[ETH0, WAN1, WAN2],
            },
        ),
        (
            "--no-rules: guard only",
            config_with(&["vlan101", "vlan102"], Params { rules: false, ..Params::default() }),
            |_| {},
            Expect {
                routes: &[],
                rules: &[],
                entries: SEED_ENTRIES,
                guarded: &[ETH0, WAN1, WAN2],
            },
        ),
        (
            "--no-ebpf: rules only",
            config_with(&["vlan101", "vlan102"], Params { ebpf: false, ..Params::default() }),
            |_| {},
            Expect {
                routes: SEED_ROUTES,
                rules: SEED_RULES,
                entries: &[],
                guarded: &[],
            },
        ),
        (
            "macvlan child: recognised by MAC on its parent",
            config(&["mv0"]),
            |v| {
                v.links.insert(20, link(20, "mv0", LinkKind::Macvlan, Some(ETH0)));
                v.addresses.push(address(20, "198.51.100.7/24"));
            },
            Expect {
                routes: &["198.51.100.0/24 dev if20 table 1001 proto 77 scope link src 198.51.100.7 metric 0"],
                rules: &[
                    "ipv4 rule 1000: from 198.51.100.7/32 lookup 1001 proto 77",
                    "ipv4 rule 1001: from all oif mv0 lookup 1001 proto 77",
                ],
                entries: &["guard 198.51.100.7/24 -> if20 (parent if2, by MAC 02:00:00:00:00:14) mtu 1500"],
                guarded: &[ETH0, 20],
            },
        ),
        (
            "parent outside the namespace or itself: no lower, no VLAN id",
            config(&["vlan101", "vlan102"]),
            |v| {
                v.links.get_mut(&WAN1).unwrap().lower = Some(99);
                v.links.get_mut(&WAN2).unwrap().lower = Some(WAN2);
            },
            Expect {
                routes: SEED_ROUTES,
                rules: SEED_RULES,
                entries: &[
                    "guard 192.168.0.100/24 -> if11 via 192.168.0.1 mtu 1500",
                    "guard 192.168.0.101/24 -> if12 via 192.168.0.1 mtu 1500",
                ],
                guarded: &[WAN1, WAN2],
            },
        ),
        (
            "custom priority and protocol",
            config_with(&["vlan101"], Params { priority: 200, protocol: 99, ..Params::default() }),
            |_| {},
            Expect {
                routes: &[
                    "default via 192.168.0.1 dev if11 table 1001 proto 99 metric 0",
                    "192.168.0.0/24 dev if11 table 1001 proto 99 scope link src 192.168.0.100 metric 0",
                ],
                rules: &[
                    "ipv4 rule 200: from 192.168.0.100/32 lookup 1001 proto 99",
                    "ipv4 rule 201: from all oif vlan101 lookup 1001 proto 99",
                ],
                entries: &SEED_ENTRIES[..1],
                guarded: &[ETH0, WAN1],
            },
        ),
    ];
    for (what, config, edit, want) in cases {
        let mut view = seed();
        edit(&mut view);
        check(what, &plan(&config, &view), &want);
    }
}

#[test]
fn entry_fields() {
    let mut view = seed();
    view.addresses.push(address(WAN1, "2001:db8:1::100/64"));
    view.routes.push(client_default(WAN1, "fe80::1", 1024));
    view.addresses.push(address(WAN2, "2001:db8:2::100/64"));
    let state = plan(&config(&["vlan101", "vlan102"]), &view);
    let mut v4_gateway = [0u8; 16];
    v4_gateway[..4].copy_from_slice(&[192, 168, 0, 1]);
    let vlan101 = Egress {
        uplink_ifindex: WAN1,
        lower_ifindex: ETH0,
        mtu: 1500,
        vlan_id: 101,
        match_mac: 0,
        prefix_len: 24,
        mac: [2, 0, 0, 0, 0, WAN1 as u8],
        counter_slot: 0,
        gateway: v4_gateway,
    };
    let cases: &[(&str, Egress)] = &[
        ("192.168.0.100", vlan101),
        (
            "2001:db8:1::100",
            Egress {
                prefix_len: 64,
                gateway: "fe80::1".parse::<Ipv6Addr>().unwrap().octets(),
                ..vlan101
            },
        ),
        (
            // No IPv6 gateway known for vlan102: all zero.
            "2001:db8:2::100",
            Egress {
                uplink_ifindex: WAN2,
                vlan_id: 102,
                prefix_len: 64,
                mac: [2, 0, 0, 0, 0, WAN2 as u8],
                gateway: [0; 16],
                ..vlan101
            },
        ),
    ];
    for (addr, want) in cases {
        assert_eq!(state.entries.get(&ip(addr)), Some(want), "{addr}");
    }
    assert_eq!(state.entries.len(), 4);
}

#[test]
fn describes_changes() {
    let config = config(&["vlan101", "vlan102"]);
    let before = plan_and_assignments(&config, &seed()).1;
    type Case = (&'static str, fn(&mut KernelView), &'static [&'static str]);
    let cases: &[Case] = &[
        ("nothing changed", |_| {}, &[]),
        (
            "gateway change",
            |v| v.routes.push(client_default(WAN2, "192.168.0.254", 1)),
            &["vlan102: 192.168.0.101 -> table 1002 via 192.168.0.254"],
        ),
        (
            "renumbering",
            |v| v.addresses[3] = address(WAN2, "192.168.0.120/24"),
            &[
                "vlan102: 192.168.0.101 released",
                "vlan102: 192.168.0.120 -> table 1002 via 192.168.0.1",
            ],
        ),
        (
            "link down",
            |v| set_up(v, WAN1, false),
            &["vlan101: 192.168.0.100 -> guard only while vlan101 is down"],
        ),
        (
            "gateway lost",
            |v| v.routes.retain(|r| r.oif != Some(WAN1) || !r.is_default()),
            &["vlan101: 192.168.0.100 -> table 1001, on-link only until a gateway is known"],
        ),
        (
            "uplink vanished",
            |v| {
                v.apply(crate::model::Event::DelLink(WAN1));
            },
            &["vlan101: 192.168.0.100 released"],
        ),
    ];
    for (what, edit, want) in cases {
        let mut view = seed();
        edit(&mut view);
        assert_eq!(
            describe(&before, &plan_and_assignments(&config, &view).1),
            *want,
            "{what}"
        );
    }
    let fresh = describe(&Assignments::new(), &before);
    assert_eq!(
        fresh,
        [
            "vlan101: 192.168.0.100 -> table 1001 via 192.168.0.1",
            "vlan102: 192.168.0.101 -> table 1002 via 192.168.0.1",
        ]
    );
    let guard_only = config_with(
        &["vlan101"],
        Params {
            rules: false,
            ..Params::default()
        },
    );
    assert_eq!(
        describe(
            &Assignments::new(),
            &plan_and_assignments(&guard_only, &seed()).1
        ),
        ["vlan101: 192.168.0.100 -> guard only (--no-rules)"]
    );
}

/// Which uplinks a pass after an event looks at (the model tests check that such a pass does
/// what a full pass does; these name the cases).
#[test]
fn scope_of_what_changed() {
    let config = config(&["vlan101", "vlan102"]);
    let mut view = seed();
    // vlan102 also holds vlan101's address (identical leases).
    view.addresses.push(address(WAN2, "192.168.0.100/24"));
    let positions = |scope: Scope| match scope {
        Scope::All => None,
        Scope::Uplinks { positions, .. } => Some(positions.into_iter().collect::<Vec<_>>()),
    };
    let of = |touched: Touched| positions(Scope::of(&config, &view, &touched));
    let touched = |devices: &[u32], addresses: &[&str], tables: &[(Option<u32>, u8)]| Touched {
        all: false,
        devices: devices.iter().copied().collect(),
        addresses: addresses.iter().map(|a| ip(a)).collect(),
        tables: tables.iter().copied().collect(),
    };
    let cases: Vec<(&str, Touched, Option<Vec<usize>>)> = vec![
        ("nothing", Touched::default(), Some(vec![])),
        ("a device changed", Touched::all(), None),
        (
            "an address of vlan102's alone",
            touched(&[WAN2], &["192.168.0.101"], &[]),
            Some(vec![1]),
        ),
        (
            "an address both hold: the first wins it, the other may lose it",
            touched(&[WAN1], &["192.168.0.100"], &[]),
            Some(vec![0, 1]),
        ),
        (
            "eth0's static address: no uplink's device, held by no uplink",
            touched(&[ETH0], &["192.168.0.210"], &[]),
            Some(vec![]),
        ),
        (
            "a DHCP client's route through vlan101 in main",
            touched(&[WAN1], &[], &[(Some(254), 16)]),
            Some(vec![0]),
        ),
        (
            "a foreign route in vlan102's table",
            touched(&[ETH0], &[], &[(Some(1002), 4)]),
            Some(vec![1]),
        ),
        (
            "someone else's rule elsewhere",
            touched(&[], &[], &[(Some(50), 4), (None, 4)]),
            Some(vec![]),
        ),
        (
            "a rule of ours in a table no uplink has: only the full pass removes it",
            touched(&[], &[], &[(Some(1003), 77)]),
            None,
        ),
        (
            "a rule of ours that is not a lookup",
            touched(&[], &[], &[(None, 77)]),
            None,
        ),
    ];
    for (what, touched, want) in cases {
        assert_eq!(of(touched), want, "{what}");
    }
}
