//! What multihome owns, in one place: the routes and rules that carry its protocol, and the
//! guard's entries and attachments; and, in the tables it is given, what is someone else's. The
//! reconciler (what a pass may change), `status` (what is there) and `cleanup` (what to remove)
//! all ask here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use multihome_ebpf::Egress;

use crate::config::Config;
use crate::model::{Route, State};
use crate::plan::Scope;
use crate::view::KernelView;

/// The guard's part of what multihome owns: its map entries, the steering marks' uplinks, and
/// the devices it is attached to (by ifindex), as read from the maps and pins (or kept current
/// by the reconciler since).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GuardState {
    pub(crate) entries: BTreeMap<IpAddr, Egress>,
    pub(crate) marks: BTreeMap<u32, Egress>,
    pub(crate) guarded: BTreeSet<u32>,
    /// Of `guarded`, those hooked by another program than this instance's.
    pub(crate) outdated: BTreeSet<u32>,
}

/// What multihome owns within `scope`: its routes and rules in the scope's tables (with
/// `Scope::All`, every one that carries `protocol`, wherever it is), and of the guard's entries,
/// marks and attachments those bound to the scope's devices.
pub(crate) fn owned(view: &KernelView, protocol: u8, scope: &Scope, guard: &GuardState) -> State {
    State {
        routes: view
            .routes
            .iter()
            .filter(|r| r.protocol == protocol && scope.has_table(Some(r.table)))
            .copied()
            .collect(),
        rules: view
            .rules
            .iter()
            .filter(|r| r.protocol == protocol && scope.has_table(r.table))
            .cloned()
            .collect(),
        entries: (guard.entries.iter())
            .filter(|(_, egress)| scope.has_device(egress.uplink_ifindex))
            .map(|(&addr, &egress)| (addr, egress))
            .collect(),
        marks: (guard.marks.iter())
            .filter(|(_, egress)| scope.has_device(egress.uplink_ifindex))
            .map(|(&mark, &egress)| (mark, egress))
            .collect(),
        guarded: in_scope(scope, &guard.guarded),
        outdated: in_scope(scope, &guard.outdated),
    }
}

/// The devices of `devices` that `scope` guards.
fn in_scope(scope: &Scope, devices: &BTreeSet<u32>) -> BTreeSet<u32> {
    match scope {
        Scope::All => devices.clone(),
        Scope::Uplinks { guarded: ours, .. } => (ours.iter())
            .filter(|ifindex| devices.contains(ifindex))
            .collect(),
    }
}

/// Routes of someone else in the tables the configuration gives the uplinks in `scope`, sorted:
/// the daemon refuses to start rather than mix its routes with them (or replace one of them),
/// and at run time yields their slots and warns.
pub(crate) fn foreign_routes(
    config: &Config,
    view: &KernelView,
    scope: &Scope,
) -> Vec<(u32, Route)> {
    let mut foreign: Vec<(u32, Route)> = view
        .routes
        .iter()
        // The scope first: with a few uplinks, it rules out most routes before any hashing.
        .filter(|r| r.protocol != config.protocol && scope.has_table(Some(r.table)))
        .filter(|r| config.table_position(r.table).is_some())
        .map(|r| (r.table, *r))
        .collect();
    foreign.sort();
    foreign
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::model::Rule;

    #[test]
    fn owned_is_what_carries_our_protocol() {
        let config = config(&["vlan101", "vlan102"]);
        let mut view = seed();
        let ours = plan(&config, &view);
        view.routes.extend(ours.routes.iter().copied());
        view.rules.extend(ours.rules.iter().cloned());
        // A leftover of ours elsewhere is still ours; a foreign rule pointing at our table is not.
        let leftover = Route {
            table: 77,
            ..*ours.routes.first().unwrap()
        };
        view.routes.push(leftover);
        let foreign_rule = Rule {
            protocol: RTPROT_STATIC,
            priority: 5,
            ..ours.rules.first().unwrap().clone()
        };
        view.rules.push(foreign_rule);
        let owned = owned(&view, config.protocol, &Scope::All, &GuardState::default());
        let mut want_routes = ours.routes.clone();
        want_routes.insert(leftover);
        assert_eq!(owned.routes, want_routes);
        assert_eq!(owned.rules, ours.rules);
        assert!(owned.entries.is_empty() && owned.guarded.is_empty());
    }

    #[test]
    fn foreign_routes_in_our_tables() {
        let config = config(&["vlan101", "vlan102=7"]);
        let ours = plan(&config, &seed());
        let foreign_1001 = Route {
            table: 1001,
            ..client_default(WAN1, "192.168.0.1", 0)
        };
        let foreign_7 = Route {
            table: 7,
            protocol: RTPROT_STATIC,
            ..kernel_prefix(ETH0, "203.0.113.0/24", "192.168.0.210")
        };
        let elsewhere = Route {
            table: 1002,
            ..foreign_1001
        };
        type Case = (&'static str, Vec<Route>, Vec<(u32, Route)>);
        let cases: Vec<Case> = vec![
            ("a fresh host", seed().routes, vec![]),
            (
                "our own routes",
                ours.routes.iter().copied().collect(),
                vec![],
            ),
            ("not one of our tables", vec![elsewhere], vec![]),
            (
                "foreign routes, sorted by table",
                vec![foreign_1001, foreign_7],
                vec![(7, foreign_7), (1001, foreign_1001)],
            ),
        ];
        for (what, routes, want) in cases {
            let view = KernelView { routes, ..seed() };
            assert_eq!(foreign_routes(&config, &view, &Scope::All), want, "{what}");
        }
    }
}
