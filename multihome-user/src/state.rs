//! The shape shared by what multihome wants (`plan`) and what it owns now (`observe` + the
//! guard's maps), and the operations that turn one into the other (`diff`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use multihome_ebpf::Egress;

use crate::view::{Route, Rule};

/// Objects multihome owns: routes and rules with its protocol, guard map entries, and the
/// devices the guard is attached to (by ifindex).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub routes: BTreeSet<Route>,
    pub rules: BTreeSet<Rule>,
    pub entries: BTreeMap<IpAddr, Egress>,
    pub guarded: BTreeSet<u32>,
}

/// One change to the kernel. `diff` emits them in the order they must be applied: the guard and
/// its entries first, then table routes, then rules; removals in the reverse order, so that a rule
/// never points at an empty table and the guard covers every window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Attach(u32),
    PutEntry(IpAddr, Egress),
    /// Add or replace (NLM_F_REPLACE) the route with this table, destination and prefix length.
    ReplaceRoute(Route),
    AddRule(Rule),
    DelRule(Rule),
    DelRoute(Route),
    DelEntry(IpAddr),
    Detach(u32),
}
