//! `multihome status`: reads the kernel and the guard's pins directly (no daemon needed, no
//! IPC), prints the report, and exits non-zero when something is wrong (a health check).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use multihome_ebpf::Counters;

use crate::cli::{Owned, StatusArgs};
use crate::config::{self, Config, Params, UplinkSpec};
use crate::guard::{self, PinnedMaps};
use crate::model::State;
use crate::netlink;
use crate::ownership::{owned, GuardState};
use crate::plan::Scope;
use crate::report::{report, Inputs, Report, SliceSeen, SteeredUnit, SteeringInputs};
use crate::steer::{cgroup2, Root};
use crate::view::KernelView;
use crate::{defaults, Fatal};

pub(crate) fn main(args: StatusArgs) -> Result<ExitCode, Fatal> {
    let protocol = config::protocol(args.owned.protocol).map_err(Fatal::usage)?;
    let view = netlink::snapshot()?;
    let pins = Pins::read(&args.owned.pin_dir)?;
    let owned = owned(&view, protocol, &Scope::All, &pins.guard);
    let config = infer_config(&args, protocol, &view, &owned, pins.pinned, pins.steering)?;
    let steering = match pins.steering && pins.pinned {
        true => Some(steering_inputs(
            &config,
            &args.owned,
            &PinnedMaps::open(&args.owned.pin_dir)?,
        )?),
        false => None,
    };
    let report = pins.report(&config, &view, &owned, steering.as_ref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line per uplink of `config`, `NAME: HEALTH`, as `status` would report it now from `view`
/// and the pins under `pin_dir`: what the daemon says after a reload.
pub(crate) fn health_lines(
    config: &Config,
    view: &KernelView,
    pin_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let pins = Pins::read(pin_dir)?;
    let owned = owned(view, config.protocol, &Scope::All, &pins.guard);
    // The reload's report leaves the cgroup tree to `status`.
    let report = pins.report(config, view, &owned, None);
    Ok(report
        .uplinks
        .iter()
        .map(|u| format!("{}: {}", u.name, u.health))
        .collect())
}

/// What the guard's pins say: entries, counters, attachments and how each is made.
struct Pins {
    pinned: bool,
    guard: GuardState,
    counters: BTreeMap<u32, Counters>,
    attach_modes: BTreeMap<u32, String>,
    /// The steering program is attached (a link is pinned).
    steering: bool,
}

impl Pins {
    fn read(pin_dir: &Path) -> anyhow::Result<Pins> {
        let maps = PinnedMaps::open(pin_dir);
        let mut guard = GuardState::default();
        let mut counters = BTreeMap::new();
        if let Ok(maps) = &maps {
            guard.entries = maps.entries()?;
            guard.marks = maps.marks()?;
            counters = maps.counters()?;
        }
        let attach_modes: BTreeMap<u32, String> = guard::attachments(pin_dir)
            .into_iter()
            .map(|(ifindex, kind)| (ifindex, kind.to_string()))
            .collect();
        guard.guarded = attach_modes.keys().copied().collect();
        Ok(Pins {
            pinned: maps.is_ok(),
            guard,
            counters,
            attach_modes,
            steering: !guard::steering::links(pin_dir).is_empty(),
        })
    }

    fn report(
        &self,
        config: &Config,
        view: &KernelView,
        owned: &State,
        steering: Option<&SteeringInputs>,
    ) -> Report {
        report(&Inputs {
            config,
            view,
            owned,
            attach_modes: &self.attach_modes,
            counters: &self.counters,
            guard_pinned: self.pinned,
            steering,
        })
    }
}

/// The daemon's configuration as far as status can know it: the uplinks of
/// [`known_uplinks`], which must not be none; rules expected unless the guard runs alone.
fn infer_config(
    args: &StatusArgs,
    protocol: u8,
    view: &KernelView,
    owned: &State,
    guard_pinned: bool,
    steer: bool,
) -> Result<Config, Fatal> {
    let uplinks = known_uplinks(&args.uplinks, view, owned)?;
    if uplinks.is_empty() {
        return Err(Fatal::usage(
            "no uplinks to report on: multihome owns nothing here; name them \
             (multihome status wan1 wan2) or set MULTIHOME_UPLINKS",
        ));
    }
    let routing_owned = !owned.rules.is_empty() || !owned.routes.is_empty();
    Config::new(Params {
        uplinks,
        protocol: protocol.into(),
        rules: routing_owned || !guard_pinned,
        ebpf: guard_pinned,
        steer,
        ..Params::default()
    })
    .map_err(Fatal::usage)
}

/// What the steering root holds and the steering maps say, for the report.
fn steering_inputs(
    config: &Config,
    owned: &Owned,
    maps: &PinnedMaps,
) -> Result<SteeringInputs, Fatal> {
    let root = Root::locate(&owned.cgroup_root)?;
    let steered = maps.steered()?;
    let (counters, host) = maps.steer_counters()?;
    let mut slices = BTreeMap::new();
    for uplink in &config.uplinks {
        let path = root.slice(&uplink.name);
        let id = cgroup2::id(&path).ok();
        let units: Vec<SteeredUnit> = cgroup2::children(&path)
            .into_iter()
            .map(|name| SteeredUnit {
                processes: processes_below(&path.join(&name)),
                name,
            })
            .collect();
        slices.insert(
            uplink.name.clone(),
            SliceSeen {
                path: path.display().to_string(),
                id,
                entry: id.and_then(|id| steered.get(&id)).copied(),
                processes: processes_below(&path),
                units,
            },
        );
    }
    let known: Vec<String> = config
        .uplinks
        .iter()
        .map(|u| cgroup2::slice_name(&u.name))
        .collect();
    Ok(SteeringInputs {
        attached: root
            .id()
            .is_ok_and(|id| guard::steering::attached(&owned.pin_dir, id)),
        root: root.path.display().to_string(),
        slices,
        // A slice the map steers belongs to an uplink this status was not told about (the
        // daemon's own list may be longer): its sockets are marked, not refused.
        unknown: cgroup2::children(&root.path)
            .into_iter()
            .filter(|name| !known.contains(name))
            .filter(|name| {
                cgroup2::id(&root.path.join(name)).map_or(true, |id| !steered.contains_key(&id))
            })
            .collect(),
        counters,
        host,
    })
}

/// The processes in cgroup `dir` and below.
fn processes_below(dir: &std::path::Path) -> usize {
    cgroup2::processes(dir).len()
        + cgroup2::children(dir)
            .iter()
            .map(|child| processes_below(&dir.join(child)))
            .sum::<usize>()
}

/// The uplinks `status` and `check` look at: those `given`, else $MULTIHOME_UPLINKS or the
/// unit's EnvironmentFile (see `defaults`), else every device multihome owns something for (an
/// `oif` rule, a table route, a guard entry: an uplink whose rules were flushed must still be
/// reported, as broken); each uplink's table from its owned `oif` rule or routes when the
/// operator did not give one. None when nothing names any.
pub(crate) fn known_uplinks(
    given: &[String],
    view: &KernelView,
    owned: &State,
) -> Result<Vec<UplinkSpec>, Fatal> {
    let tables = owned_tables(view, owned);
    let mut uplinks: Vec<UplinkSpec> = if !given.is_empty() {
        given
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(Fatal::usage)?
    } else if let Some(list) = defaults::uplink_list() {
        config::parse_uplink_list(&list).map_err(Fatal::usage)?
    } else {
        tables
            .keys()
            .map(|name| UplinkSpec {
                name: name.clone(),
                table: None,
            })
            .collect()
    };
    for spec in &mut uplinks {
        if spec.table.is_none() {
            spec.table = tables.get(&spec.name).copied().flatten();
        }
    }
    Ok(uplinks)
}

/// Each device multihome owns something for, with its table when a rule or route tells it.
fn owned_tables(view: &KernelView, owned: &State) -> BTreeMap<String, Option<u32>> {
    let name = |ifindex: u32| view.links.get(&ifindex).map(|l| l.name.clone());
    let mut tables = BTreeMap::new();
    for ifindex in owned.entries.values().map(|e| e.uplink_ifindex) {
        if let Some(name) = name(ifindex) {
            tables.entry(name).or_insert(None);
        }
    }
    for route in &owned.routes {
        if let Some(name) = route.oif.and_then(name) {
            tables.insert(name, Some(route.table));
        }
    }
    for rule in &owned.rules {
        if let (Some(oif), Some(table)) = (&rule.oif, rule.table) {
            tables.insert(oif.clone(), Some(table));
        }
    }
    tables
}

/// The human form: one aligned row per uplink.
fn table(report: &Report) -> String {
    let header = [
        "UPLINK",
        "STATE",
        "ADDRESSES",
        "GATEWAY",
        "LOWER",
        "TABLE",
        "RULES",
        "ROUTES",
        "GUARD",
        "PASSED",
        "REDIRECTED",
        "FAILED",
        "BYTES",
        "HEALTH",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for u in &report.uplinks {
        let guard = u
            .attachments
            .iter()
            .map(|a| format!("{}:{}", a.device, a.mode.as_deref().unwrap_or("none")))
            .collect::<Vec<_>>()
            .join(",");
        let c = &u.counters;
        rows.push(vec![
            u.name.clone(),
            u.state.to_owned(),
            or_dash(u.addresses.join(",")),
            or_dash(u.gateways.join(",")),
            u.lower.as_ref().map_or("-".to_owned(), |l| match l.vlan {
                Some(vlan) => format!("{}/vlan{vlan}", l.name),
                None => l.name.clone(),
            }),
            u.table.to_string(),
            format!("{}/{}", u.rules.present, u.rules.wanted),
            format!("{}/{}", u.routes.present, u.routes.wanted),
            or_dash(guard),
            c.passed.to_string(),
            c.redirected.to_string(),
            (c.redirect_failed + c.dropped_too_big).to_string(),
            c.bytes_redirected.to_string(),
            u.health.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if !report.guard_pinned {
        out.push_str("guard: not loaded (no pinned maps)\n");
    }
    if let Some(s) = &report.steering {
        out.push_str(&format!(
            "steering: {} ({}), shared rules {}/{}, {} sockets refused, {} marked packets \
             without an uplink dropped\n",
            s.root,
            if s.attached {
                "attached"
            } else {
                "NOT attached"
            },
            s.rules.present,
            s.rules.wanted,
            s.sockets_refused,
            s.marked_dropped,
        ));
        for name in &s.unknown {
            out.push_str(&format!(
                "steering: {name} is no uplink's slice: its sockets are refused\n"
            ));
        }
    }
    for u in &report.uplinks {
        let Some(s) = &u.steering else { continue };
        let units: Vec<String> = s
            .units
            .iter()
            .map(|unit| format!("{} ({})", unit.name, unit.processes))
            .collect();
        out.push_str(&format!(
            "{}: {} mark {}{}: {} sockets, {} processes{}; marked packets {} out, {} dropped\n",
            u.name,
            s.slice,
            s.mark,
            if s.mapped { "" } else { " (NOT steered)" },
            s.sockets,
            s.processes,
            if units.is_empty() {
                String::new()
            } else {
                format!(" in {}", units.join(", "))
            },
            s.marked_passed,
            s.marked_dropped,
        ));
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}
