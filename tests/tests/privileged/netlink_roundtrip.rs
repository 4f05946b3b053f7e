//! The netlink edge against the real kernel, in namespaces made here: dumps say exactly what `ip`
//! set up, applied ops dump back equal to themselves, deletes take only what they name, and the
//! subscription reports changes and the loss of sync.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use multihome::model::{
    Address, AddressFlags, Event, Family, LinkKind, Op, Route, Rule, RT_TABLE_MAIN,
};
use multihome::netlink::{Error, Events, Netlink, Notice};
use multihome::view::{KernelView, Redump};
use multihome_tests::netns::{require_root, Netns};

const PROTO: u8 = 77;
const RTPROT_KERNEL: u8 = 2;
const RTPROT_DHCP: u8 = 16;
const RT_SCOPE_LINK: u8 = 253;
const TABLE: u32 = 1001;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `f` to completion on a runtime whose thread lives in `ns`, so its netlink sockets do.
fn block_in<T: Send, Fut: Future<Output = T>>(ns: &Netns, f: impl FnOnce() -> Fut + Send) -> T {
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
}

/// A namespace with a veth uplink `up0` (its peer `peer0` beside it) (192.168.0.10/24, 2001:db8:1::10/64) and a DHCP-style
/// default route in main.
fn uplink_ns(tag: &str) -> Netns {
    require_root();
    let ns = Netns::new(tag).unwrap();
    ns.sh(
        "ip link add up0 type veth peer name peer0 && ip link set peer0 up && ip link set up0 up \
         && ip addr add 192.168.0.10/24 dev up0 \
         && ip addr add 2001:db8:1::10/64 dev up0 nodad \
         && ip route add default via 192.168.0.1 dev up0 proto dhcp metric 100",
    )
    .unwrap();
    ns
}

/// What plan makes for uplink `up0` (ifindex `oif`) with table 1001.
fn desired(oif: u32) -> (Vec<Route>, Vec<Rule>) {
    let v4_default = Route {
        table: TABLE,
        protocol: PROTO,
        dst: ip("0.0.0.0"),
        dst_len: 0,
        gateway: Some(ip("192.168.0.1")),
        oif: Some(oif),
        prefsrc: None,
        metric: 0,
        scope: 0,
    };
    let routes = vec![
        v4_default,
        Route {
            dst: ip("192.168.0.0"),
            dst_len: 24,
            gateway: None,
            prefsrc: Some(ip("192.168.0.10")),
            scope: RT_SCOPE_LINK,
            ..v4_default
        },
        Route {
            dst: ip("::"),
            gateway: Some(ip("fe80::1")),
            metric: 1024,
            ..v4_default
        },
        Route {
            dst: ip("2001:db8:1::"),
            dst_len: 64,
            gateway: None,
            prefsrc: Some(ip("2001:db8:1::10")),
            metric: 1024,
            // The kernel reports every IPv6 route with scope universe.
            scope: 0,
            ..v4_default
        },
    ];
    let from_v4 = Rule {
        family: Family::V4,
        priority: 1000,
        protocol: PROTO,
        src: Some((ip("192.168.0.10"), 32)),
        oif: None,
        fwmark: None,
        table: Some(TABLE),
        suppress_prefix_len: None,
        unreachable: false,
        other_selectors: false,
    };
    let oif_v4 = Rule {
        priority: 1001,
        src: None,
        oif: Some("up0".into()),
        ..from_v4.clone()
    };
    let rules = vec![
        from_v4.clone(),
        oif_v4.clone(),
        Rule {
            family: Family::V6,
            src: Some((ip("2001:db8:1::10"), 128)),
            ..from_v4
        },
        Rule {
            family: Family::V6,
            ..oif_v4
        },
    ];
    (routes, rules)
}

async fn apply_all(nl: &Netlink, ops: impl IntoIterator<Item = Op>) {
    for op in ops {
        nl.apply(&op).await.unwrap_or_else(|e| panic!("{e}"));
    }
}

