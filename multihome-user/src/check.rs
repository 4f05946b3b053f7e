//! `multihome check`: what on this host will stop multihome from working or fight it, each
//! finding with the fix to apply. `findings` is pure; `gather` reads /proc, /sys and netlink.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use crate::cli::CheckArgs;
use crate::config::{self, Config, Params};
use crate::model::Family;
use crate::netlink;
use crate::privileges::{self, Capability, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN};
use crate::view::KernelView;
use crate::{defaults, ownership, plan, Fatal};

/// One thing to fix, printed on one line.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub problem: String,
    pub fix: String,
}

/// Per-uplink sysctls that matter (IPv4 conf of the device and of "all").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub rp_filter: u8,
    pub arp_ignore: u8,
    pub arp_announce: u8,
}

/// Everything `findings` looks at.
pub struct Host<'a> {
    pub config: &'a Config,
    pub view: &'a KernelView,
    /// Kernel version (major, minor).
    pub kernel: (u32, u32),
    pub btf: bool,
    pub bpffs_mounted: bool,
    pub capabilities: u64,
    /// Effective values for each present uplink (the larger of "all" and the device's).
    pub sysctls: BTreeMap<String, Sysctls>,
    /// systemd-networkd runs and would delete foreign rules/routes.
    pub networkd_manages_foreign: bool,
    pub network_manager_running: bool,
}

