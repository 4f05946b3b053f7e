//! What `multihome status` reports, computed purely from the configuration, the kernel's view,
//! what multihome owns and the guard's pins. Health is "what the plan wants is there".
//!
//! The JSON form (`status --json`) is this module's `Report` serialised; its schema is
//! documented in docs/operations.md and versioned by `Report::version`.

use std::collections::BTreeMap;

use multihome_ebpf::{steer::mark_of_table, Counters, SteerCounters, SteerTarget};
use serde::Serialize;

use crate::config::Config;
use crate::model::{LinkKind, State};
use crate::plan;
use crate::view::KernelView;

/// Bumped on any incompatible change of the JSON form.
pub(crate) const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) version: u32,
    pub(crate) protocol: u8,
    /// Whether the guard's maps are pinned (it is loaded, or was left by `--keep-on-exit`).
    pub(crate) guard_pinned: bool,
    pub(crate) uplinks: Vec<UplinkReport>,
    /// Steering programs onto uplinks; null when it is off (not attached, or no cgroup2).
    pub(crate) steering: Option<SteeringReport>,
    /// True when every uplink is healthy: `status` exits 0 only then.
    pub(crate) healthy: bool,
}

/// The host's side of steering: the root, the rules the uplinks share, what was refused.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct SteeringReport {
    /// The steering root's cgroup directory.
    pub(crate) root: String,
    /// The steering program is attached to it.
    pub(crate) attached: bool,
    /// The shared rules (per family: `main` without defaults, the catch-all `unreachable`).
    pub(crate) rules: Presence,
    /// Sockets refused because their cgroup is in no uplink's slice.
    pub(crate) sockets_refused: u64,
    /// Marked packets dropped whose uplink had no device.
    pub(crate) marked_dropped: u64,
    /// Directories below the root that are no configured uplink's slice (their sockets are
    /// refused).
    pub(crate) unknown: Vec<String>,
}

/// One uplink's steering: its slice, what runs in it, its counters.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct UplinkSteering {
    /// The socket mark, hex.
    pub(crate) mark: String,
    /// The slice's cgroup directory.
    pub(crate) slice: String,
    pub(crate) cgroup_id: Option<u64>,
    /// The steering map has the slice's entry.
    pub(crate) mapped: bool,
    /// Sockets the slice's entry marked since it was written.
    pub(crate) sockets: u64,
    /// Processes in the slice and below.
    pub(crate) processes: usize,
    /// The cgroups in the slice (units, exec scopes) with their processes.
    pub(crate) units: Vec<SteeredUnit>,
    /// Marked packets that left through the uplink, and those dropped elsewhere.
    pub(crate) marked_passed: u64,
    pub(crate) marked_dropped: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone)]
