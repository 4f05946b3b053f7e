//! The operator's commands against a real daemon in a namespace: `status` (table, JSON schema,
//! exit status as a health check, with and without the daemon), `cleanup`, `check` (rp_filter,
//! ARP flux) and the journald log format.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use multihome_tests::daemon::{multihome_bin, wait_for, Daemon};
use multihome_tests::netns::{require_root, two_static_uplinks, Netns};
use serde_json::{json, Value};

/// The host with uplinks wan1 (192.168.0.10/24) and wan2 (192.168.0.20/24) to two routers that
/// are both 192.168.0.1, default routes as a DHCP client installs them.
struct Bed {
    host: Netns,
    _routers: [Netns; 2],
}

fn bed() -> Bed {
    require_root();
    let (host, routers) = two_static_uplinks(["op", "oa", "ob"]).unwrap();
    Bed {
        host,
        _routers: routers,
    }
}

/// `multihome ARGS` inside `ns` (with `--pin-dir` of the namespace for commands that take it),
/// neither $MULTIHOME_UPLINKS nor an installed /etc/default/multihome in the way.
fn multihome(ns: &Netns, args: &[&str]) -> Output {
    multihome_with_defaults(ns, args, Path::new("/nonexistent"))
}

/// Like `multihome`, with `defaults` as the service's EnvironmentFile.
fn multihome_with_defaults(ns: &Netns, args: &[&str], defaults: &Path) -> Output {
    let pins = ns.pin_dir();
    let mut cmd = ns.command(multihome_bin().to_str().unwrap());
    cmd.args(args);
    if matches!(args.first(), Some(&"status" | &"cleanup" | &"check")) {
        cmd.args(["--pin-dir", pins.to_str().unwrap()]);
    }
    cmd.env_remove("MULTIHOME_UPLINKS")
        .env("MULTIHOME_DEFAULTS", defaults)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `status --json` parsed, with its exit code.
fn status_json(ns: &Netns, uplinks: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["status", "--json"];
    args.extend(uplinks);
    let out = multihome(ns, &args);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stdout(&out)));
    (out.status.code(), json)
}

fn wait_healthy(ns: &Netns) {
    wait_for(
        "status to report a healthy host",
        Duration::from_secs(5),
        || multihome(ns, &["status"]).status.success().then_some(()),
        || stdout(&multihome(ns, &["status"])),
    );
}

