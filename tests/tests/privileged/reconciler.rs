//! `multihome run` against a real kernel: two uplinks sharing 192.168.0.0/24 and its gateway,
//! static addresses and `proto dhcp`/`proto ra` default routes standing in for DHCP clients.
//! After each event the exact rules, tables and map entries are asserted.

use std::time::Duration;

use multihome_tests::bed::*;
use multihome_tests::daemon::{multihome_bin, multihome_ok, wait_for, Daemon};
use multihome_tests::netns::veth;

#[test]
fn installs_tables_rules_and_map_then_removes_them_on_sigterm() {
    let bed = bed();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    wait_table(&bed.host, 1002, TABLE_1002);
    wait_table(
        &bed.host,
        1001,
        "default via 192.168.0.1 dev wan1 proto 77
         192.168.0.0/24 dev wan1 proto 77 scope 253 src 192.168.0.10
         2001:db8:a::/64 dev wan1 proto 77 src 2001:db8:a::10 metric 1024 pref medium
         default via 2001:db8:a::1 dev wan1 proto 77 metric 1024 pref medium",
    );
    wait_bed_map(&daemon, &bed.host);
    let pin_dir = daemon.pin_dir().to_path_buf();
    assert!(daemon.stop().success());
    assert_eq!(
        everything_owned(&bed.host),
        "",
        "SIGTERM leaves nothing owned"
    );
    assert!(!pin_dir.exists(), "pins removed on SIGTERM");
}