fn routes_of(view: &KernelView, table: u32) -> Vec<Route> {
    let mut routes: Vec<Route> = view
        .routes
        .iter()
        .filter(|r| r.table == table)
        .copied()
        .collect();
    routes.sort();
    routes
}

#[test]
fn dump_reflects_what_ip_set_up() {
    let ns = uplink_ns("nldump");
    ns.sh(
        "ip link add mv0 link up0 type macvlan mode bridge && ip link set mv0 mtu 1400 \
         && ip addr add 192.168.0.20/24 dev up0 preferred_lft 0",
    )
    .unwrap();
    let up0 = ns.ifindex("up0").unwrap();
    let peer0 = ns.ifindex("peer0").unwrap();
    let mv0 = ns.ifindex("mv0").unwrap();
    // The MAC as `ip` reports it (/sys shows the caller's namespace).
    let mac = |dev: &str| -> [u8; 6] {
        let line = ns.run(&["ip", "-o", "link", "show", "dev", dev]).unwrap();
        let hex = line
            .split("link/ether ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let bytes: Vec<u8> = hex
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    };
    let (up0_mac, mv0_mac) = (mac("up0"), mac("mv0"));

    let view = block_in(&ns, || async {
        Netlink::connect().unwrap().dump().await.unwrap()
    });

    let link = &view.links[&up0];
    assert_eq!(
        (
            link.name.as_str(),
            link.up,
            link.mtu,
            link.mac,
            link.lower,
            link.kind
        ),
        ("up0", true, 1500, up0_mac, Some(peer0), LinkKind::Other)
    );
    let link = &view.links[&mv0];
    assert_eq!(
        (
            link.name.as_str(),
            link.up,
            link.mtu,
            link.mac,
            link.lower,
            link.kind
        ),
        ("mv0", false, 1400, mv0_mac, Some(up0), LinkKind::Macvlan)
    );
    assert_eq!(view.link_by_name("lo").unwrap().mac, [0; 6]);

    let on_up0: Vec<Address> = view
        .addresses
        .iter()
        .filter(|a| a.ifindex == up0)
        .copied()
        .collect();
    let addr = |a: &str, len, deprecated| Address {
        ifindex: up0,
        addr: ip(a),
        prefix_len: len,
        flags: AddressFlags {
            deprecated,
            ..AddressFlags::default()
        },
    };
    for want in [
        addr("192.168.0.10", 24, false),
        addr("192.168.0.20", 24, true),
        addr("2001:db8:1::10", 64, false),
    ] {
        assert!(on_up0.contains(&want), "{want:?} not in {on_up0:#?}");
    }

    let main = routes_of(&view, RT_TABLE_MAIN);
    let dhcp = Route {
        table: RT_TABLE_MAIN,
        protocol: RTPROT_DHCP,
        dst: ip("0.0.0.0"),
        dst_len: 0,
        gateway: Some(ip("192.168.0.1")),
        oif: Some(up0),
        prefsrc: None,
        metric: 100,
        scope: 0,
    };
    let v4_prefix = Route {
        protocol: RTPROT_KERNEL,
        dst: ip("192.168.0.0"),
        dst_len: 24,
        gateway: None,
        prefsrc: Some(ip("192.168.0.10")),
        metric: 0,
        scope: RT_SCOPE_LINK,
        ..dhcp
    };
    let v6_prefix = Route {
        dst: ip("2001:db8:1::"),
        dst_len: 64,
        prefsrc: None,
        metric: 256,
        scope: 0,
        ..v4_prefix
    };
    for want in [dhcp, v4_prefix, v6_prefix] {
        assert!(main.contains(&want), "{want:?} not in {main:#?}");
    }
    // Local and broadcast routes (table local) are not unicast: left out.
    assert!(
        view.routes.iter().all(|r| r.table != 255),
        "{:#?}",
        view.routes
    );

    let default_rule = |family, priority, table| Rule {
        family,
        priority,
        protocol: RTPROT_KERNEL,
        src: None,
        oif: None,
        fwmark: None,
        table: Some(table),
        suppress_prefix_len: None,
        unreachable: false,
        other_selectors: false,
    };
    let mut rules = view.rules.clone();
    rules.sort();
    let mut want = vec![
        default_rule(Family::V4, 0, 255),
        default_rule(Family::V4, 32766, 254),
        default_rule(Family::V4, 32767, 253),
        default_rule(Family::V6, 0, 255),
        default_rule(Family::V6, 32766, 254),
    ];
    want.sort();
    assert_eq!(rules, want);
}

#[test]
fn foreign_rule_selectors_are_flagged() {
    let ns = uplink_ns("nlsel");
    ns.sh(
        "ip rule add from 192.168.0.10 fwmark 7 lookup 1001 pref 900 \
         && ip rule add iif up0 lookup 1001 pref 901 \
         && ip rule add to 198.51.100.0/24 lookup 1001 pref 902 \
         && ip rule add not from 192.168.0.10 lookup 1001 pref 903 \
         && ip rule add from all goto 1000 pref 904 \
         && ip rule add from all lookup main suppress_prefixlength 0 pref 905 \
         && ip -6 rule add from 2001:db8:1::10 ipproto tcp dport 443 lookup 1001 pref 906 \
         && ip rule add from 192.168.0.10 prohibit pref 907",
    )
    .unwrap();
    let view = block_in(&ns, || async {
        Netlink::connect().unwrap().dump().await.unwrap()
    });
    // fwmark and suppress_prefixlength are modelled (the steering rules use them): read as such.
    let marked = view.rules.iter().find(|r| r.priority == 900).unwrap();
    assert_eq!(
        (marked.fwmark, marked.other_selectors),
        (Some((7, u32::MAX)), false)
    );
    let suppress = view.rules.iter().find(|r| r.priority == 905).unwrap();
    assert_eq!(
        (suppress.suppress_prefix_len, suppress.other_selectors),
        (Some(0), false)
    );
    for pref in [901, 902, 903, 904, 906] {
        let rule = view.rules.iter().find(|r| r.priority == pref).unwrap();
        assert!(rule.other_selectors, "{rule:?}");
    }
    let prohibit = view.rules.iter().find(|r| r.priority == 907).unwrap();
    assert_eq!(
        (prohibit.table, prohibit.other_selectors, prohibit.src),
        (None, false, Some((ip("192.168.0.10"), 32)))
    );
}

#[test]
fn applied_ops_dump_back_equal_and_deletes_are_exact() {
    let ns = uplink_ns("nlapply");
    let up0 = ns.ifindex("up0").unwrap();
    let (routes, rules) = desired(up0);
    // Someone else's objects beside ours: same table, same priority, same destination.
    ns.sh(
        "ip route add default via 192.168.0.1 dev up0 table 1001 proto static metric 5 \
         && ip route add 198.51.100.0/24 via 192.168.0.1 dev up0 table 1001 \
         && ip rule add from 192.168.0.10 lookup 1001 pref 1000 \
         && ip -6 rule add oif up0 lookup 1001 pref 1001 proto static",
    )
    .unwrap();
    let show = || {
        (
            ns.run(&["ip", "route", "show", "table", "1001"]).unwrap(),
            ns.run(&["ip", "-6", "route", "show", "table", "1001"])
                .unwrap(),
            ns.run(&["ip", "rule"]).unwrap(),
            ns.run(&["ip", "-6", "rule"]).unwrap(),
        )
    };
    let before = show();

    let (applied, replaced, after_delete, ip_rules) = block_in(&ns, || async {
        let nl = Netlink::connect().unwrap();
        apply_all(&nl, routes.iter().copied().map(Op::ReplaceRoute)).await;
        apply_all(&nl, rules.iter().cloned().map(Op::AddRule)).await;
        // Idempotent: the same again changes nothing and succeeds.
        apply_all(&nl, routes.iter().copied().map(Op::ReplaceRoute)).await;
        apply_all(&nl, rules.iter().cloned().map(Op::AddRule)).await;
        let applied = nl.dump().await.unwrap();
        let ip_rules = ns.run(&["ip", "rule"]).unwrap();

        // A new gateway replaces the route (same table, destination, metric).
        let moved = Route {
            gateway: Some(ip("192.168.0.254")),
            ..routes[0]
        };
        apply_all(&nl, [Op::ReplaceRoute(moved)]).await;
        let replaced = nl.dump_routes_of(&Redump::All).await.unwrap();

        apply_all(&nl, rules.iter().cloned().map(Op::DelRule)).await;
        apply_all(&nl, [Op::DelRoute(moved)]).await;
        apply_all(&nl, routes[1..].iter().copied().map(Op::DelRoute)).await;
        // Deleting what is gone is success too.
        apply_all(
            &nl,
            [Op::DelRule(rules[0].clone()), Op::DelRoute(routes[1])],
        )
        .await;
        (applied, replaced, show(), ip_rules)
    });

    for want in &routes {
        assert!(
            applied.routes.contains(want),
            "{want:?} not in {:#?}",
            routes_of(&applied, TABLE)
        );
    }
    for want in &rules {
        let n = applied.rules.iter().filter(|r| *r == want).count();
        assert_eq!(n, 1, "{want:?} in {:#?}", applied.rules);
    }
    for line in [
        "1000:\tfrom 192.168.0.10 lookup 1001 proto 77",
        "1001:\tfrom all oif up0 lookup 1001 proto 77",
    ] {
        assert!(
            ip_rules.lines().any(|l| l == line),
            "{line:?} not in\n{ip_rules}"
        );
    }

    let defaults: Vec<&Route> = replaced
        .iter()
        .filter(|r| r.table == TABLE && r.protocol == PROTO && r.dst == ip("0.0.0.0"))
        .collect();
    assert_eq!(defaults.len(), 1, "{defaults:#?}");
    assert_eq!(defaults[0].gateway, Some(ip("192.168.0.254")));

    assert_eq!(after_delete, before, "foreign objects changed");
}

#[test]
fn apply_reports_refusals_and_foreign_ops() {
    let ns = uplink_ns("nlerr");
    let up0 = ns.ifindex("up0").unwrap();
    let (routes, rules) = desired(up0);
    block_in(&ns, || async {
        let nl = Netlink::connect().unwrap();
        // A gateway that is not on-link.
        let bad = Op::ReplaceRoute(Route {
            gateway: Some(ip("203.0.113.1")),
            ..routes[0]
        });
        match nl.apply(&bad).await {
            Err(e @ Error::Kernel { errno, .. }) => {
                assert_eq!(errno, libc::ENETUNREACH);
                let text = e.to_string();
                assert!(
                    text.contains("ReplaceRoute")
                        && text.contains("203.0.113.1")
                        && text.contains("Network is unreachable"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            nl.apply(&Op::Attach(up0)).await,
            Err(Error::NotNetlink(_))
        ));
        let fancy = Rule {
            other_selectors: true,
            ..rules[0].clone()
        };
        assert!(matches!(
            nl.apply(&Op::AddRule(fancy)).await,
            Err(Error::Inexact(_))
        ));
    });
}

/// What the kernel makes of fields it does not keep as given: the view must hold its version.
#[test]
fn kernel_normalises_ipv6_scope_and_metric() {
    let ns = uplink_ns("nlnorm");
    let up0 = ns.ifindex("up0").unwrap();
    let (routes, _) = desired(up0);
    let given = Route {
        scope: RT_SCOPE_LINK,
        metric: 0,
        ..routes[3]
    };
    let dumped = block_in(&ns, || async {
        let nl = Netlink::connect().unwrap();
        nl.apply(&Op::ReplaceRoute(given)).await.unwrap();
        nl.dump_routes_of(&Redump::All).await.unwrap()
    });
    let kept = Route {
        scope: 0,
        metric: 1024,
        ..given
    };
    assert!(dumped.contains(&kept), "{kept:?} not in {dumped:#?}");
}

/// Encodings the main round trip does not reach: a table id that fits the header byte, and an
/// IPv4 route via an IPv6 next hop (RTA_VIA).
#[test]
fn small_tables_and_ipv6_next_hops_round_trip() {
    let ns = uplink_ns("nlenc");
    let up0 = ns.ifindex("up0").unwrap();
    let (routes, rules) = desired(up0);
    let small = Route {
        table: 200,
        ..routes[0]
    };
    let via_v6 = Route {
        dst: ip("198.51.100.0"),
        dst_len: 24,
        gateway: Some(ip("fe80::1")),
        ..routes[0]
    };
    let rule = Rule {
        table: Some(200),
        ..rules[0].clone()
    };
    let view = block_in(&ns, || async {
        let nl = Netlink::connect().unwrap();
        apply_all(
            &nl,
            [
                Op::ReplaceRoute(small),
                Op::ReplaceRoute(via_v6),
                Op::AddRule(rule.clone()),
            ],
        )
        .await;
        nl.dump().await.unwrap()
    });
    assert!(view.routes.contains(&small), "{:#?}", view.routes);
    assert!(view.routes.contains(&via_v6), "{:#?}", view.routes);
    assert!(view.rules.contains(&rule), "{:#?}", view.rules);
    let shown = ns.run(&["ip", "route", "show", "table", "1001"]).unwrap();
    assert!(
        shown.contains("198.51.100.0/24 via inet6 fe80::1 dev up0"),
        "{shown}"
    );
}

/// The next event `want` accepts, skipping others; panics after a few seconds.
async fn expect(events: &mut Events, what: &str, want: impl Fn(&Event) -> bool) -> Event {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Ok(Notice::Event(e))) if want(&e) => return e,
            Ok(Ok(notice)) => seen.push(notice),
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: not announced; saw {seen:#?}"),
        }
    }
}

#[test]
fn events_follow_changes_made_with_ip() {
    let ns = uplink_ns("nlev");
    let up0 = ns.ifindex("up0").unwrap();
    block_in(&ns, || async {
        let mut events = Events::subscribe(None).unwrap();
        let added = Address {
            ifindex: up0,
            addr: ip("192.168.0.30"),
            prefix_len: 24,
            flags: AddressFlags::default(),
        };
        ns.run(&["ip", "addr", "add", "192.168.0.30/24", "dev", "up0"])
            .unwrap();
        expect(&mut events, "new address", |e| {
            *e == Event::NewAddress(added)
        })
        .await;
        ns.run(&["ip", "addr", "del", "192.168.0.30/24", "dev", "up0"])
            .unwrap();
        expect(&mut events, "deleted address", |e| {
            *e == Event::DelAddress(added)
        })
        .await;

        let v6 = Address {
            addr: ip("2001:db8:2::1"),
            prefix_len: 64,
            ..added
        };
        ns.run(&[
            "ip",
            "addr",
            "add",
            "2001:db8:2::1/64",
            "dev",
            "up0",
            "nodad",
        ])
        .unwrap();
        expect(&mut events, "new v6 address", |e| {
            *e == Event::NewAddress(v6)
        })
        .await;

        let rule = Rule {
            family: Family::V4,
            priority: 1000,
            protocol: PROTO,
            src: Some((ip("192.168.0.10"), 32)),
            oif: None,
            fwmark: None,
            table: Some(TABLE),
            suppress_prefix_len: None,
            unreachable: false,
            other_selectors: false,
        };
        let add = "ip rule add from 192.168.0.10 lookup 1001 pref 1000 proto 77";
        ns.sh(add).unwrap();
        expect(&mut events, "new rule", |e| {
            *e == Event::NewRule(rule.clone())
        })
        .await;
        ns.sh(&add.replace(" add ", " del ")).unwrap();
        expect(&mut events, "deleted rule", |e| {
            *e == Event::DelRule(rule.clone())
        })
        .await;

        ns.run(&["ip", "link", "set", "up0", "down"]).unwrap();
        expect(
            &mut events,
            "link down",
            |e| matches!(e, Event::NewLink(l) if l.ifindex == up0 && !l.up),
        )
        .await;
        ns.run(&["ip", "link", "del", "up0"]).unwrap();
        expect(&mut events, "link gone", |e| *e == Event::DelLink(up0)).await;
    });
}

#[test]
fn a_small_receive_buffer_loses_sync_visibly() {
    let ns = uplink_ns("nlnobuf");
    let burst: String = (1..=250)
        .map(|i| format!("addr add 10.{}.{}.1/32 dev up0\n", i / 200, i % 200))
        .collect();
    block_in(&ns, || async {
        // The kernel's minimum (about 2 KiB) holds a handful of notifications.
        let mut events = Events::subscribe(Some(1)).unwrap();
        // The runtime is blocked here, so nothing reads the socket during the burst.
        ns.sh(&format!("printf '{burst}' | ip -batch -")).unwrap();
        let mut before = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
                Ok(Ok(Notice::SyncLost)) => break,
                Ok(Ok(Notice::Event(_))) => before += 1,
                other => panic!("no SyncLost after {before} events: {other:?}"),
            }
        }
        assert!(
            before < 250,
            "{before} events arrived before the loss was reported"
        );
        // The subscription goes on after the loss.
        ns.run(&["ip", "addr", "add", "192.168.0.40/24", "dev", "up0"])
            .unwrap();
        expect(
            &mut events,
            "address after the loss",
            |e| matches!(e, Event::NewAddress(a) if a.addr == ip("192.168.0.40")),
        )
        .await;
    });
}

