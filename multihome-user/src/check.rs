//! `multihome check`: what on this host will stop multihome from working or fight it, each
//! finding with the fix to apply, and what works. The kernel is asked, not looked up: the
//! [`probe`](crate::probe) tries the guard in private namespaces. `findings` and the probe's
//! `verdict` are pure; `gather` and the probe read and try the host.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::CheckArgs;
use crate::config::{self, Config, Params};
use crate::guard::PinnedMaps;
use crate::model::Family;
use crate::netlink;
use crate::ownership::{self, GuardState};
use crate::plan::Scope;
use crate::probe::{self, verdict, Probe, Step};
use crate::steer::{cgroup2, Root};
use crate::view::KernelView;
use crate::{privileges, status, Fatal};

/// One thing to fix, printed on one line.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Finding {
    pub(crate) problem: String,
    pub(crate) fix: String,
}

/// Per-uplink sysctls that matter (IPv4 conf of the device and of "all").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sysctls {
    pub(crate) rp_filter: u8,
    pub(crate) arp_ignore: u8,
    pub(crate) arp_announce: u8,
}

/// Everything `findings` looks at.
pub(crate) struct Host<'a> {
    /// The uplinks, when any are known: without them only the host is checked.
    pub(crate) config: Option<&'a Config>,
    pub(crate) view: &'a KernelView,
    /// The rule priority and protocol the daemon will use.
    pub(crate) priority: u32,
    pub(crate) protocol: u8,
    pub(crate) bpffs_mounted: bool,
    /// Effective values for each present uplink (the larger of "all" and the device's).
    pub(crate) sysctls: BTreeMap<String, Sysctls>,
    /// systemd-networkd runs and would delete foreign rules/routes.
    pub(crate) networkd_manages_foreign: bool,
    pub(crate) network_manager_running: bool,
}

/// What is wrong with the host's settings (the guard's own findings come from the probe).
pub(crate) fn findings(host: &Host) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |problem: String, fix: &str| {
        out.push(Finding {
            problem,
            fix: fix.to_owned(),
        })
    };
    if !host.bpffs_mounted {
        add(
            "bpffs is not mounted at /sys/fs/bpf".to_owned(),
            "mount -t bpf bpf /sys/fs/bpf (multihome mounts it itself when it has CAP_SYS_ADMIN)",
        );
    }
    if host.networkd_manages_foreign {
        add(
            "systemd-networkd deletes foreign rules and routes on reconfigure (multihome repairs them)".to_owned(),
            "set ManageForeignRoutingPolicyRules=no and ManageForeignRoutes=no in /etc/systemd/networkd.conf [Network]",
        );
    }
    if host.network_manager_running {
        add(
            "NetworkManager runs: it may flush rules of devices it manages".to_owned(),
            "leave policy routing of the uplinks to multihome (no ipv4.routing-rules on their connections)",
        );
    }
    let p = host.priority;
    for rule in &host.view.rules {
        if rule.protocol != host.protocol && (rule.priority == p || rule.priority == p + 1) {
            add(
                format!(
                    "a rule of another owner (protocol {}) sits at priority {}",
                    rule.protocol, rule.priority
                ),
                "choose another --priority for multihome, or move that rule",
            );
        }
    }
    let Some(config) = host.config else {
        return out;
    };
    for (name, s) in &host.sysctls {
        if s.rp_filter == 1 {
            add(
                format!("{name}: rp_filter is 1 (strict): replies to guard-redirected packets are dropped"),
                &format!("sysctl -w net.ipv4.conf.{name}.rp_filter=2 net.ipv4.conf.all.rp_filter=2"),
            );
        }
    }
    for name in uplinks_sharing_a_subnet(config, host.view) {
        let s = host.sysctls.get(&name).cloned().unwrap_or_default();
        if s.arp_ignore != 1 || s.arp_announce != 2 {
            add(
                format!("{name}: shares a subnet with another uplink and answers ARP for it (ARP flux)"),
                &format!("sysctl -w net.ipv4.conf.{name}.arp_ignore=1 net.ipv4.conf.{name}.arp_announce=2"),
            );
        }
    }
    let mtus: BTreeMap<u32, Vec<&str>> = config
        .uplinks
        .iter()
        .filter_map(|u| host.view.link_by_name(&u.name))
        .fold(BTreeMap::new(), |mut m, l| {
            m.entry(l.mtu)
                .or_insert_with(Vec::new)
                .push(l.name.as_str());
            m
        });
    if mtus.len() > 1 {
        let list: Vec<String> = mtus
            .iter()
            .map(|(mtu, names)| format!("{} {mtu}", names.join(",")))
            .collect();
        add(
            format!(
                "uplink MTUs differ ({}): the guard drops redirected packets that do not fit",
                list.join("; ")
            ),
            "give the uplinks the same MTU, or accept that oversized misrouted packets are dropped",
        );
    }
    for (table, route) in ownership::foreign_routes(config, host.view, &Scope::All) {
        add(
            format!(
                "table {table} holds a route of another owner ({}/{} protocol {})",
                route.dst, route.dst_len, route.protocol
            ),
            "give the uplink another table (IFNAME=TABLE or --table-base)",
        );
    }
    out
}

