//! The operator's view of a plan: which uplink, table and gateway each source address is bound
//! to, and one info log line for every address whose binding changed, e.g.
//! `vlan102: 192.168.0.100 -> table 1002 via 192.168.0.1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Path, Uplink};
use crate::config::Config;
use crate::model::Family;

/// Where a source address leaves, as the plan decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub(crate) uplink: String,
    pub(crate) table: u32,
    pub(crate) gateway: Option<IpAddr>,
    pub(crate) path: Path,
}

pub(crate) type Assignments = BTreeMap<IpAddr, Assignment>;

/// Every usable address of every present uplink, with the uplink that won it.
pub(super) fn of(config: &Config, present: &[Uplink]) -> Assignments {
    let mut all = Assignments::new();
    for uplink in present {
        for address in uplink.distinct_addresses() {
            all.insert(
                address.addr,
                Assignment {
                    uplink: uplink.link.name.clone(),
                    table: uplink.config.table,
                    gateway: uplink.gateway(Family::of(&address.addr)),
                    path: uplink.path(config),
                },
            );
        }
    }
    all
}

/// One line per address whose assignment changed between two plans, in address order.
pub(crate) fn describe(before: &Assignments, after: &Assignments) -> Vec<String> {
    let addresses: BTreeSet<&IpAddr> = before.keys().chain(after.keys()).collect();
    addresses
        .into_iter()
        .filter_map(|addr| match (before.get(addr), after.get(addr)) {
            (old, Some(new)) if old != Some(new) => Some(line(addr, new)),
            (Some(old), None) => Some(format!("{}: {addr} released", old.uplink)),
            _ => None,
        })
        .collect()
}

fn line(addr: &IpAddr, a: &Assignment) -> String {
    let name = &a.uplink;
    match (a.path, a.gateway) {
        (Path::Routed, Some(gateway)) => {
            format!("{name}: {addr} -> table {} via {gateway}", a.table)
        }
        (Path::Routed, None) => format!(
            "{name}: {addr} -> table {}, on-link only until a gateway is known",
            a.table
        ),
        (Path::LinkDown, _) => format!("{name}: {addr} -> guard only while {name} is down"),
        (Path::GuardOnly, _) => format!("{name}: {addr} -> guard only (--no-rules)"),
    }
}