/// After an address goes, the daemon dumps again only the tables that held routes with it as
/// source: the kernel honours the table (strict checking), and a table that is gone has none.
#[test]
fn a_dump_of_some_tables_lists_those_alone() {
    let ns = uplink_ns("nltables");
    ns.sh(
        "ip route add 203.0.113.0/24 via 192.168.0.1 dev up0 table 1001 \
         && ip route add 198.51.100.0/24 via 192.168.0.1 dev up0 table 1002 \
         && ip -6 route add 2001:db8:ff::/64 via 2001:db8:1::1 dev up0 table 1001",
    )
    .unwrap();
    let (all, v4_1001, v6_1001, both, gone) = block_in(&ns, || async {
        let nl = Netlink::connect().unwrap();
        let tables = |t: &[(Family, u32)]| Redump::Tables(t.iter().copied().collect());
        (
            nl.dump_routes_of(&Redump::All).await.unwrap(),
            nl.dump_routes_of(&tables(&[(Family::V4, 1001)]))
                .await
                .unwrap(),
            nl.dump_routes_of(&tables(&[(Family::V6, 1001)]))
                .await
                .unwrap(),
            nl.dump_routes_of(&tables(&[(Family::V4, 1001), (Family::V4, 1002)]))
                .await
                .unwrap(),
            nl.dump_routes_of(&tables(&[(Family::V4, 4000)]))
                .await
                .unwrap(),
        )
    });
    let dsts = |routes: &[Route]| {
        let mut d: Vec<String> = routes
            .iter()
            .map(|r| format!("{} {}/{}", r.table, r.dst, r.dst_len))
            .collect();
        d.sort();
        d
    };
    assert_eq!(dsts(&v4_1001), ["1001 203.0.113.0/24"]);
    assert_eq!(dsts(&v6_1001), ["1001 2001:db8:ff::/64"]);
    assert_eq!(dsts(&both), ["1001 203.0.113.0/24", "1002 198.51.100.0/24"]);
    assert!(gone.is_empty(), "{gone:?}");
    assert!(all.iter().any(|r| r.table == RT_TABLE_MAIN));
    assert!(all.len() > both.len() + v6_1001.len());
}