/// Present uplinks with an IPv4 prefix that another present uplink also has.
fn uplinks_sharing_a_subnet(config: &Config, view: &KernelView) -> Vec<String> {
    let mut by_prefix: BTreeMap<(std::net::IpAddr, u8), Vec<String>> = BTreeMap::new();
    for uplink in &config.uplinks {
        let Some(link) = view.link_by_name(&uplink.name) else {
            continue;
        };
        for a in view.addresses.iter().filter(|a| a.ifindex == link.ifindex) {
            if Family::of(&a.addr) == Family::V4 {
                by_prefix
                    .entry((network(a.addr, a.prefix_len), a.prefix_len))
                    .or_default()
                    .push(link.name.clone());
            }
        }
    }
    let mut shared: Vec<String> = by_prefix
        .into_values()
        .filter(|names| names.len() > 1)
        .flatten()
        .collect();
    shared.sort();
    shared.dedup();
    shared
}

fn network(addr: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    match addr {
        std::net::IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            std::net::IpAddr::V4((u32::from(v4) & mask).into())
        }
        v6 => v6,
    }
}

/// `multihome check --json` (schema in docs/operations.md; `version` changes on any incompatible
/// change, fields may be added).
#[derive(Serialize)]
struct Report<'a> {
    version: u32,
    kernel: Kernel,
    /// The probe's verdict on the guard, one line (the text form's `guard:` line).
    guard: &'a str,
    /// Whether programs can be steered onto an uplink (the text form's `steer:` line).
    steer: Steer,
    probe: &'a Probe,
    /// The uplinks checked; none means the host only.
    uplinks: Vec<&'a str>,
    notes: &'a [String],
    findings: &'a [Finding],
    /// No findings; the exit status is 0 exactly then.
    ok: bool,
}

/// What steering needs: cgroup2, found in mountinfo, and the kernel attaching the steering
/// program to a cgroup.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct Steer {
    /// Where cgroup2 is mounted (from /proc/self/mountinfo); null when it is not.
    cgroup2: Option<String>,
    /// The steering root (`--cgroup-root`), when it is in cgroup2.
    root: Option<String>,
    /// The steering program attached to a throw-away cgroup beside the root (and detached).
    attaches: bool,
    /// One line.
    summary: String,
}

/// What the operator loses without steering, said with each reason.
const WITHOUT_STEERING: &str =
    "multihome exec and the uplink slices refuse; the guard and the rules are unaffected";

/// Steering's verdict from where cgroup2 is, where the root is (or why it cannot be) and the
/// probe's steering step. Pure.
fn steer(cgroup2: Option<&Path>, root: &Result<PathBuf, String>, probe: &Probe) -> Steer {
    let summary = match (cgroup2, root) {
        (None, _) => format!(
            "unavailable: no cgroup2 file system is mounted (none in /proc/self/mountinfo): \
             {WITHOUT_STEERING}"
        ),
        (Some(_), Err(why)) => format!("unavailable: {why}: {WITHOUT_STEERING}"),
        (Some(at), Ok(root)) => match &probe.steer {
            Step::Ok => format!(
                "cgroup2 at {}; the steering program (cgroup/sock_create) attaches: multihome \
                 exec and the uplink slices below {} work",
                at.display(),
                root.display()
            ),
            Step::Failed(f) => format!(
                "unavailable: cgroup2 at {}, but the steering program (cgroup/sock_create) does \
                 not attach: {}: {WITHOUT_STEERING}",
                at.display(),
                f.reason
            ),
            Step::Skipped => format!(
                "not checked: cgroup2 at {}, but the guard's probe stopped first",
                at.display()
            ),
        },
    };
    Steer {
        cgroup2: cgroup2.map(|p| p.display().to_string()),
        root: root.as_ref().ok().map(|p| p.display().to_string()),
        attaches: cgroup2.is_some() && root.is_ok() && probe.steer.ok(),
        summary,
    }
}