pub(crate) struct SteeredUnit {
    pub(crate) name: String,
    pub(crate) processes: usize,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct UplinkReport {
    pub(crate) name: String,
    /// "up", "down" or "absent".
    pub(crate) state: &'static str,
    pub(crate) ifindex: Option<u32>,
    pub(crate) table: u32,
    pub(crate) lower: Option<Lower>,
    /// Usable addresses with their prefix length, e.g. "192.168.0.100/24".
    pub(crate) addresses: Vec<String>,
    pub(crate) gateways: Vec<String>,
    pub(crate) rules: Presence,
    pub(crate) routes: Presence,
    pub(crate) entries: Presence,
    /// Each guarded device of this uplink and how the guard is attached there ("tcx",
    /// "clsact"), or null where it is missing.
    pub(crate) attachments: Vec<Attachment>,
    pub(crate) counters: CounterReport,
    /// Null when steering is off.
    pub(crate) steering: Option<UplinkSteering>,
    /// One line: "ok" or what is wrong.
    pub(crate) health: String,
    pub(crate) ok: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Lower {
    pub(crate) name: String,
    pub(crate) ifindex: u32,
    pub(crate) vlan: Option<u16>,
}

/// How many of the wanted objects are there, and which are not.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Presence {
    pub(crate) wanted: usize,
    pub(crate) present: usize,
    pub(crate) missing: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub(crate) device: String,
    pub(crate) ifindex: u32,
    pub(crate) mode: Option<String>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct CounterReport {
    pub(crate) passed: u64,
    pub(crate) redirected: u64,
    pub(crate) redirect_failed: u64,
    pub(crate) bytes_redirected: u64,
    pub(crate) dropped_too_big: u64,
}

impl From<Counters> for CounterReport {
    fn from(c: Counters) -> Self {
        CounterReport {
            passed: c.passed,
            redirected: c.redirected,
            redirect_failed: c.redirect_failed,
            bytes_redirected: c.bytes_redirected,
            dropped_too_big: c.dropped_too_big,
        }
    }
}

/// Everything `report` reads.
pub(crate) struct Inputs<'a> {
    pub(crate) config: &'a Config,
    pub(crate) view: &'a KernelView,
    /// Owned routes and rules, entries from the pinned map, guarded devices from the pins.
    pub(crate) owned: &'a State,
    /// Attach mode by ifindex, from the pins.
    pub(crate) attach_modes: &'a BTreeMap<u32, String>,
    pub(crate) counters: &'a BTreeMap<u32, Counters>,
    pub(crate) guard_pinned: bool,
    /// What status read of steering; `None` when it is off.
    pub(crate) steering: Option<&'a SteeringInputs>,
}

/// What `status` read of steering from the cgroup tree and the maps.
#[derive(Debug, Default)]
pub(crate) struct SteeringInputs {
    pub(crate) root: String,
    pub(crate) attached: bool,
    /// Per uplink name: its slice as found.
    pub(crate) slices: BTreeMap<String, SliceSeen>,
    /// Names below the root that are no configured uplink's slice.
    pub(crate) unknown: Vec<String>,
    /// Per uplink ifindex.
    pub(crate) counters: BTreeMap<u32, SteerCounters>,
    pub(crate) host: SteerCounters,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SliceSeen {
    pub(crate) path: String,
    pub(crate) id: Option<u64>,
    /// The steering map's entry: its mark and sockets.
    pub(crate) entry: Option<SteerTarget>,
    pub(crate) processes: usize,
    pub(crate) units: Vec<SteeredUnit>,
}

pub(crate) fn report(inputs: &Inputs) -> Report {
    let (desired, assignments) = plan::plan_and_assignments(inputs.config, inputs.view);
    let uplinks: Vec<UplinkReport> = inputs
        .config
        .uplinks
        .iter()
        .map(|uplink| uplink_report(inputs, &desired, &assignments, &uplink.name, uplink.table))
        .collect();
    let steering = inputs.steering.map(|seen| SteeringReport {
        root: seen.root.clone(),
        attached: seen.attached,
        rules: presence(
            desired
                .rules
                .iter()
                .filter(|r| r.fwmark.is_some() && r.oif.is_none())
                .filter(|r| {
                    !inputs
                        .config
                        .uplinks
                        .iter()
                        .any(|u| r.table == Some(u.table))
                }),
            |r| inputs.owned.rules.contains(r),
            |r| r.to_string(),
        ),
        sockets_refused: seen.host.sockets_refused,
        marked_dropped: seen.host.marked_dropped,
        unknown: seen.unknown.clone(),
    });
    let steering_ok = steering
        .as_ref()
        .is_none_or(|s| s.attached && s.rules.missing.is_empty());
    Report {
        version: SCHEMA_VERSION,
        protocol: inputs.config.protocol,
        guard_pinned: inputs.guard_pinned,
        healthy: steering_ok && uplinks.iter().all(|u| u.ok),
        uplinks,
        steering,
    }
}

/// An uplink's steering as status found it.
fn uplink_steering(
    seen: &SteeringInputs,
    name: &str,
    table: u32,
    ifindex: Option<u32>,
) -> UplinkSteering {
    let slice = seen.slices.get(name).cloned().unwrap_or_default();
    let counters = ifindex
        .and_then(|i| seen.counters.get(&i))
        .copied()
        .unwrap_or_default();
    UplinkSteering {
        mark: format!("{:#x}", mark_of_table(table)),
        slice: slice.path,
        cgroup_id: slice.id,
        mapped: slice.entry.is_some_and(|e| e.mark == mark_of_table(table)),
        sockets: slice.entry.map_or(0, |e| e.sockets),
        processes: slice.processes,
        units: slice.units,
        marked_passed: counters.marked_passed,
        marked_dropped: counters.marked_dropped,
    }
}

fn uplink_report(
    inputs: &Inputs,
    desired: &State,
    assignments: &plan::Assignments,
    name: &str,
    table: u32,
) -> UplinkReport {
    let view = inputs.view;
    let Some(link) = view.link_by_name(name) else {
        return UplinkReport {
            name: name.to_owned(),
            state: "absent",
            ifindex: None,
            table,
            lower: None,
            addresses: Vec::new(),
            gateways: Vec::new(),
            rules: Presence::default(),
            routes: Presence::default(),
            entries: Presence::default(),
            attachments: Vec::new(),
            counters: CounterReport::default(),
            steering: inputs
                .steering
                .map(|s| uplink_steering(s, name, table, None)),
            health: "absent: waiting for the device to appear".to_owned(),
            ok: false,
        };
    };
    let ifindex = link.ifindex;
    let mine: Vec<_> = assignments
        .iter()
        .filter(|(_, a)| a.uplink == name)
        .collect();
    let prefix_of = |addr| {
        view.addresses
            .iter()
            .find(|a| a.ifindex == ifindex && a.addr == addr)
            .map_or(0, |a| a.prefix_len)
    };
    let addresses = mine
        .iter()
        .map(|(addr, _)| format!("{addr}/{}", prefix_of(**addr)))
        .collect();
    let mut gateways: Vec<String> = mine
        .iter()
        .filter_map(|(_, a)| a.gateway.map(|g| g.to_string()))
        .collect();
    gateways.dedup();
    let owned = inputs.owned;
    let rules = presence(
        desired.rules.iter().filter(|r| r.table == Some(table)),
        |r| owned.rules.contains(r),
        |r| match (&r.src, &r.oif) {
            (Some((addr, len)), _) => format!("from {addr}/{len} lookup {table}"),
            (None, Some(oif)) => format!("oif {oif} lookup {table}"),
            _ => format!("lookup {table}"),
        },
    );
    let routes = presence(
        desired.routes.iter().filter(|r| r.oif == Some(ifindex)),
        |r| owned.routes.contains(r),
        |r| format!("{}/{} table {}", r.dst, r.dst_len, r.table),
    );
    let entries = presence(
        desired
            .entries
            .iter()
            .filter(|(_, e)| e.uplink_ifindex == ifindex),
        |(addr, e)| owned.entries.get(addr) == Some(e),
        |(addr, _)| format!("map entry {addr}"),
    );
    let lower = link.lower.and_then(|i| view.links.get(&i)).map(|l| Lower {
        name: l.name.clone(),
        ifindex: l.ifindex,
        vlan: match link.kind {
            LinkKind::Vlan(id) => Some(id),
            _ => None,
        },
    });
    let guarded =
        std::iter::once(link).chain(lower.as_ref().and_then(|l| view.links.get(&l.ifindex)));
    let attachments: Vec<Attachment> = guarded
        .filter(|l| desired.guarded.contains(&l.ifindex))
        .map(|l| Attachment {
            device: l.name.clone(),
            ifindex: l.ifindex,
            mode: inputs.attach_modes.get(&l.ifindex).cloned(),
        })
        .collect();
    let state = if link.up { "up" } else { "down" };
    let mut problems = Vec::new();
    if !link.up {
        problems.push("down".to_owned());
    }
    if mine.is_empty() {
        problems.push("no usable address (waiting for DHCP?)".to_owned());
    }
    for (what, p) in [
        ("rules", &rules),
        ("routes", &routes),
        ("map entries", &entries),
    ] {
        if !p.missing.is_empty() {
            problems.push(format!(
                "{} of {} {what} missing",
                p.missing.len(),
                p.wanted
            ));
        }
    }
    let unattached: Vec<&str> = attachments
        .iter()
        .filter(|a| a.mode.is_none())
        .map(|a| a.device.as_str())
        .collect();
    if !unattached.is_empty() {
        problems.push(format!("guard not attached to {}", unattached.join(", ")));
    }
    let steering = inputs
        .steering
        .map(|s| uplink_steering(s, name, table, Some(ifindex)));
    if let Some(steering) = steering.as_ref().filter(|s| !s.mapped) {
        problems.push(format!("slice {} not steered", steering.slice));
    }
    UplinkReport {
        name: name.to_owned(),
        state,
        ifindex: Some(ifindex),
        table,
        lower,
        addresses,
        gateways,
        rules,
        routes,
        entries,
        attachments,
        counters: inputs
            .counters
            .get(&ifindex)
            .copied()
            .unwrap_or_default()
            .into(),
        steering,
        ok: problems.is_empty(),
        health: if problems.is_empty() {
            "ok".to_owned()
        } else {
            problems.join("; ")
        },
    }
}

fn presence<T>(
    wanted: impl Iterator<Item = T>,
    is_present: impl Fn(&T) -> bool,
    describe: impl Fn(&T) -> String,
) -> Presence {
    let mut p = Presence::default();
    for item in wanted {
        p.wanted += 1;
        if is_present(&item) {
            p.present += 1;
        } else {
            p.missing.push(describe(&item));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{config, seed, ETH0, WAN1, WAN2};
    use crate::reconcile::sim::Sim;

    /// The seed with everything multihome wants in place (applied on the simulated kernel).
    fn converged() -> (Config, KernelView, State) {
        let config = config(&["vlan101", "vlan102"]);
        let sim = Sim::converged(&config, seed());
        let owned = sim.owned();
        (config, sim.kernel.clone(), owned)
    }

    /// The report with the guard attached by TCX on `attached`.
    fn run(config: &Config, view: &KernelView, owned: &State, attached: &[u32]) -> Report {
        let modes: BTreeMap<u32, String> =
            attached.iter().map(|i| (*i, "tcx".to_owned())).collect();
        let counters = BTreeMap::from([(
            WAN2,
            Counters {
                passed: 5,
                redirected: 2,
                ..Counters::default()
            },
        )]);
        report(&Inputs {
            config,
            view,
            owned,
            attach_modes: &modes,
            counters: &counters,
            guard_pinned: true,
            steering: None,
        })
    }

    const ALL: &[u32] = &[ETH0, WAN1, WAN2];

    #[test]
    fn a_converged_host_is_healthy() {
        let (config, view, owned) = converged();
        let r = run(&config, &view, &owned, ALL);
        assert!(r.healthy, "{r:#?}");
        let b = &r.uplinks[1];
        assert_eq!(b.name, "vlan102");
        assert_eq!(b.state, "up");
        assert_eq!(b.table, 1002);
        assert_eq!(b.addresses, ["192.168.0.101/24"]);
        assert_eq!(b.gateways, ["192.168.0.1"]);
        assert_eq!((b.rules.present, b.rules.wanted), (2, 2));
        assert_eq!((b.routes.present, b.routes.wanted), (2, 2));
        assert_eq!((b.entries.present, b.entries.wanted), (1, 1));
        assert_eq!(
            b.lower,
            Some(Lower {
                name: "eth0".into(),
                ifindex: ETH0,
                vlan: Some(102)
            })
        );
        let devices: Vec<&str> = b.attachments.iter().map(|a| a.device.as_str()).collect();
        assert_eq!(devices, ["vlan102", "eth0"]);
        assert_eq!(b.counters.redirected, 2);
        assert_eq!(b.health, "ok");
    }

    #[test]
    fn missing_objects_and_absent_uplinks_are_unhealthy() {
        let (config, view, mut owned) = converged();
        owned.rules.retain(|r| r.table != Some(1002));
        let r = run(&config, &view, &owned, &[ETH0, WAN1]);
        assert!(!r.healthy);
        let b = &r.uplinks[1];
        assert_eq!(
            b.rules.missing,
            [
                "from 192.168.0.101/32 lookup 1002",
                "oif vlan102 lookup 1002"
            ]
        );
        assert_eq!(
            b.health,
            "2 of 2 rules missing; guard not attached to vlan102"
        );
        assert!(r.uplinks[0].ok, "vlan101 is unaffected");

        let absent = crate::fixtures::config(&["vlan101", "vlan103"]);
        let r = run(&absent, &view, &owned, ALL);
        assert_eq!(r.uplinks[1].state, "absent");
        assert!(!r.uplinks[1].ok);
    }

    #[test]
    fn json_names_its_schema_version() {
        let (config, view, owned) = converged();
        let json = serde_json::to_value(run(&config, &view, &owned, ALL)).unwrap();
        assert_eq!(json["version"], SCHEMA_VERSION);
        assert_eq!(json["uplinks"][1]["attachments"][1]["mode"], "tcx");
        assert_eq!(json["uplinks"][1]["counters"]["passed"], 5);
    }
}
