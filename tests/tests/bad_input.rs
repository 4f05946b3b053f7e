//! Every wrong form of input gets exit status 2, one line naming the problem and the fix, and
//! leaves the system as it was. Run inside a namespace with a real uplink, so that a bug that
//! went ahead anyway would show up as installed rules.

use multihome_tests::daemon::multihome_bin;
use multihome_tests::netns::{require_root, veth, Netns};

/// (arguments after `multihome`, text the one-line error must contain)
const CASES: &[(&[&str], &str)] = &[
    (&["run", "wan/1"], "wan/1"),
    (&["run", "averyveryverylongname"], "15"),
    (&["run", "wan1", "wan1"], "wan1"),
    (&["run", "wan1=0"], "0"),
    (&["run", "wan1=253"], "253"),
    (&["run", "wan1=254"], "254"),
    (&["run", "wan1=255"], "255"),
    (&["run", "wan1=4294967296"], "4294967296"),
    (&["run", "wan1=main"], "main"),
    (&["run", "wan1=1001", "wan2=1001"], "1001"),
    (&["run", "--priority", "0", "wan1"], "priority"),
    (&["run", "--priority", "32766", "wan1"], "priority"),
    (&["run", "--priority", "32765", "wan1"], "priority"),
    (&["run", "--protocol", "0", "wan1"], "protocol"),
    (&["run", "--protocol", "2", "wan1"], "protocol"),
    (&["run", "--protocol", "300", "wan1"], "protocol"),
    (&["run", "--table-base", "4294967295", "wan1"], "table"),
    (&["run", "--gateway", "wan1", "wan1"], "wan1"),
    (&["run", "--gateway", "wan1=router", "wan1"], "router"),
    (&["run", "--gateway", "wan3=192.168.0.1", "wan1"], "wan3"),
    (&["run", "--no-ebpf", "--no-rules", "wan1"], "no-rules"),
    (&["run"], "uplink"),
    (&["run", "--frobnicate", "wan1"], "frobnicate"),
    (&["run", "--priority", "many", "wan1"], "many"),
    (&["status", "--protocol", "999"], "protocol"),
    (&["cleanup", "--protocol", "1"], "protocol"),
    (&["check", "--priority", "0"], "priority"),
    (&["check", "--protocol", "300"], "protocol"),
    (&["check", "wan/1"], "wan/1"),
    (&["frobnicate"], "frobnicate"),
];

fn owned(ns: &Netns) -> String {
    ns.sh("ip -N rule; ip -N -6 rule; ip -N route show table all; ip -N -6 route show table all")
        .unwrap()
        .lines()
        .filter(|l| l.contains("proto 77"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn bad_input_exits_2_with_one_line_and_changes_nothing() {
    require_root();
    let host = Netns::new("bad").unwrap();
    let peer = Netns::new("bp").unwrap();
    veth(&host, "wan1", &peer, "lan").unwrap();
    host.sh("ip addr add 192.168.0.10/24 dev wan1 &&
             ip route add default via 192.168.0.1 dev wan1 metric 10 proto dhcp")
        .unwrap();
    let pin_dir = host.pin_dir().display().to_string();
    let bin = multihome_bin();
    let mut failures = Vec::new();
    for (args, needle) in CASES {
        // `run` gets a pin directory of this test's own, so anything pinned would be seen.
        let mut argv: Vec<&str> = args.to_vec();
        if argv.first() == Some(&"run") {
            argv.splice(1..1, ["--pin-dir", pin_dir.as_str()]);
        }
        let out = host
            .command(bin.to_str().unwrap())
            .env_remove("MULTIHOME_UPLINKS")
            .args(&argv)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let one_line = stderr.trim_end().lines().count() == 1;
        if out.status.code() != Some(2) || !one_line || !stderr.contains(needle) {
            failures.push(format!(
                "{args:?}: status {:?}, stderr {stderr:?}",
                out.status.code()
            ));
        }
        assert_eq!(owned(&host), "", "{args:?} installed something");
        assert!(
            !std::path::Path::new(&pin_dir).exists(),
            "{args:?} pinned something"
        );
    }
    assert!(
        failures.is_empty(),
        "wrong handling:\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_missing_capability_is_named() {
    require_root();
    let host = Netns::new("cap").unwrap();
    for (dropped, name) in [("-net_admin", "CAP_NET_ADMIN"), ("-bpf", "CAP_BPF")] {
        let out = host
            .command("setpriv")
            .args(["--bounding-set", dropped, "--inh-caps", dropped])
            .arg(multihome_bin())
            .args(["run", "lo"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

#[test]
fn an_unusable_pin_directory_is_refused_before_anything_changes() {
    require_root();
    let host = Netns::new("pin").unwrap();
    let peer = Netns::new("pp").unwrap();
    veth(&host, "wan1", &peer, "lan").unwrap();
    host.run(&["ip", "addr", "add", "192.168.0.10/24", "dev", "wan1"])
        .unwrap();
    let bin = multihome_bin();
    let bin = bin.to_str().unwrap();
    let not_bpffs = std::env::temp_dir().join(format!("{}-pins", host.name()));
    // Not on bpffs; then bpffs missing (a private mount namespace without it, whether or not
    // the machine has one mounted, once or stacked) and not mountable without CAP_SYS_ADMIN.
    let cases: [(Vec<String>, &str); 2] = [
        (
            vec![bin.into(), "run".into(), "--pin-dir".into(), not_bpffs.display().to_string(), "wan1".into()],
            "not on a bpf filesystem",
        ),
        (
            vec![
                "unshare".into(), "-m".into(), "sh".into(), "-c".into(),
                format!("while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf || exit 97; done; exec setpriv --bounding-set -sys_admin --inh-caps -sys_admin {bin} run wan1"),
            ],
            "mount",
        ),
    ];
    for (argv, needle) in cases {
        let out = host.command(&argv[0]).args(&argv[1..]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{argv:?}: {stderr}");
        assert_eq!(owned(&host), "", "{argv:?} installed something");
    }
    assert!(!not_bpffs.exists(), "no directory left behind");
}
