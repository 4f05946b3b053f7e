//! Table-driven tests of `diff` on hand-made states: the order and identity rules. What an
//! operator lives through (renumbering, a gateway change, ...) is played on the simulated kernel
//! in `reconcile::scenarios`, with the helpers here.

use super::*;
use crate::fixtures::*;
use crate::model::Rule;
use multihome_ebpf::Egress;

pub(crate) const PROTO: u8 = 77;

/// Where each kind of op must come in a diff.
pub(crate) fn rank(op: &Op) -> u8 {
    match op {
        Op::PutEntry(..) => 0,
        Op::PutMark(..) => 1,
        Op::Attach(_) => 2,
        Op::ReplaceRoute(_) => 3,
        Op::AddRule(_) => 4,
        Op::DelRule(_) => 5,
        Op::DelRoute(_) => 6,
        Op::DelMark(_) => 7,
        Op::DelEntry(_) => 8,
        Op::Detach(_) => 9,
    }
}

pub(crate) fn strings(ops: &[Op]) -> Vec<String> {
    ops.iter().map(Op::to_string).collect()
}

pub(crate) fn route(table: u32, cidr: &str, gateway: Option<&str>, metric: u32) -> Route {
    let (dst, len) = cidr.split_once('/').unwrap();
    Route {
        table,
        protocol: PROTO,
        dst: ip(dst),
        dst_len: len.parse().unwrap(),
        gateway: gateway.map(ip),
        oif: Some(WAN1),
        prefsrc: None,
        metric,
        scope: 0,
    }
}

fn entry(uplink_ifindex: u32) -> Egress {
    crate::fixtures::egress(uplink_ifindex)
}

fn state(routes: &[Route], rules: &[Rule], entries: &[(&str, Egress)], guarded: &[u32]) -> State {
    State {
        routes: routes.iter().copied().collect(),
        rules: rules.iter().cloned().collect(),
        entries: entries.iter().map(|(a, e)| (ip(a), *e)).collect(),
        marks: Default::default(),
        guarded: guarded.iter().copied().collect(),
        outdated: Default::default(),
    }
}

#[test]
fn diffs_of_states() {
    let default_1 = route(1001, "0.0.0.0/0", Some("192.168.0.1"), 0);
    let default_254 = route(1001, "0.0.0.0/0", Some("192.168.0.254"), 0);
    let prefix = route(1001, "192.168.0.0/24", None, 0);
    let other_prefix = route(1001, "10.0.0.0/8", None, 0);
    let stale_metric = route(1001, "0.0.0.0/0", Some("192.168.0.1"), 5);
    let a = rule("192.168.0.100", 1001);
    let b = rule("192.168.0.101", 1001);
    let cases: Vec<(&str, State, State, Vec<Op>)> = vec![
        ("nothing at all", State::default(), State::default(), vec![]),
        (
            "equal states",
            state(
                &[default_1, prefix],
                std::slice::from_ref(&a),
                &[("192.168.0.100", entry(11))],
                &[11],
            ),
            state(
                &[default_1, prefix],
                std::slice::from_ref(&a),
                &[("192.168.0.100", entry(11))],
                &[11],
            ),
            vec![],
        ),
        (
            "every kind, additions then removals in reverse",
            state(
                &[prefix],
                std::slice::from_ref(&a),
                &[("192.168.0.100", entry(11))],
                &[11],
            ),
            state(
                &[other_prefix],
                std::slice::from_ref(&b),
                &[("192.168.0.101", entry(12))],
                &[12],
            ),
            vec![
                Op::PutEntry(ip("192.168.0.100"), entry(11)),
                Op::Attach(11),
                Op::ReplaceRoute(prefix),
                Op::AddRule(a.clone()),
                Op::DelRule(b.clone()),
                Op::DelRoute(other_prefix),
                Op::DelEntry(ip("192.168.0.101")),
                Op::Detach(12),
            ],
        ),
        (
            "an earlier program's attachment: hooked again after the entries, or unhooked",
            state(&[], &[], &[("192.168.0.100", entry(11))], &[11]),
            State {
                outdated: [11, 12].into(),
                ..state(&[], &[], &[], &[11, 12])
            },
            vec![
                Op::PutEntry(ip("192.168.0.100"), entry(11)),
                Op::Attach(11),
                Op::Detach(12),
            ],
        ),
        (
            "a changed gateway is a replace, not a delete",
            state(&[default_254], &[], &[], &[]),
            state(&[default_1], &[], &[], &[]),
            vec![Op::ReplaceRoute(default_254)],
        ),
        (
            "a same-key route with another metric is stale",
            state(&[default_1], &[], &[], &[]),
            state(&[stale_metric], &[], &[], &[]),
            vec![Op::ReplaceRoute(default_1), Op::DelRoute(stale_metric)],
        ),
        (
            "a changed entry is put again",
            state(&[], &[], &[("192.168.0.100", entry(12))], &[]),
            state(&[], &[], &[("192.168.0.100", entry(11))], &[]),
            vec![Op::PutEntry(ip("192.168.0.100"), entry(12))],
        ),
        (
            "prefix routes before the default; default deleted before prefixes",
            state(&[default_1, other_prefix], &[], &[], &[]),
            state(
                &[
                    route(1002, "0.0.0.0/0", Some("192.168.0.1"), 0),
                    route(1002, "10.0.0.0/8", None, 0),
                ],
                &[],
                &[],
                &[],
            ),
            vec![
                Op::ReplaceRoute(other_prefix),
                Op::ReplaceRoute(default_1),
                Op::DelRoute(route(1002, "0.0.0.0/0", Some("192.168.0.1"), 0)),
                Op::DelRoute(route(1002, "10.0.0.0/8", None, 0)),
            ],
        ),
    ];
    for (what, desired, owned, want) in cases {
        check_diff(what, &desired, &owned, &want);
    }
}