/// The documented schema (README, "status --json"): every key, at every level.
fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn status_reports_health_with_and_without_the_daemon_and_cleanup_removes_everything_once() {
    let bed = bed();
    let ns = &bed.host;
    let daemon = Daemon::start(ns, &["--keep-on-exit", "wan1", "wan2"]).unwrap();
    wait_healthy(ns);

    let out = multihome(ns, &["status"]);
    let table = stdout(&out);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
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
            "HEALTH"
        ],
        "{table}"
    );
    assert_eq!(
        rows[2],
        [
            "wan2",
            "up",
            "192.168.0.20/24",
            "192.168.0.1",
            "-",
            "1002",
            // from, oif and the steering's own-subnet and default fwmark lookups.
            "4/4",
            "2/2",
            "wan2:tcx",
            "0",
            "0",
            "0",
            "0",
            "ok"
        ],
        "{table}"
    );
    // Columns are aligned: every row's HEALTH starts where the header's does. The steering
    // lines follow the table (the root's, then one per uplink).
    let at = table.lines().next().unwrap().find("HEALTH").unwrap();
    let uplink_rows: Vec<&str> = table.lines().skip(1).take(2).collect();
    assert!(uplink_rows.iter().all(|l| &l[at..] == "ok"), "{table}");
    let steering: Vec<&str> = table.lines().skip(3).collect();
    assert_eq!(steering.len(), 3, "{table}");
    assert!(
        steering[0].starts_with("steering: ")
            && steering[0].contains("(attached), shared rules 4/4"),
        "{table}"
    );
    assert!(
        steering[2].starts_with("wan2: ")
            && steering[2].contains("multihome-wan2.slice mark 0x6d6803ea: 0 sockets"),
        "{table}"
    );

    let (code, report) = status_json(ns, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        keys(&report),
        BTreeSet::from([
            "version",
            "protocol",
            "guard_pinned",
            "uplinks",
            "steering",
            "healthy"
        ])
    );
    assert_eq!(
        (
            &report["version"],
            &report["protocol"],
            &report["guard_pinned"],
            &report["healthy"]
        ),
        (&json!(1), &json!(77), &json!(true), &json!(true))
    );
    let root = ns.cgroup_root();
    assert_eq!(
        report["steering"],
        json!({
            "root": root.display().to_string(),
            "attached": true,
            "rules": {"wanted": 4, "present": 4, "missing": []},
            "sockets_refused": 0,
            "marked_dropped": 0,
            "unknown": []
        }),
        "{report:#}"
    );
    let slice = root.join("multihome-wan2.slice");
    let wan2 = ns.ifindex("wan2").unwrap();
    let expected = json!({
        "name": "wan2",
        "state": "up",
        "ifindex": wan2,
        "table": 1002,
        "lower": null,
        "addresses": ["192.168.0.20/24"],
        "gateways": ["192.168.0.1"],
        "rules": {"wanted": 4, "present": 4, "missing": []},
        "routes": {"wanted": 2, "present": 2, "missing": []},
        "entries": {"wanted": 1, "present": 1, "missing": []},
        "attachments": [{"device": "wan2", "ifindex": wan2, "mode": "tcx"}],
        "counters": {
            "passed": 0, "redirected": 0, "redirect_failed": 0,
            "bytes_redirected": 0, "dropped_too_big": 0
        },
        "steering": {
            "mark": "0x6d6803ea",
            "slice": slice.display().to_string(),
            "cgroup_id": std::fs::metadata(&slice).unwrap().ino(),
            "mapped": true,
            "sockets": 0,
            "processes": 0,
            "units": [],
            "marked_passed": 0,
            "marked_dropped": 0
        },
        "health": "ok",
        "ok": true
    });
    assert_eq!(report["uplinks"][1], expected, "{report:#}");
    assert_eq!(report["uplinks"][0]["name"], "wan1");

    // The daemon stops and leaves everything (--keep-on-exit): status reads the kernel and
    // the pins alone and still reports a healthy host.
    assert!(daemon.stop().success());
    assert!(multihome(ns, &["status"]).status.success());

    // An administrator flushes wan2's rules: unhealthy, exit 1, and which rules are missing.
    ns.sh("ip rule del from 192.168.0.20 lookup 1002 && ip rule del oif wan2 lookup 1002")
        .unwrap();
    // Traffic from wan2's address now leaves by wan1 (main's first route) and the guard
    // redirects it: the counters show it.
    ns.run(&[
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        "-I",
        "192.168.0.20",
        "192.168.0.1",
    ])
    .unwrap();
    let (code, report) = status_json(ns, &[]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["healthy"], false);
    let u = &report["uplinks"][1];
    assert_eq!(u["name"], "wan2", "a flushed uplink is still reported");
    assert_eq!(u["ok"], false);
    assert_eq!(u["health"], "2 of 4 rules missing");
    assert_eq!(
        u["rules"]["missing"],
        json!(["from 192.168.0.20/32 lookup 1002", "oif wan2 lookup 1002"])
    );
    assert_eq!(u["counters"]["redirected"], 2, "{u:#}");
    assert_eq!(u["counters"]["bytes_redirected"], 2 * 98, "{u:#}");
    assert_eq!(report["uplinks"][0]["ok"], true);
    let table = stdout(&multihome(ns, &["status"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("wan2") && l.ends_with("2 of 4 rules missing")),
        "{table}"
    );

    // cleanup removes the rest and says what; a second run removes nothing.
    let first = multihome(ns, &["cleanup"]);
    let first_out = stdout(&first);
    assert!(first.status.success(), "{first_out}");
    for expected in [
        "removed ipv4 rule 1000: from 192.168.0.10/32 lookup 1001 proto 77",
        "removed ipv4 rule 1001: from all oif wan1 lookup 1001 proto 77",
        "removed guard attachment (tcx) on ifindex",
        "removed pinned map",
    ] {
        assert!(first_out.contains(expected), "{expected:?} in\n{first_out}");
    }
    assert_eq!(
        first_out
            .lines()
            .filter(|l| l.starts_with("removed route"))
            .count(),
        4,
        "{first_out}"
    );
    let second = stdout(&multihome(ns, &["cleanup"]));
    assert!(second.starts_with("nothing to remove"), "{second}");
    let owned = ns
        .sh("ip rule; ip route show table all")
        .unwrap()
        .lines()
        .filter(|l| l.contains("proto 77"))
        .count();
    assert_eq!(owned, 0);
    // Nothing owned and no uplinks named: status cannot call that healthy.
    assert_eq!(multihome(ns, &["status"]).status.code(), Some(2));
    assert_eq!(status_json(ns, &["wan1", "wan2"]).0, Some(1));
}

