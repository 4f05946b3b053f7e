//! The namespace bed of the reconciler and fault tests: a host with uplinks wan1 and wan2 to
//! routers A and B that share 192.168.0.0/24 and its gateway (as two home routers do), static
//! addresses and `proto dhcp`/`proto ra` default routes standing in for DHCP clients; and the
//! probes that read back what multihome installed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::daemon::{wait_for, Daemon};
use crate::netns::{require_root, veth, Netns};

pub const CONVERGE: Duration = Duration::from_secs(5);

/// The smallest bed a daemon reconciles on: a host with one uplink, wan1 (192.168.0.10/24 and
/// a `proto dhcp` default route), to a router at 192.168.0.1. Returns (host, router).
pub fn one_uplink() -> (Netns, Netns) {
    require_root();
    let host = Netns::new("h1").unwrap();
    let router = Netns::new("r1").unwrap();
    veth(&host, "wan1", &router, "lan").unwrap();
    router
        .run(&["ip", "addr", "add", "192.168.0.1/24", "dev", "lan"])
        .unwrap();
    host.sh("ip addr add 192.168.0.10/24 dev wan1 &&
         ip route add default via 192.168.0.1 dev wan1 proto dhcp")
        .unwrap();
    (host, router)
}

/// The host with uplinks wan1 and wan2 to routers A and B.
pub struct Bed {
    pub host: Netns,
    pub a: Netns,
    pub b: Netns,
}

pub fn bed() -> Bed {
    require_root();
    let host = Netns::new("h").unwrap();
    let a = Netns::new("ra").unwrap();
    let b = Netns::new("rb").unwrap();
    for (router, wan, v6) in [(&a, "wan1", "a"), (&b, "wan2", "b")] {
        veth(&host, wan, router, "lan").unwrap();
        router
            .sh(&format!(
                "ip addr add 192.168.0.1/24 dev lan && ip -6 addr add 2001:db8:{v6}::1/64 dev lan nodad"
            ))
            .unwrap();
    }
    // A renumbering adds the new address before the old one goes: keep it when the old,
    // primary one is deleted (the kernel's default deletes the secondaries with it).
    host.sh(
        "sysctl -qw net.ipv4.conf.wan1.promote_secondaries=1 net.ipv4.conf.wan2.promote_secondaries=1 &&
         ip addr add 192.168.0.10/24 dev wan1 && ip addr add 192.168.0.20/24 dev wan2 &&
         ip -6 addr add 2001:db8:a::10/64 dev wan1 nodad &&
         ip -6 addr add 2001:db8:b::20/64 dev wan2 nodad &&
         ip route add default via 192.168.0.1 dev wan1 metric 10 proto dhcp &&
         ip route add default via 192.168.0.1 dev wan2 metric 20 proto dhcp &&
         ip -6 route add default via 2001:db8:a::1 dev wan1 metric 10 proto ra &&
         ip -6 route add default via 2001:db8:b::1 dev wan2 metric 20 proto ra",
    )
    .unwrap();
    Bed { host, a, b }
}

/// multihome's rules, both families, as `ip` prints them.
/// multihome's `from`/`oif` rules (protocol 77), both families; the steering rules (fwmark,
/// tested in the steering module and the model tests) are left out.
pub fn our_rules(ns: &Netns) -> String {
    let all = ns.sh("ip -N -4 rule show; ip -N -6 rule show").unwrap();
    lines_with(&all, "proto 77")
        .lines()
        .filter(|l| !l.contains("fwmark"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A table's routes, both families.
pub fn table(ns: &Netns, table: u32) -> String {
    ns.sh(&format!(
        "ip -N -4 route show table {table}; ip -N -6 route show table {table}"
    ))
    .unwrap()
}

/// Everything with protocol 77 in the namespace: rules and routes of every table.
pub fn everything_owned(ns: &Netns) -> String {
    let all = ns
        .sh("ip -N -4 rule; ip -N -6 rule; ip -N -4 route show table all; ip -N -6 route show table all")
        .unwrap();
    lines_with(&all, "proto 77")
}

pub fn lines_with(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|l| l.contains(needle))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
        .collect()
}

pub fn normalise(expected: &str) -> String {
    expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
        .collect()
}

pub fn wait_rules(ns: &Netns, expected: &str) {
    let want = normalise(expected);
    wait_for(
        "multihome's rules",
        CONVERGE,
        || (our_rules(ns) == want).then_some(()),
        || format!("{}\nwanted:\n{want}", our_rules(ns)),
    );
}

pub fn wait_table(ns: &Netns, t: u32, expected: &str) {
    let want = normalise(expected);
    let now = || normalise(&table(ns, t));
    wait_for(
        &format!("table {t}"),
        CONVERGE,
        || (now() == want).then_some(()),
        || format!("{}\nwanted:\n{want}", now()),
    );
}

/// The guard's map: source address -> uplink ifindex.
pub fn map_entries(pin_dir: &std::path::Path) -> BTreeSet<(IpAddr, u32)> {
    multihome::guard::PinnedMaps::open(pin_dir)
        .unwrap()
        .entries()
        .unwrap()
        .into_iter()
        .map(|(addr, e)| (addr, e.uplink_ifindex))
        .collect()
}

pub fn wait_map(daemon: &Daemon, expected: &[(&str, u32)]) {
    let want: BTreeSet<(IpAddr, u32)> = expected
        .iter()
        .map(|(a, i)| (a.parse().unwrap(), *i))
        .collect();
    wait_for(
        "the guard's map",
        CONVERGE,
        || (map_entries(daemon.pin_dir()) == want).then_some(()),
        || format!("{:?}\nwanted {want:?}", map_entries(daemon.pin_dir())),
    );
}

/// Waits for the map the bed's addresses give: both uplinks' IPv4 and IPv6 addresses.
pub fn wait_bed_map(daemon: &Daemon, host: &Netns) {
    let wan1 = host.ifindex("wan1").unwrap();
    let wan2 = host.ifindex("wan2").unwrap();
    wait_map(
        daemon,
        &[
            ("192.168.0.10", wan1),
            ("192.168.0.20", wan2),
            ("2001:db8:a::10", wan1),
            ("2001:db8:b::20", wan2),
        ],
    );
}

pub const RULES_BOTH: &str = "
    1000: from 192.168.0.10 lookup 1001 proto 77
    1000: from 192.168.0.20 lookup 1002 proto 77
    1001: from all oif wan1 lookup 1001 proto 77
    1001: from all oif wan2 lookup 1002 proto 77
    1000: from 2001:db8:a::10 lookup 1001 proto 77
    1000: from 2001:db8:b::20 lookup 1002 proto 77
    1001: from all oif wan1 lookup 1001 proto 77
    1001: from all oif wan2 lookup 1002 proto 77
";

pub const TABLE_1002: &str = "
    default via 192.168.0.1 dev wan2 proto 77
    192.168.0.0/24 dev wan2 proto 77 scope 253 src 192.168.0.20
    2001:db8:b::/64 dev wan2 proto 77 src 2001:db8:b::20 metric 1024 pref medium
    default via 2001:db8:b::1 dev wan2 proto 77 metric 1024 pref medium
";