pub fn findings(host: &Host) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |problem: String, fix: &str| {
        out.push(Finding {
            problem,
            fix: fix.to_owned(),
        })
    };
    if host.kernel < (5, 10) {
        add(
            format!(
                "kernel {}.{} lacks bpf_redirect_neigh (5.10+)",
                host.kernel.0, host.kernel.1
            ),
            "upgrade the kernel or run with --no-ebpf (rules only)",
        );
    } else if host.kernel < (6, 6) {
        add(
            format!(
                "kernel {}.{} has no TCX: the guard attaches through clsact",
                host.kernel.0, host.kernel.1
            ),
            "nothing to do; a 6.6+ kernel uses TCX links",
        );
    }
    if !host.btf {
        add(
            "no kernel BTF (/sys/kernel/btf/vmlinux)".to_owned(),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y or run with --no-ebpf",
        );
    }
    let mut needed: Vec<Capability> = vec![CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON];
    if !host.bpffs_mounted {
        needed.push(CAP_SYS_ADMIN);
        add(
            "bpffs is not mounted at /sys/fs/bpf".to_owned(),
            "mount -t bpf bpf /sys/fs/bpf (multihome mounts it itself when it has CAP_SYS_ADMIN)",
        );
    }
    for cap in privileges::missing(host.capabilities, &needed) {
        add(
            format!("missing capability {} ({})", cap.name, cap.why),
            "run as root, or as the systemd unit in dist/ which grants it",
        );
    }
    for (name, s) in &host.sysctls {
        if s.rp_filter == 1 {
            add(
                format!("{name}: rp_filter is 1 (strict): replies to guard-redirected packets are dropped"),
                &format!("sysctl -w net.ipv4.conf.{name}.rp_filter=2 net.ipv4.conf.all.rp_filter=2"),
            );
        }
    }
    for name in uplinks_sharing_a_subnet(host) {
        let s = host.sysctls.get(&name).cloned().unwrap_or_default();
        if s.arp_ignore != 1 || s.arp_announce != 2 {
            add(
                format!("{name}: shares a subnet with another uplink and answers ARP for it (ARP flux)"),
                &format!("sysctl -w net.ipv4.conf.{name}.arp_ignore=1 net.ipv4.conf.{name}.arp_announce=2"),
            );
        }
    }
    let mtus: BTreeMap<u32, Vec<&str>> = host
        .config
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
    let p = host.config.priority;
    for rule in &host.view.rules {
        if rule.protocol != host.config.protocol && (rule.priority == p || rule.priority == p + 1) {
            add(
                format!(
                    "a rule of another owner (protocol {}) sits at priority {}",
                    rule.protocol, rule.priority
                ),
                "choose another --priority for multihome, or move that rule",
            );
        }
    }
    for (table, route) in ownership::foreign_routes(host.config, host.view, &plan::Scope::All) {
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
fn uplinks_sharing_a_subnet(host: &Host) -> Vec<String> {
    let mut by_prefix: BTreeMap<(std::net::IpAddr, u8), Vec<String>> = BTreeMap::new();
    for uplink in &host.config.uplinks {
        let Some(link) = host.view.link_by_name(&uplink.name) else {
            continue;
        };
        for a in host
            .view
            .addresses
            .iter()
            .filter(|a| a.ifindex == link.ifindex)
        {
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

pub fn main(args: CheckArgs) -> Result<ExitCode, Fatal> {
    let protocol = config::protocol(args.owned.protocol).map_err(Fatal::usage)?;
    let uplinks = if args.uplinks.is_empty() {
        config::parse_uplink_list(&defaults::uplink_list().unwrap_or_default())
    } else {
        args.uplinks.iter().map(|s| s.parse()).collect()
    }
    .map_err(Fatal::usage)?;
    let config = Config::new(Params {
        uplinks,
        priority: args.priority,
        protocol: protocol.into(),
        ..Params::default()
    })
    .map_err(Fatal::usage)?;
    let view = netlink::snapshot()?;
    let host = gather(&config, &view);
    let found = findings(&host);
    for f in &found {
        println!("{}: {}", f.problem, f.fix);
    }
    if found.is_empty() {
        println!("no findings: kernel, privileges and host settings suit multihome");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

fn gather<'a>(config: &'a Config, view: &'a KernelView) -> Host<'a> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release
        .trim()
        .split(['.', '-'])
        .map(|n| n.parse().unwrap_or(0));
    let kernel = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    let conf = |dev: &str, key: &str| -> u8 {
        fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/{key}"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let sysctls = config
        .uplinks
        .iter()
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
        kernel,
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        bpffs_mounted: mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("bpf")),
        capabilities: privileges::effective(),
        sysctls,
        networkd_manages_foreign: Path::new("/run/systemd/netif").exists()
            && !networkd_leaves_foreign_alone(),
        network_manager_running: Path::new("/run/NetworkManager").exists(),
    }
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

    const ALL_CAPS: u64 = u64::MAX;

    fn host<'a>(config: &'a Config, view: &'a KernelView) -> Host<'a> {
        let good = Sysctls {
            rp_filter: 2,
            arp_ignore: 1,
            arp_announce: 2,
        };
        Host {
            config,
            view,
            kernel: (6, 18),
            btf: true,
            bpffs_mounted: true,
            capabilities: ALL_CAPS,
            sysctls: config
                .uplinks
                .iter()
                .map(|u| (u.name.clone(), good.clone()))
                .collect(),
            networkd_manages_foreign: false,
            network_manager_running: false,
        }
    }

    fn problems(host: &Host) -> Vec<String> {
        findings(host).into_iter().map(|f| f.problem).collect()
    }

    #[test]
    fn a_well_set_host_has_no_findings() {
        let (config, view) = (config(&["vlan101", "vlan102"]), seed());
        assert_eq!(findings(&host(&config, &view)), []);
    }

    #[test]
    fn each_problem_is_found_with_its_fix() {
        let config = config(&["vlan101", "vlan102"]);
        let mut view = seed();
        view.links.get_mut(&12).unwrap().mtu = 1492;
        view.rules.push(Rule {
            family: crate::model::Family::V4,
            priority: 1001,
            protocol: 4,
            src: None,
            oif: None,
            table: Some(254),
            other_selectors: false,
        });
        let mut route = view.routes[0];
        route.table = 1002;
        view.routes.push(route);
        let mut h = host(&config, &view);
        h.kernel = (6, 1);
        h.btf = false;
        h.bpffs_mounted = false;
        h.capabilities = 1 << 12; // CAP_NET_ADMIN only
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
            "no TCX",
            "no kernel BTF",
            "bpffs is not mounted",
            "missing capability CAP_BPF",
            "missing capability CAP_PERFMON",
            "missing capability CAP_SYS_ADMIN",
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
        assert!(found
            .iter()
            .all(|f| !f.fix.is_empty() && !f.problem.contains('\n')));
        assert!(
            !problems(&h).iter().any(|p| p.contains("vlan102: shares")),
            "vlan102's ARP settings are right"
        );
    }

    #[test]
    fn old_kernels_lack_the_redirect_helper() {
        let (config, view) = (config(&["vlan101"]), seed());
        let mut h = host(&config, &view);
        h.kernel = (5, 4);
        assert!(problems(&h)[0].contains("bpf_redirect_neigh"));
    }
}