#[test]
fn status_fails_while_an_uplink_is_absent() {
    let bed = bed();
    let ns = &bed.host;
    let _daemon = Daemon::start(ns, &["wan1", "wan2"]).unwrap();
    wait_healthy(ns);
    ns.run(&["ip", "link", "del", "wan2"]).unwrap();
    let (code, report) = status_json(ns, &["wan1", "wan2"]);
    assert_eq!(code, Some(1), "{report:#}");
    let u = &report["uplinks"][1];
    assert_eq!(
        (&u["state"], &u["ok"], &u["ifindex"]),
        (&json!("absent"), &json!(false), &json!(null))
    );
    assert_eq!(u["health"], "absent: waiting for the device to appear");
    assert_eq!(report["uplinks"][0]["ok"], true);

    // From a shell, with no uplinks named: the service's EnvironmentFile says which uplinks
    // there should be, so the vanished one (its objects gone with it) is still reported.
    let defaults = std::env::temp_dir().join(format!("{}-default", ns.name()));
    std::fs::write(&defaults, "# example\nMULTIHOME_UPLINKS=\"wan1 wan2\"\n").unwrap();
    let out = multihome_with_defaults(ns, &["status"], &defaults);
    let table = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("wan2")
                && l.ends_with("absent: waiting for the device to appear")),
        "{table}"
    );
    // Without it, status can only go by what multihome owns: wan1 alone, healthy. wan2's
    // slice is still steered by the daemon (onto wan2's mark, which fails closed while the
    // device is gone), so status does not call it an unknown slice whose sockets are refused.
    let out = multihome(ns, &["status"]);
    let table = stdout(&out);
    assert!(out.status.success(), "{table}");
    let rows = table.lines().take_while(|l| !l.starts_with("steering:"));
    assert_eq!(rows.count(), 2, "{table}");
    assert!(!table.lines().any(|l| l.starts_with("wan2")), "{table}");
    assert!(!table.contains("no uplink's slice"), "{table}");
    std::fs::remove_file(defaults).unwrap();
}

#[test]
fn check_finds_strict_rp_filter_and_arp_flux_on_shared_subnets() {
    let bed = bed();
    let ns = &bed.host;
    let lines = |ns: &Netns| -> (Option<i32>, Vec<String>) {
        let out = multihome(ns, &["check", "wan1", "wan2"]);
        let text = stdout(&out);
        (out.status.code(), text.lines().map(str::to_owned).collect())
    };
    // Per-namespace sysctls: these are the test namespace's own.
    ns.sh("sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.wan1.rp_filter=1")
        .unwrap();
    let (code, found) = lines(ns);
    assert_eq!(code, Some(1), "{found:#?}");
    let has = |found: &[String], start: &str| found.iter().any(|l| l.starts_with(start));
    assert!(
        found.contains(&"wan1: rp_filter is 1 (strict): replies to guard-redirected packets are dropped: sysctl -w net.ipv4.conf.wan1.rp_filter=2 net.ipv4.conf.all.rp_filter=2".to_owned()),
        "{found:#?}"
    );
    assert!(!has(&found, "wan2: rp_filter"), "{found:#?}");
    for wan in ["wan1", "wan2"] {
        assert!(
            found.contains(&format!("{wan}: shares a subnet with another uplink and answers ARP for it (ARP flux): sysctl -w net.ipv4.conf.{wan}.arp_ignore=1 net.ipv4.conf.{wan}.arp_announce=2")),
            "{found:#?}"
        );
    }
    // The fixes it names make those findings go.
    ns.sh(
        "sysctl -qw net.ipv4.conf.wan1.rp_filter=2 net.ipv4.conf.all.rp_filter=2 \
         net.ipv4.conf.wan1.arp_ignore=1 net.ipv4.conf.wan1.arp_announce=2 \
         net.ipv4.conf.wan2.arp_ignore=1 net.ipv4.conf.wan2.arp_announce=2",
    )
    .unwrap();
    let (_, found) = lines(ns);
    assert!(
        !found
            .iter()
            .any(|l| l.starts_with("wan1:") || l.starts_with("wan2:")),
        "{found:#?}"
    );
    // Different subnets: no ARP flux finding even with the defaults back.
    ns.sh("sysctl -qw net.ipv4.conf.wan2.arp_ignore=0 &&
         ip addr del 192.168.0.20/24 dev wan2 && ip addr add 192.168.1.20/24 dev wan2")
        .unwrap();
    let (_, found) = lines(ns);
    assert!(!has(&found, "wan2: shares"), "{found:#?}");
}

#[test]
fn under_journald_log_lines_carry_a_priority_and_no_timestamp() {
    let bed = bed();
    let ns = &bed.host;
    let daemon =
        Daemon::start_wrapped(ns, &["env", "JOURNAL_STREAM=8:12345"], &["wan1", "wan2"]).unwrap();
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>running: wan1 (table 1001)")),
        "{log}"
    );
    // Every line, those of multi-line messages included (journald makes an entry of each).
    for line in log.lines() {
        let priority = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "no priority prefix: {line:?}"
        );
        assert!(!line.contains("[20"), "a timestamp of its own: {line:?}");
    }
    assert!(daemon.stop().success());
}
