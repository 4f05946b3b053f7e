//! Every wrong form of input gets exit status 2, one line naming the problem and the fix, and
//! leaves the system as it was. Run inside a namespace with a real uplink, so that a bug that
//! went ahead anyway would show up as installed rules.

use multihome_tests::daemon::multihome_bin;
use multihome_tests::netns::{require_root, veth, Netns};

/// (arguments after `multihome`, what the one-line error must say: the problem, naming what is
/// wrong, and what to do)
const CASES: &[(&[&str], &[&str])] = &[
    (
        &["run", "wan/1"],
        &["invalid interface name \"wan/1\"", "use 1 to 15 characters"],
    ),
    (
        &["run", "averyveryverylongname"],
        &[
            "invalid interface name \"averyveryverylongname\"",
            "use 1 to 15 characters",
        ],
    ),
    (
        &["run", "wan1", "wan1"],
        &["uplink wan1 is given twice", "name each uplink once"],
    ),
    (
        &["run", "wan1=0"],
        &["use table 0, which is reserved", "use another table number"],
    ),
    (
        &["run", "wan1=253"],
        &[
            "use table 253, which is reserved",
            "use another table number",
        ],
    ),
    (
        &["run", "wan1=254"],
        &[
            "use table 254, which is reserved",
            "use another table number",
        ],
    ),
    (
        &["run", "wan1=255"],
        &[
            "use table 255, which is reserved",
            "use another table number",
        ],
    ),
    (
        &["run", "wan1=4294967296"],
        &[
            "table 4294967296 of uplink wan1 is out of range",
            "use a number from 1 to 4294967295",
        ],
    ),
    (
        &["run", "wan1=main"],
        &[
            "invalid uplink \"wan1=main\"",
            "IFNAME=TABLE with TABLE a number",
        ],
    ),
    (
        &["run", "wan1=1001", "wan2=1001"],
        &[
            "uplinks wan1 and wan2 both use table 1001",
            "give each uplink its own table",
        ],
    ),
    (
        &["run", "--priority", "0", "wan1"],
        &["--priority 0 is invalid", "use 5 to 32764"],
    ),
    (
        &["run", "--priority", "32766", "wan1"],
        &["--priority 32766 is invalid", "use 5 to 32764"],
    ),
    (
        &["run", "--priority", "32765", "wan1"],
        &["--priority 32765 is invalid", "use 5 to 32764"],
    ),
    (
        &["run", "--protocol", "0", "wan1"],
        &["--protocol 0 is invalid", "use 5 to 254"],
    ),
    (
        &["run", "--protocol", "2", "wan1"],
        &["--protocol 2 is invalid", "use 5 to 254"],
    ),
    (
        &["run", "--protocol", "300", "wan1"],
        &["--protocol 300 is invalid", "use 5 to 254"],
    ),
    (
        &["run", "--table-base", "4294967295", "wan1"],
        &[
            "--table-base 4294967295 leaves no table",
            "use a smaller --table-base",
        ],
    ),
    (
        &["run", "--gateway", "wan1", "wan1"],
        &["invalid --gateway \"wan1\"", "write IFNAME=ADDR"],
    ),
    (
        &["run", "--gateway", "wan1=router", "wan1"],
        &[
            "invalid --gateway \"wan1=router\"",
            "ADDR must be an IPv4 or IPv6 address",
        ],
    ),
    (
        &["run", "--gateway", "wan3=192.168.0.1", "wan1"],
        &[
            "--gateway for wan3, which is not an uplink",
            "add wan3 to the uplinks",
        ],
    ),
    (
        &["run", "--no-ebpf", "--no-rules", "wan1"],
        &[
            "--no-rules and --no-ebpf together leave nothing to do",
            "drop one of them",
        ],
    ),
    (&["run"], &["no uplink given", "name at least one"]),
    (
        &["run", "--frobnicate", "wan1"],
        &[
            "unexpected argument '--frobnicate'",
            "see `multihome --help`",
        ],
    ),
    (
        &["run", "--priority", "many", "wan1"],
        &[
            "invalid value 'many' for '--priority <P>'",
            "see `multihome --help`",
        ],
    ),
    (
        &["status", "--protocol", "999"],
        &["--protocol 999 is invalid", "use 5 to 254"],
    ),
    (
        &["cleanup", "--protocol", "1"],
        &["--protocol 1 is invalid", "use 5 to 254"],
    ),
    (
        &["check", "--priority", "0"],
        &["--priority 0 is invalid", "use 5 to 32764"],
    ),
    (
        &["check", "--protocol", "300"],
        &["--protocol 300 is invalid", "use 5 to 254"],
    ),
    (
        &["check", "wan/1"],
        &["invalid interface name \"wan/1\"", "use 1 to 15 characters"],
    ),
    (
        &["frobnicate"],
        &[
            "unrecognized subcommand 'frobnicate'",
            "see `multihome --help`",
        ],
    ),
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
    for (args, needles) in CASES {
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
        let says_it = needles.iter().all(|needle| stderr.contains(needle));
        if out.status.code() != Some(2) || !one_line || !says_it {
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
            "is not on a bpf filesystem: choose one under /sys/fs/bpf",
        ),
        (
            vec![
                "unshare".into(), "-m".into(), "sh".into(), "-c".into(),
                format!("while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf || exit 97; done; exec setpriv --bounding-set -sys_admin --inh-caps -sys_admin {bin} run wan1"),
            ],
            "no bpf filesystem at /sys/fs/bpf and mounting one failed",
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
