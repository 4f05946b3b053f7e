//! `diff`: the ops that turn what multihome owns into what it wants, in a safe order.
//!
//! Additions first (entries, steering marks, guard, table routes, rules), removals after in
//! reverse (rules, routes, marks, entries, guard): a rule never points at an empty table, the
//! guard covers every window, and a renumbered address keeps working until its replacement is in
//! place. Entries and marks come before attachments so that a device hooked by an earlier
//! instance's program (an outdated one, whose maps may be an older layout's) gets this
//! instance's only once its maps hold them. Among the rules, the steering catch-all comes first
//! and goes last. Only objects in `owned` can be deleted, so nothing foreign is ever touched.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Family, Op, Route, Rule, State};
use crate::plan::is_catch_all;

#[cfg(test)]
pub(crate) mod tests;

pub(crate) fn diff(desired: &State, owned: &State) -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(
        desired
            .entries
            .iter()
            .filter(|(addr, entry)| owned.entries.get(addr) != Some(entry))
            .map(|(&addr, &entry)| Op::PutEntry(addr, entry)),
    );
    ops.extend(
        desired
            .marks
            .iter()
            .filter(|(mark, entry)| owned.marks.get(mark) != Some(entry))
            .map(|(&mark, &entry)| Op::PutMark(mark, entry)),
    );
    ops.extend(
        (desired.guarded.iter())
            .filter(|i| !owned.guarded.contains(i) || owned.outdated.contains(i))
            .map(|&i| Op::Attach(i)),
    );
    ops.extend(route_replacements(desired, owned).map(Op::ReplaceRoute));
    // The steering catch-all first in and last out: a marked socket never meets a rule set
    // without it.
    let mut added: Vec<Rule> = desired.rules.difference(&owned.rules).cloned().collect();
    added.sort_by_key(|rule| !is_catch_all(rule));
    ops.extend(added.into_iter().map(Op::AddRule));
    let mut removed: Vec<Rule> = owned.rules.difference(&desired.rules).cloned().collect();
    removed.sort_by_key(is_catch_all);
    ops.extend(removed.into_iter().map(Op::DelRule));
    ops.extend(stale_routes(desired, owned).map(Op::DelRoute));
    ops.extend(
        owned
            .marks
            .keys()
            .filter(|mark| !desired.marks.contains_key(mark))
            .map(|&mark| Op::DelMark(mark)),
    );
    ops.extend(
        owned
            .entries
            .keys()
            .filter(|addr| !desired.entries.contains_key(addr))
            .map(|&addr| Op::DelEntry(addr)),
    );
    ops.extend(
        owned
            .guarded
            .difference(&desired.guarded)
            .map(|&i| Op::Detach(i)),
    );
    ops
}

/// A route's identity for multihome: at most one desired route per key.
type RouteKey = (u32, Family, IpAddr, u8);

fn route_key(route: &Route) -> RouteKey {
    (route.table, route.family(), route.dst, route.dst_len)
}

/// Desired routes missing or different in `owned`, prefix routes before default routes: the
/// kernel checks a gateway against the routes it already has.
fn route_replacements<'a>(
    desired: &'a State,
    owned: &'a State,
) -> impl Iterator<Item = Route> + 'a {
    let mut routes: Vec<Route> = desired
        .routes
        .iter()
        .filter(|r| !owned.routes.contains(r))
        .copied()
        .collect();
    routes.sort_by_key(|r| (r.is_default(), *r));
    routes.into_iter()
}

/// Owned routes that are not desired and that no replacement overwrites: a replace overwrites
/// the route with the same key *and metric* (as the kernel matches them); a same-key route with
/// another metric is stale. Default routes go before the prefix routes their gateway needs.
fn stale_routes<'a>(desired: &'a State, owned: &'a State) -> impl Iterator<Item = Route> + 'a {
    let replaced: BTreeMap<RouteKey, u32> = desired
        .routes
        .iter()
        .map(|r| (route_key(r), r.metric))
        .collect();
    let mut routes: Vec<Route> = owned
        .routes
        .iter()
        .filter(|r| !desired.routes.contains(r) && replaced.get(&route_key(r)) != Some(&r.metric))
        .copied()
        .collect();
    routes.sort_by_key(|r| (!r.is_default(), *r));
    routes.into_iter()
}