fn check_diff(what: &str, desired: &State, owned: &State, want: &[Op]) {
    {
        let ops = diff(desired, owned);
        assert_eq!(ops, want, "{what}");
        let deleted_ok = ops.iter().all(|op| match op {
            Op::DelRoute(r) => owned.routes.contains(r),
            Op::DelRule(r) => owned.rules.contains(r),
            Op::DelEntry(a) => owned.entries.contains_key(a),
            Op::Detach(i) => owned.guarded.contains(i),
            Op::DelMark(m) => owned.marks.contains_key(m),
            _ => true,
        });
        assert!(deleted_ok, "{what}: deletes only what is owned");
    }
}

/// The steering catch-all is added before every other rule and removed after every other; the
/// marks' uplinks come with the guard's entries and go with them.
#[test]
fn steering_in_order() {
    let config = crate::fixtures::config_with(
        &["vlan101", "vlan102"],
        crate::config::Params {
            steer: true,
            ..crate::config::Params::default()
        },
    );
    let desired = plan(&config, &seed());
    let catch_alls: Vec<Rule> = (desired.rules.iter())
        .filter(|r| crate::plan::is_catch_all(r))
        .cloned()
        .collect();
    assert_eq!(catch_alls.len(), 2, "one per family");
    let ops = diff(&desired, &State::default());
    let added: Vec<&Rule> = (ops.iter())
        .filter_map(|op| match op {
            Op::AddRule(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(
        added[..2].iter().all(|r| crate::plan::is_catch_all(r)),
        "{added:#?}"
    );
    assert!(ops.iter().any(|op| matches!(op, Op::PutMark(..))));
    let removed = diff(&State::default(), &desired);
    let deleted: Vec<&Rule> = (removed.iter())
        .filter_map(|op| match op {
            Op::DelRule(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(deleted[deleted.len() - 2..]
        .iter()
        .all(|r| crate::plan::is_catch_all(r)));
    let ranks: Vec<u8> = removed.iter().map(rank).collect();
    assert!(ranks.is_sorted(), "{removed:#?}");
    check_diff("steering from scratch", &desired, &State::default(), &ops);
}