#[test]
fn follows_address_gateway_and_link_changes() {
    let bed = bed();
    let host = &bed.host;
    let daemon = Daemon::start(host, &["wan1", "wan2"]).unwrap();
    wait_rules(host, RULES_BOTH);
    let wan1 = host.ifindex("wan1").unwrap();

    // Renumbering: the new address is bound, the old one released.
    host.sh("ip addr add 192.168.0.21/24 dev wan2 && ip addr del 192.168.0.20/24 dev wan2")
        .unwrap();
    let renumbered = RULES_BOTH.replace("192.168.0.20 ", "192.168.0.21 ");
    wait_rules(host, &renumbered);
    wait_table(
        host,
        1002,
        &TABLE_1002.replace("src 192.168.0.20", "src 192.168.0.21"),
    );
    let wan2 = host.ifindex("wan2").unwrap();
    wait_map(
        &daemon,
        &[
            ("192.168.0.10", wan1),
            ("192.168.0.21", wan2),
            ("2001:db8:a::10", wan1),
            ("2001:db8:b::20", wan2),
        ],
    );

    // Gateway change by the DHCP client (a replace of its default route).
    bed.b
        .run(&["ip", "addr", "add", "192.168.0.254/24", "dev", "lan"])
        .unwrap();
    host.run(&[
        "ip",
        "route",
        "replace",
        "default",
        "via",
        "192.168.0.254",
        "dev",
        "wan2",
        "metric",
        "20",
        "proto",
        "dhcp",
    ])
    .unwrap();
    let regatewayed = TABLE_1002
        .replace("src 192.168.0.20", "src 192.168.0.21")
        .replace("via 192.168.0.1 ", "via 192.168.0.254 ");
    wait_table(host, 1002, &regatewayed);

    // Lease lost: the address goes, and with it wan2's IPv4 rules, routes and entry.
    host.run(&["ip", "addr", "del", "192.168.0.21/24", "dev", "wan2"])
        .unwrap();
    wait_rules(
        host,
        "1000: from 192.168.0.10 lookup 1001 proto 77
         1001: from all oif wan1 lookup 1001 proto 77
         1000: from 2001:db8:a::10 lookup 1001 proto 77
         1000: from 2001:db8:b::20 lookup 1002 proto 77
         1001: from all oif wan1 lookup 1001 proto 77
         1001: from all oif wan2 lookup 1002 proto 77",
    );
    wait_table(
        host,
        1002,
        "2001:db8:b::/64 dev wan2 proto 77 src 2001:db8:b::20 metric 1024 pref medium
         default via 2001:db8:b::1 dev wan2 proto 77 metric 1024 pref medium",
    );
    wait_map(
        &daemon,
        &[
            ("192.168.0.10", wan1),
            ("2001:db8:a::10", wan1),
            ("2001:db8:b::20", wan2),
        ],
    );

    // Lease back, then the link goes down and up.
    host.sh("ip addr add 192.168.0.20/24 dev wan2 &&
             ip route replace default via 192.168.0.1 dev wan2 metric 20 proto dhcp")
        .unwrap();
    wait_rules(host, RULES_BOTH);
    host.run(&["ip", "link", "set", "wan2", "down"]).unwrap();
    wait_rules(
        host,
        "1000: from 192.168.0.10 lookup 1001 proto 77
         1001: from all oif wan1 lookup 1001 proto 77
         1000: from 2001:db8:a::10 lookup 1001 proto 77
         1001: from all oif wan1 lookup 1001 proto 77",
    );
    wait_table(host, 1002, "");
    // A down link loses its IPv6 addresses and the DHCP client's routes; the client puts them back.
    host.sh(
        "ip link set wan2 up && ip -6 addr replace 2001:db8:b::20/64 dev wan2 nodad &&
             ip route replace default via 192.168.0.1 dev wan2 metric 20 proto dhcp &&
             ip -6 route replace default via 2001:db8:b::1 dev wan2 metric 20 proto ra",
    )
    .unwrap();
    wait_rules(host, RULES_BOTH);
    wait_table(host, 1002, TABLE_1002);
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn reacquires_an_uplink_deleted_and_created_again() {
    let bed = bed();
    let host = &bed.host;
    let daemon = Daemon::start(host, &["wan1", "wan2"]).unwrap();
    wait_rules(host, RULES_BOTH);
    let old = host.ifindex("wan2").unwrap();
    host.run(&["ip", "link", "del", "wan2"]).unwrap();
    wait_rules(
        host,
        "1000: from 192.168.0.10 lookup 1001 proto 77
         1001: from all oif wan1 lookup 1001 proto 77
         1000: from 2001:db8:a::10 lookup 1001 proto 77
         1001: from all oif wan1 lookup 1001 proto 77",
    );
    wait_table(host, 1002, "");
    veth(host, "wan2", &bed.b, "lan").unwrap();
    bed.b
        .sh("ip addr add 192.168.0.1/24 dev lan && ip -6 addr add 2001:db8:b::1/64 dev lan nodad")
        .unwrap();
    host.sh("ip addr add 192.168.0.20/24 dev wan2 &&
             ip -6 addr add 2001:db8:b::20/64 dev wan2 nodad &&
             ip route add default via 192.168.0.1 dev wan2 metric 20 proto dhcp &&
             ip -6 route add default via 2001:db8:b::1 dev wan2 metric 20 proto ra")
        .unwrap();
    let new = host.ifindex("wan2").unwrap();
    assert_ne!(old, new);
    wait_rules(host, RULES_BOTH);
    wait_table(host, 1002, TABLE_1002);
    let wan1 = host.ifindex("wan1").unwrap();
    wait_map(
        &daemon,
        &[
            ("192.168.0.10", wan1),
            ("192.168.0.20", new),
            ("2001:db8:a::10", wan1),
            ("2001:db8:b::20", new),
        ],
    );
    let attached = wait_for(
        "the guard on the new wan2",
        CONVERGE,
        || {
            let now = multihome::guard::attachments(daemon.pin_dir());
            now.contains_key(&new).then_some(now)
        },
        || format!("{:?}", multihome::guard::attachments(daemon.pin_dir())),
    );
    assert!(
        !attached.contains_key(&old),
        "the old ifindex is forgotten: {attached:?}"
    );
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn repairs_flushed_rules_and_never_touches_foreign_objects() {
    let bed = bed();
    let host = &bed.host;
    host.sh(
        "ip rule add from 192.0.2.1 lookup main pref 1000 proto static &&
             ip route add 198.51.100.0/24 via 192.168.0.1 dev wan1 table 2000 proto static",
    )
    .unwrap();
    let foreign = || {
        host.sh("ip -N rule show; ip -N route show table 2000; ip -N route show table main")
            .unwrap()
    };
    let before = foreign();
    let daemon = Daemon::start(host, &["wan1", "wan2"]).unwrap();
    wait_rules(host, RULES_BOTH);
    host.sh("ip -4 rule flush protocol 77; ip -6 rule flush protocol 77")
        .unwrap();
    wait_rules(host, RULES_BOTH);
    host.sh("ip route flush table 1002 protocol 77").unwrap();
    wait_table(host, 1002, TABLE_1002);
    assert_eq!(daemon.stop().code(), Some(0));
    assert_eq!(everything_owned(host), "");
    assert_eq!(
        foreign(),
        before,
        "foreign rules and routes are byte-for-byte unchanged"
    );
}

#[test]
fn refuses_a_table_holding_foreign_routes() {
    let bed = bed();
    let host = &bed.host;
    host.run(&[
        "ip",
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "192.168.0.1",
        "dev",
        "wan2",
        "table",
        "1002",
        "proto",
        "static",
    ])
    .unwrap();
    let bin = multihome_bin();
    let pin_dir = host.pin_dir().display().to_string();
    let out = host
        .command(bin.to_str().unwrap())
        .args(["run", "--pin-dir", &pin_dir, "wan1", "wan2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("table 1002"), "{stderr}");
    assert_eq!(everything_owned(host), "", "nothing installed");
    assert!(!std::path::Path::new(&pin_dir).exists(), "nothing pinned");
}

#[test]
fn adopts_what_a_killed_daemon_left_without_duplicates() {
    let bed = bed();
    let host = &bed.host;
    let daemon = Daemon::start(host, &["wan1", "wan2"]).unwrap();
    wait_rules(host, RULES_BOTH);
    wait_table(host, 1002, TABLE_1002);
    let pin_dir = daemon.pin_dir().to_path_buf();
    let before = everything_owned(host);
    daemon.kill();
    assert_eq!(
        everything_owned(host),
        before,
        "a crash leaves the state in place"
    );
    let again = Daemon::start_with_pins(host, &["wan1", "wan2"], &pin_dir).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(everything_owned(host), before, "adopted, no duplicates");
    wait_bed_map(&again, host);
    assert_eq!(again.stop().code(), Some(0));
    assert_eq!(everything_owned(host), "");
}

#[test]
fn keep_on_exit_then_cleanup_removes_everything_once() {
    let bed = bed();
    let host = &bed.host;
    let daemon = Daemon::start(host, &["--keep-on-exit", "wan1", "wan2"]).unwrap();
    wait_rules(host, RULES_BOTH);
    let pin_dir = daemon.pin_dir().to_path_buf();
    assert_eq!(daemon.stop().code(), Some(0));
    assert_eq!(
        normalise(&our_rules(host)),
        normalise(RULES_BOTH),
        "kept on exit"
    );
    assert!(pin_dir.exists());
    let cleanup = || multihome_ok(host, &["cleanup", "--pin-dir", pin_dir.to_str().unwrap()]);
    let first = cleanup();
    assert!(
        first.lines().filter(|l| l.starts_with("removed")).count() >= 16,
        "{first}"
    );
    assert_eq!(everything_owned(host), "");
    assert!(!pin_dir.exists());
    let second = cleanup();
    assert!(second.starts_with("nothing to remove"), "{second}");
}

#[test]
fn rules_only_and_guard_only_modes() {
    let bed = bed();
    let host = &bed.host;
    let rules_only = Daemon::start(host, &["--no-ebpf", "wan1", "wan2"]).unwrap();
    wait_rules(host, RULES_BOTH);
    assert!(!rules_only.pin_dir().exists(), "--no-ebpf pins nothing");
    assert_eq!(rules_only.stop().code(), Some(0));

    let guard_only = Daemon::start(host, &["--no-rules", "wan1", "wan2"]).unwrap();
    wait_bed_map(&guard_only, host);
    assert_eq!(
        everything_owned(host),
        "",
        "--no-rules installs no rule or route"
    );
    assert_eq!(guard_only.stop().code(), Some(0));
}

#[test]
fn a_second_daemon_in_the_namespace_refuses_clearly() {
    let bed = bed();
    let host = &bed.host;
    let mut first = Daemon::start(host, &["wan1", "wan2"]).unwrap();
    wait_rules(host, RULES_BOTH);
    let other_pins = format!("{}-second", host.pin_dir().display());
    let out = host
        .command(multihome_bin().to_str().unwrap())
        .args(["run", "--pin-dir", &other_pins, "wan1", "wan2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(
        !std::path::Path::new(&other_pins).exists(),
        "the second one pinned nothing"
    );
    assert!(first.running(), "the first one is untouched");
    assert_eq!(our_rules(host), normalise(RULES_BOTH));
    assert_eq!(first.stop().code(), Some(0));
}
