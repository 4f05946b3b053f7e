//! A kernel that refuses the guard: the daemon says why in one warning, runs with the rules
//! alone, and does not keep trying guard operations (before, every pass planned attachments and
//! map entries, failed them with "the guard is not loaded" and retried with back-off).
//!
//! The refusal is real, not simulated: the daemon runs as root of a user namespace (with a
//! network namespace of its own, so that its netlink changes are allowed), where the kernel
//! refuses every BPF map and program (CAP_BPF counts only in the initial user namespace). Its
//! bpffs is a fresh one in a private mount namespace, whatever the machine has mounted, and so
//! is its /run (its log and its claim; a tmpfs over /tmp would hide the binary of a checkout
//! under /tmp).

use std::process::Command;

use multihome_tests::daemon::multihome_bin;
use multihome_tests::netns::require_root;

/// Runs in the user and network namespace: an uplink (a veth whose peer stays inside) with an address and a DHCP-style
/// default route, the daemon for about three seconds (many passes and retry pauses), then
/// SIGTERM. Prints the rules multihome installed and the daemon's exit status.
const SCRIPT: &str = r#"
set -e
ip link set lo up
ip link add wan1 type veth peer name lan
ip link set wan1 up
ip link set lan up
ip addr add 192.168.0.10/24 dev wan1
ip route add default via 192.168.0.1 dev wan1 metric 10 proto dhcp
"$MULTIHOME" run --pin-dir /sys/fs/bpf/refused wan1 2>/run/daemon.log &
daemon=$!
for _ in $(seq 50); do
    [ "$(ip -N rule show | grep -c 'proto 77')" = 2 ] && break
    sleep 0.1
done
sleep 3
echo "RULES $(ip -N rule show | grep -c 'proto 77')"
set +e
kill -TERM "$daemon"
wait "$daemon"
echo "EXIT $?"
echo "LEFT $(ip -N rule show | grep -c 'proto 77')"
cat /run/daemon.log
"#;

#[test]
fn a_refused_guard_is_reported_once_and_the_rules_run_alone() {
    require_root();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t bpf bpf /sys/fs/bpf && mount -t tmpfs run /run && \
             exec unshare --user --map-root-user --net sh -c \"$0\"",
        )
        .arg(SCRIPT)
        .env("MULTIHOME", multihome_bin())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(
        stdout.contains("RULES 2\n"),
        "the rules were not installed:\n{all}"
    );
    assert!(stdout.contains("EXIT 0\n"), "{all}");
    assert!(stdout.contains("LEFT 0\n"), "{all}");
    let refused: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("cannot load"))
        .collect();
    assert_eq!(refused.len(), 1, "said once:\n{all}");
    assert!(refused[0].contains("running rules only"), "{all}");
    assert!(
        refused[0].contains("Operation not permitted"),
        "says why:\n{all}"
    );
    assert!(
        !stdout.contains("the guard is not loaded"),
        "guard operations planned without a guard:\n{all}"
    );
}
