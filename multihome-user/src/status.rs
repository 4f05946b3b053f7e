//! `multihome status`: reads the kernel and the guard's pins directly (no daemon needed, no
//! IPC), prints the report, and exits non-zero when something is wrong (a health check).

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::cli::StatusArgs;
use crate::config::{self, Config, Params, UplinkSpec};
use crate::guard::{self, PinnedMaps};
use crate::netlink::Netlink;
use crate::report::{report, Inputs, Report};
use crate::view::KernelView;
use crate::{plan, Fatal};

pub fn main(args: StatusArgs) -> Result<ExitCode, Fatal> {
    let protocol = config::protocol(args.owned.protocol).map_err(Fatal::usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Fatal::failure(format!("starting the runtime: {err}")))?;
    let view = runtime.block_on(async {
        let netlink = Netlink::connect()?;
        netlink.dump().await
    });
    let view = view.map_err(|err| Fatal::failure(format!("reading the kernel's state: {err}")))?;
    let mut owned = plan::owned(&view, protocol);
    let pins = PinnedMaps::open(&args.owned.pin_dir);
    let guard_pinned = pins.is_ok();
    let mut counters = BTreeMap::new();
    if let Ok(maps) = &pins {
        owned.entries = maps.entries().map_err(Fatal::from)?;
        counters = maps.counters().map_err(Fatal::from)?;
    }
    let attach_modes: BTreeMap<u32, String> = guard::attachments(&args.owned.pin_dir)
        .into_iter()
        .map(|(ifindex, kind)| (ifindex, kind.to_string()))
        .collect();
    owned.guarded = attach_modes.keys().copied().collect();
    let config = infer_config(&args, protocol, &view, guard_pinned)?;
    let report = report(&Inputs {
        config: &config,
        view: &view,
        owned: &owned,
        attach_modes: &attach_modes,
        counters: &counters,
        guard_pinned,
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Fatal::failure(e.to_string()))?
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The daemon's configuration as far as status can know it: uplinks from the arguments, else
/// $MULTIHOME_UPLINKS, else the `oif` rules multihome owns; each uplink's table from its owned
/// `oif` rule when the operator did not give one; rules expected unless the guard runs alone.
fn infer_config(
    args: &StatusArgs,
    protocol: u8,
    view: &KernelView,
    guard_pinned: bool,
) -> Result<Config, Fatal> {
    let owned_oif_rules: BTreeMap<&str, u32> = view
        .rules
        .iter()
        .filter(|r| r.protocol == protocol)
        .filter_map(|r| Some((r.oif.as_deref()?, r.table?)))
        .collect();
    let mut uplinks: Vec<UplinkSpec> = if !args.uplinks.is_empty() {
        args.uplinks
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(Fatal::usage)?
    } else if let Ok(list) = std::env::var("MULTIHOME_UPLINKS") {
        config::parse_uplink_list(&list).map_err(Fatal::usage)?
    } else {
        owned_oif_rules
            .keys()
            .map(|name| UplinkSpec {
                name: (*name).to_owned(),
                table: None,
            })
            .collect()
    };
    for spec in &mut uplinks {
        if spec.table.is_none() {
            spec.table = owned_oif_rules.get(spec.name.as_str()).copied();
        }
    }
    let routing_owned = view.rules.iter().any(|r| r.protocol == protocol)
        || view.routes.iter().any(|r| r.protocol == protocol);
    Config::new(Params {
        uplinks,
        protocol: protocol.into(),
        rules: routing_owned || !guard_pinned,
        ebpf: guard_pinned,
        ..Params::default()
    })
    .map_err(Fatal::usage)
}

/// The human form: one aligned row per uplink.
fn table(report: &Report) -> String {
    let header = [
        "UPLINK",
        "STATE",
        "ADDRESSES",
        "GATEWAY",
        "TABLE",
        "RULES",
        "ROUTES",
        "GUARD",
        "PASSED",
        "REDIRECTED",
        "FAILED",
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
            u.table.to_string(),
            format!("{}/{}", u.rules.present, u.rules.wanted),
            format!("{}/{}", u.routes.present, u.routes.wanted),
            or_dash(guard),
            c.passed.to_string(),
            c.redirected.to_string(),
            (c.redirect_failed + c.dropped_too_big).to_string(),
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
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}