#[derive(Serialize)]
struct Kernel {
    release: String,
    machine: String,
    /// /sys/kernel/btf/vmlinux exists.
    btf: bool,
}

pub(crate) fn main(args: CheckArgs) -> Result<ExitCode, Fatal> {
    let protocol = config::protocol(args.owned.protocol).map_err(Fatal::usage)?;
    let priority = config::priority(args.priority).map_err(Fatal::usage)?;
    let view = netlink::snapshot()?;
    let mut guard = GuardState::default();
    if let Ok(maps) = PinnedMaps::open(&args.owned.pin_dir) {
        guard.entries = maps.entries()?;
    }
    let owned = ownership::owned(&view, protocol, &Scope::All, &guard);
    let uplinks = status::known_uplinks(&args.uplinks, &view, &owned)?;
    let config = if uplinks.is_empty() {
        None
    } else {
        let params = Params {
            uplinks,
            priority,
            protocol: protocol.into(),
            ..Params::default()
        };
        Some(Config::new(params).map_err(Fatal::usage)?)
    };
    let host = gather(config.as_ref(), &view, priority, protocol);
    let kernel = kernel();
    let cgroup2 = cgroup2::mount_point().ok();
    let root = Root::locate(&args.owned.cgroup_root)
        .map(|root| root.path)
        .map_err(|e| format!("{e:#}"));
    // The probe's throw-away cgroup goes beside the root: an ancestor's program that forbids
    // attaching below it would stop the daemon there too.
    let probe = probe::run(root.as_ref().ok().and_then(|r| r.parent()));
    let steer = steer(cgroup2.as_deref(), &root, &probe);
    let mut verdict = verdict::verdict(&probe, privileges::effective(), kernel.btf);
    verdict.findings.extend(findings(&host));
    let report = Report {
        version: 1,
        kernel,
        guard: &verdict.summary,
        steer,
        probe: &probe,
        uplinks: config
            .iter()
            .flat_map(|c| &c.uplinks)
            .map(|u| u.name.as_str())
            .collect(),
        notes: &verdict.notes,
        findings: &verdict.findings,
        ok: verdict.findings.is_empty(),
    };
    if args.json {
        let json = serde_json::to_string_pretty(&report)?;
        println!("{json}");
    } else {
        print!("{}", text(&report));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The text form: what was checked and what works, the notes, then one line per finding with
/// its fix. Each line starts with a fixed word (`kernel:`, `guard:`, `steer:`, `uplinks:`,
/// `note:`) or is
/// a finding, so that scripts can grep for them.
fn text(report: &Report) -> String {
    let k = &report.kernel;
    let mut out = format!(
        "kernel: {} {}\nguard: {}\nsteer: {}\n",
        k.release, k.machine, report.guard, report.steer.summary
    );
    if report.uplinks.is_empty() {
        out.push_str(
            "uplinks: none known (none given, none in MULTIHOME_UPLINKS or /etc/default/multihome, \
             nothing owned): checked the host only\n",
        );
    } else {
        out.push_str(&format!("uplinks: {}\n", report.uplinks.join(" ")));
    }
    for note in report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    for f in report.findings {
        out.push_str(&format!("{}: {}\n", f.problem, f.fix));
    }
    if report.ok {
        out.push_str("no findings: kernel, privileges and host settings suit multihome\n");
    }
    out
}

/// The kernel's release and architecture (uname), and whether it exposes its BTF.
fn kernel() -> Kernel {
    // SAFETY: uname fills the zeroed struct we own.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates every field it fills; a failed call leaves them zero.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: as above.
    unsafe { libc::uname(&mut name) };
    Kernel {
        release: field(&name.release),
        machine: field(&name.machine),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
    }
}

fn gather<'a>(
    config: Option<&'a Config>,
    view: &'a KernelView,
    priority: u32,
    protocol: u8,
) -> Host<'a> {
    let conf = |dev: &str, key: &str| -> u8 {
        fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/{key}"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let sysctls = config
        .iter()
        .flat_map(|c| &c.uplinks)
        .filter(|u| view.link_by_name(&u.name).is_some())
        .map(|u| {
            let n = u.name.as_str();
            (
                u.name.clone(),
                Sysctls {
                    rp_filter: conf("all", "rp_filter").max(conf(n, "rp_filter")),
                    arp_ignore: conf("all", "arp_ignore").max(conf(n, "arp_ignore")),
                    arp_announce: conf("all", "arp_announce").max(conf(n, "arp_announce")),
                },
            )
        })
        .collect();
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    Host {
        config,
        view,
        priority,
        protocol,
        bpffs_mounted: mounts.lines().any(|l| {
            let mut fields = l.split_whitespace().skip(1);
            (fields.next(), fields.next()) == (Some("/sys/fs/bpf"), Some("bpf"))
        }),
        sysctls,
        networkd_manages_foreign: running_here("systemd-network")
            && !networkd_leaves_foreign_alone(),
        network_manager_running: running_here("NetworkManager"),
    }
}

/// Whether a process named `comm` (as the kernel keeps it: 15 characters) runs in this network
/// namespace. Their state directories in /run say nothing (images ship them), and one running
/// in another namespace (a container's, a test's) manages none of these devices. A process whose
/// namespace cannot be read (not ours to inspect) counts as here.
fn running_here(comm: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let here = fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .ok();
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        let dir = entry.path();
        fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == comm)
            && fs::metadata(dir.join("ns/net"))
                .map(|m| m.ino())
                .ok()
                .is_none_or(|ns| Some(ns) == here)
    })
}

