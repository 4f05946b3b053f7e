//! Steering that cannot start (here: a steering root outside cgroup2, as on a host without the
//! unified hierarchy) leaves the guard and the rules running: the daemon says once, on one line,
//! what is missing, creates nothing, and `multihome exec` refuses with one line and exit 2.

use std::process::Output;

use multihome_tests::daemon::{multihome_bin, wait_for, Daemon};
use multihome_tests::netns::{require_root, two_static_uplinks, Netns};
use serde_json::Value;
use std::time::Duration;

fn bed() -> (Netns, [Netns; 2]) {
    require_root();
    two_static_uplinks(["su", "sa", "sb"]).unwrap()
}

fn run(host: &Netns, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = host.command(multihome_bin().to_str().unwrap());
    cmd.args(args).env_remove("MULTIHOME_UPLINKS");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().unwrap()
}

#[test]
fn a_steering_root_outside_cgroup2_leaves_the_guard_running_and_exec_refuses() {
    let (host, _routers) = bed();
    // A plain directory: no cgroup2 file system (a host with cgroup v1 alone is the same case).
    let plain = std::env::temp_dir().join(format!("{}-not-cgroup2", host.name()));
    std::fs::create_dir_all(&plain).unwrap();
    let plain_env = format!("MULTIHOME_CGROUP_ROOT={}", plain.display());
    let daemon = Daemon::start_wrapped(&host, &["env", &plain_env], &["wan1", "wan2"]).unwrap();
    let pins = host.pin_dir().display().to_string();

    let status = || -> (Option<i32>, Value) {
        let out = run(
            &host,
            &[],
            &["status", "--json", "--pin-dir", &pins, "wan1", "wan2"],
        );
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    };
    let report = wait_for(
        "a healthy host without steering",
        Duration::from_secs(5),
        || {
            let (code, report) = status();
            (code == Some(0)).then_some(report)
        },
        || format!("{:#}", status().1),
    );
    // The guard is loaded and attached to both uplinks; the rules are the from/oif ones alone
    // (no fwmark rule routes a mark nothing sets).
    assert_eq!(report["guard_pinned"], true, "{report:#}");
    assert_eq!(report["steering"], Value::Null, "{report:#}");
    for (i, wan) in ["wan1", "wan2"].iter().enumerate() {
        let u = &report["uplinks"][i];
        assert_eq!(u["attachments"][0]["device"], *wan, "{report:#}");
        assert_eq!(u["rules"]["wanted"], 2, "{report:#}");
        assert_eq!(u["steering"], Value::Null, "{report:#}");
    }
    let rules = host.sh("ip rule; ip -6 rule").unwrap();
    assert!(!rules.contains("fwmark"), "{rules}");
    // The guard runs: datagrams from wan2's address sent out of wan1 (a socket bound to the
    // device, so the oif rule picks wan1's table) are redirected to wan2.
    host.run(&[
        "python3",
        "-c",
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'wan1')\n\
         s.bind(('192.168.0.20', 0))\n\
         for _ in range(2): s.sendto(b'x', ('192.168.0.1', 9))\n",
    ])
    .unwrap();
    let counted = wait_for(
        "the guard to count the redirected datagrams",
        Duration::from_secs(3),
        || {
            let report = status().1;
            (report["uplinks"][1]["counters"]["redirected"] == 2).then_some(report)
        },
        || format!("{:#}", status().1),
    );
    assert_eq!(counted["uplinks"][0]["counters"]["redirected"], 0);

    // Said once, on one line, with what is missing; nothing made in the directory.
    let log = daemon.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("steering programs onto uplinks is off"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("WARN"), "{log}");
    assert!(
        said[0].contains(&format!(
            "the steering root {} (--cgroup-root, MULTIHOME_CGROUP_ROOT) is not in a cgroup2 file system",
            plain.display()
        )),
        "{log}"
    );
    assert_eq!(std::fs::read_dir(&plain).unwrap().count(), 0);

    // exec refuses on one line with exit 2, whether it is given the same root or a cgroup2 one
    // the daemon does not steer (the namespace's own root); the command never runs.
    let marker = std::env::temp_dir().join(format!("{}-ran", host.name()));
    let touch = format!("touch {}", marker.display());
    for (env, expected) in [
        (
            vec![("MULTIHOME_CGROUP_ROOT", plain.to_str().unwrap())],
            "is not in a cgroup2 file system".to_owned(),
        ),
        (
            vec![],
            format!("uplink wan2 is not steered: multihome runs (its maps are pinned in {pins}) but steers no program onto an uplink"),
        ),
    ] {
        let out = run(
            &host,
            &env,
            &["exec", "--pin-dir", &pins, "wan2", "--", "sh", "-c", &touch],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&expected), "{expected:?} in {stderr}");
        assert!(!marker.exists(), "the command ran: {stderr}");
    }

    assert!(daemon.stop().success());
    assert_eq!(
        host.sh("ip rule; ip -6 rule")
            .unwrap()
            .lines()
            .filter(|l| l.contains("proto 77"))
            .count(),
        0
    );
    std::fs::remove_dir(&plain).unwrap();
}
