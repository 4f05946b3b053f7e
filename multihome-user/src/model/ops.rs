//! The shape shared by what multihome wants (`plan`) and what it owns now (the view's routes and
//! rules, the guard's entries and attachments), and the operations that turn one into the other
//! (`diff`), with the line each operation is logged as.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use multihome_ebpf::Egress;

use super::{Route, Rule};

/// Objects multihome owns: routes and rules with its protocol, guard map entries, the uplink of
/// each steering mark (`MARKS`, the guard's check of steered packets), and the devices the
/// guard is attached to (by ifindex).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub routes: BTreeSet<Route>,
    pub rules: BTreeSet<Rule>,
    pub entries: BTreeMap<IpAddr, Egress>,
    pub marks: BTreeMap<u32, Egress>,
    pub guarded: BTreeSet<u32>,
    /// Of `guarded`, the devices hooked by another program than this instance's (an earlier
    /// instance's, maybe of an older release): attached again, which replaces the program in
    /// place. What multihome owns only: a plan has none.
    pub outdated: BTreeSet<u32>,
}

/// One change to the kernel. `diff` emits them in the order they must be applied: the guard's
/// entries, the steering marks and the attachments first, then table routes, then rules; removals in the reverse order,
/// so that a rule never points at an empty table and the guard covers every window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutEntry(IpAddr, Egress),
    /// Where packets with this steering mark may leave: the uplink's device (and parent).
    PutMark(u32, Egress),
    /// Hook the guard to a device, or hook it again with this instance's program.
    Attach(u32),
    /// Add or replace (NLM_F_REPLACE) the route with this table, destination and prefix length.
    ReplaceRoute(Route),
    AddRule(Rule),
    DelRule(Rule),
    DelRoute(Route),
    DelMark(u32),
    DelEntry(IpAddr),
    Detach(u32),
}

/// One line an operator reads in the log, e.g. `add route 192.168.0.0/24 dev if5 table 1002 ...`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Attach(ifindex) => write!(f, "attach guard to if{ifindex}"),
            Op::PutEntry(addr, e) => {
                write!(f, "guard {addr}/{} -> if{}", e.prefix_len, e.uplink_ifindex)?;
                if let Some(gateway) = gateway(addr, &e.gateway) {
                    write!(f, " via {gateway}")?;
                }
                parent(f, e)?;
                write!(f, " mtu {}", e.mtu)
            }
            Op::PutMark(mark, e) => {
                write!(f, "steered mark {mark:#x} -> if{}", e.uplink_ifindex)?;
                parent(f, e)
            }
            Op::DelMark(mark) => write!(f, "forget steered mark {mark:#x}"),
            Op::ReplaceRoute(route) => write!(f, "set route {route}"),
            Op::AddRule(rule) => write!(f, "add {rule}"),
            Op::DelRule(rule) => write!(f, "delete {rule}"),
            Op::DelRoute(route) => write!(f, "delete route {route}"),
            Op::DelEntry(addr) => write!(f, "unguard {addr}"),
            Op::Detach(ifindex) => write!(f, "detach guard from if{ifindex}"),
        }
    }
}

/// `(parent ifN, vlan N)`, `(parent ifN, by MAC ...)` of a child uplink's entry.
fn parent(f: &mut fmt::Formatter<'_>, e: &Egress) -> fmt::Result {
    if e.lower_ifindex == 0 {
        return Ok(());
    }
    write!(f, " (parent if{}", e.lower_ifindex)?;
    if e.vlan_id != 0 {
        write!(f, ", vlan {}", e.vlan_id)?;
    }
    if e.match_mac != 0 {
        write!(f, ", by MAC {}", mac(&e.mac))?;
    }
    f.write_str(")")
}

/// The entry's gateway in the family of its address; `None` when unknown (all zero).
fn gateway(addr: &IpAddr, bytes: &[u8; 16]) -> Option<IpAddr> {
    if bytes.iter().all(|&b| b == 0) {
        return None;
    }
    Some(match addr {
        IpAddr::V4(_) => IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
        IpAddr::V6(_) => IpAddr::from(*bytes),
    })
}

fn mac(bytes: &[u8; 6]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}