/// Whether networkd.conf (or a drop-in) turns both foreign-object clean-ups off.
fn networkd_leaves_foreign_alone() -> bool {
    let mut text = fs::read_to_string("/etc/systemd/networkd.conf").unwrap_or_default();
    if let Ok(dir) = fs::read_dir("/etc/systemd/networkd.conf.d") {
        for entry in dir.flatten() {
            text.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    let off = |key: &str| {
        text.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('='))
            .is_some_and(|v| matches!(v.trim(), "no" | "false" | "0" | "off"))
    };
    off("ManageForeignRoutingPolicyRules") && off("ManageForeignRoutes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{config, seed};
    use crate::model::Rule;

    fn host<'a>(config: Option<&'a Config>, view: &'a KernelView) -> Host<'a> {
        let good = Sysctls {
            rp_filter: 2,
            arp_ignore: 1,
            arp_announce: 2,
        };
        Host {
            config,
            view,
            priority: 1000,
            protocol: 77,
            bpffs_mounted: true,
            sysctls: config
                .iter()
                .flat_map(|c| &c.uplinks)
                .map(|u| (u.name.clone(), good.clone()))
                .collect(),
            networkd_manages_foreign: false,
            network_manager_running: false,
        }
    }

    fn problems(host: &Host) -> Vec<String> {
        findings(host).into_iter().map(|f| f.problem).collect()
    }

    /// The seed's view with one of each problem.
    fn troubled() -> KernelView {
        let mut view = seed();
        view.links.get_mut(&12).unwrap().mtu = 1492;
        view.rules.push(Rule {
            family: crate::model::Family::V4,
            priority: 1001,
            protocol: 4,
            src: None,
            oif: None,
            fwmark: None,
            table: Some(254),
            suppress_prefix_len: None,
            unreachable: false,
            other_selectors: false,
        });
        let mut route = view.routes[0];
        route.table = 1002;
        view.routes.push(route);
        view
    }

    #[test]
    fn a_well_set_host_has_no_findings() {
        let (config, view) = (config(&["vlan101", "vlan102"]), seed());
        assert_eq!(findings(&host(Some(&config), &view)), []);
        assert_eq!(findings(&host(None, &view)), []);
    }

    #[test]
    fn each_problem_is_found_with_its_fix() {
        let config = config(&["vlan101", "vlan102"]);
        let view = troubled();
        let mut h = host(Some(&config), &view);
        h.bpffs_mounted = false;
        h.sysctls.get_mut("vlan102").unwrap().rp_filter = 1;
        h.sysctls.get_mut("vlan101").unwrap().arp_ignore = 0;
        h.networkd_manages_foreign = true;
        h.network_manager_running = true;
        let found = findings(&h);
        let text: Vec<String> = found
            .iter()
            .map(|f| format!("{}: {}", f.problem, f.fix))
            .collect();
        for expected in [
            "bpffs is not mounted",
            "vlan102: rp_filter is 1",
            "vlan101: shares a subnet",
            "MTUs differ",
            "systemd-networkd deletes foreign",
            "NetworkManager runs",
            "priority 1001",
            "table 1002 holds a route of another owner",
        ] {
            assert!(
                text.iter().any(|t| t.contains(expected)),
                "{expected:?} not in {text:#?}"
            );
        }
        assert_eq!(found.len(), 8, "{text:#?}");
        assert!(found
            .iter()
            .all(|f| !f.fix.is_empty() && !f.problem.contains('\n')));
        assert!(
            !problems(&h).iter().any(|p| p.contains("vlan102: shares")),
            "vlan102's ARP settings are right"
        );
    }

    #[test]
    fn without_uplinks_only_the_host_is_checked() {
        let view = troubled();
        let mut h = host(None, &view);
        h.networkd_manages_foreign = true;
        assert_eq!(
            problems(&h),
            [
                "systemd-networkd deletes foreign rules and routes on reconfigure (multihome \
                 repairs them)",
                "a rule of another owner (protocol 4) sits at priority 1001",
            ]
        );
    }

    #[test]
    fn steering_says_what_is_missing_on_one_line() {
        let at = Path::new("/sys/fs/cgroup/unified");
        let root: Result<PathBuf, String> = Ok(at.join("multihome.slice"));
        let works = Probe {
            steer: Step::Ok,
            ..Probe::default()
        };
        let found = steer(Some(at), &root, &works);
        assert!(found.attaches);
        assert_eq!(found.cgroup2.as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(
            found.summary,
            "cgroup2 at /sys/fs/cgroup/unified; the steering program (cgroup/sock_create) \
             attaches: multihome exec and the uplink slices below \
             /sys/fs/cgroup/unified/multihome.slice work"
        );
        let none = steer(None, &Err("no cgroup2".to_owned()), &Probe::default());
        assert_eq!(
            (none.cgroup2, none.root, none.attaches),
            (None, None, false)
        );
        assert!(none.summary.starts_with(
            "unavailable: no cgroup2 file system is mounted (none in /proc/self/mountinfo): "
        ));
        let refused = Probe {
            steer: Step::Failed(crate::probe::Failure {
                reason: "cannot attach (Operation not permitted, EPERM)".to_owned(),
                errno: Some("EPERM".to_owned()),
                kind: crate::probe::Kind::Other,
            }),
            ..Probe::default()
        };
        let summary = steer(Some(at), &root, &refused).summary;
        assert!(
            summary.contains("does not attach: cannot attach (Operation not permitted, EPERM): "),
            "{summary}"
        );
        let outside = steer(
            Some(at),
            &Err("the steering root /tmp/x is not".to_owned()),
            &works,
        );
        assert!(outside
            .summary
            .starts_with("unavailable: the steering root /tmp/x is not: "));
        assert!(!outside.attaches && outside.root.is_none());
        for s in [summary, outside.summary, none.summary] {
            assert!(s.ends_with(WITHOUT_STEERING) && !s.contains('\n'), "{s}");
        }
    }

    #[test]
    fn the_text_form_has_a_line_per_fact_and_per_finding() {
        let kernel = || Kernel {
            release: "6.1.0-37-arm64".to_owned(),
            machine: "aarch64".to_owned(),
            btf: false,
        };
        let findings = [Finding {
            problem: "p".to_owned(),
            fix: "f".to_owned(),
        }];
        let notes = ["n".to_owned()];
        let probe = Probe::default();
        let steering = || Steer {
            cgroup2: None,
            root: None,
            attaches: false,
            summary: "unavailable".to_owned(),
        };
        let report = Report {
            version: 1,
            kernel: kernel(),
            guard: "loads",
            steer: steering(),
            probe: &probe,
            uplinks: vec!["wan1", "wan2"],
            notes: &notes,
            findings: &findings,
            ok: false,
        };
        assert_eq!(
            text(&report),
            "kernel: 6.1.0-37-arm64 aarch64\nguard: loads\nsteer: unavailable\nuplinks: wan1 \
             wan2\nnote: n\np: f\n"
        );
        let alone = Report {
            kernel: kernel(),
            steer: steering(),
            uplinks: vec![],
            notes: &[],
            findings: &[],
            ok: true,
            ..report
        };
        let text = text(&alone);
        assert!(text.contains("\nuplinks: none known ("), "{text}");
        assert!(
            text.ends_with("\nno findings: kernel, privileges and host settings suit multihome\n")
        );
    }
}
