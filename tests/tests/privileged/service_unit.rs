//! dist/multihome.service, checked offline (PID 1 here is not systemd, so the unit cannot be
//! started): `systemd-analyze security --offline=true` (exposure at most 2.0) and `verify`;
//! then its sandbox is held against the real daemon in a namespace: the capability bounding
//! set suffices to load the guard (and one less does not), and every system call and socket
//! family the daemon uses from start to stop passes `SystemCallFilter=` and
//! `RestrictAddressFamilies=`; it speaks the notify protocol `Type=notify` and
//! `WatchdogSec=` expect (READY=1, WATCHDOG=1 at half the period, STOPPING=1); and iproute2
//! prints protocol 77 as `multihome` with dist/rt_protos.d/multihome.conf.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use multihome_tests::bed::one_uplink;
use multihome_tests::daemon::{multihome_bin, wait_for, Daemon};
use multihome_tests::netns::{require_root, Netns};

const MAX_EXPOSURE: f64 = 2.0;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/multihome.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).expect("dist/multihome.service")
}

/// Every value of `key=` in the unit, in order.
fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .collect()
}

/// The unit with its ExecStart pointing at this build's binary.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let text = unit().replace(
        "/usr/local/bin/multihome",
        multihome_bin().to_str().unwrap(),
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("multihome.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn exposure_is_at_most_2_0() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let figure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for multihome.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    println!("exposure of dist/multihome.service: {figure}");
    assert!(
        figure <= MAX_EXPOSURE,
        "exposure {figure} above {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn verify_finds_nothing_to_complain_about() {
    let dir = std::env::temp_dir().join(format!("mh-unit-{}", std::process::id()));
    let path = unit_for_this_build(&dir);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 even for settings it ignores: anything it prints is a finding.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ordering_and_readiness_are_as_documented() {
    let unit = unit();
    assert_eq!(directive(&unit, "Type"), ["notify"]);
    assert_eq!(
        directive(&unit, "EnvironmentFile"),
        ["-/etc/default/multihome"]
    );
    assert_eq!(directive(&unit, "Restart"), ["on-failure"]);
    assert!(directive(&unit, "WatchdogSec") == ["30s"]);
    // Never waits for devices or the network to be up: it picks uplinks up as they appear.
    for key in ["After", "Requires", "Wants", "BindsTo"] {
        for value in directive(&unit, key) {
            assert!(
                !value.contains(".device") && !value.contains("network-online"),
                "{key}={value}"
            );
        }
    }
    assert_eq!(
        directive(&unit, "Before"),
        ["network-pre.target network.target"]
    );
}

/// With `ProcSubset=pid` the sandbox's /proc holds only processes: a path under /proc that
/// another sandbox setting names (`ReadOnlyPaths=/proc/sys`, say) is missing there, and systemd
/// fails the start with 226/NAMESPACE unless the path is marked optional with "-". The offline
/// checks (`verify`, `security`) do not see it; a real systemd 252 did.
#[test]
fn paths_that_procsubset_hides_are_optional() {
    let unit = unit();
    assert_eq!(directive(&unit, "ProcSubset"), ["pid"]);
    for key in [
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "BindReadOnlyPaths",
    ] {
        for path in directive(&unit, key).join(" ").split_whitespace() {
            let hidden = path.starts_with("/proc/") && !path.starts_with("/proc/self");
            assert!(
                !hidden,
                "{key}={path}: ProcSubset=pid hides it; write -{path}"
            );
        }
    }
    assert!(directive(&unit, "ReadOnlyPaths")
        .join(" ")
        .split_whitespace()
        .any(|p| p == "-/proc/sys"));
}

/// setpriv's `--bounding-set` list for the unit's CapabilityBoundingSet=, minus `drop`.
fn bounding_set(drop: Option<&str>) -> String {
    let caps = directive(&unit(), "CapabilityBoundingSet").join(" ");
    let mut list = "-all".to_owned();
    for cap in caps.split_whitespace().filter(|c| Some(*c) != drop) {
        list.push_str(",+");
        list.push_str(&cap.trim_start_matches("CAP_").to_lowercase());
    }
    list
}

#[test]
fn the_units_capabilities_load_the_guard_and_one_less_does_not() {
    let (host, _router) = one_uplink();
    let set = bounding_set(None);
    assert_eq!(set, "-all,+net_admin,+bpf,+perfmon");
    let daemon = Daemon::start_wrapped(
        &host,
        &["setpriv", "--bounding-set", &set, "--inh-caps", "-all"],
        &["wan1"],
    )
    .unwrap();
    let status = host
        .command(multihome_bin().to_str().unwrap())
        .args([
            "status",
            "--pin-dir",
            host.pin_dir().to_str().unwrap(),
            "wan1",
        ])
        .output()
        .unwrap();
    let text = daemon.log();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(!text.contains("cannot load"), "{text}");
    assert!(
        status.status.success() && table.contains("wan1:tcx"),
        "{table}\n{text}"
    );
    assert!(daemon.stop().success(), "{text}");

    for cap in ["CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"] {
        let out = host
            .command("setpriv")
            .args([
                "--bounding-set",
                &bounding_set(Some(cap)),
                "--inh-caps",
                "-all",
            ])
            .arg(multihome_bin())
            .args(["run", "wan1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "without {cap}: {stderr}");
        assert!(stderr.contains(cap), "without {cap}: {stderr}");
    }
}

/// The system calls a `SystemCallFilter=` group stands for, groups expanded.
fn syscalls_of(item: &str) -> BTreeSet<String> {
    if !item.starts_with('@') {
        return BTreeSet::from([item.to_owned()]);
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", item])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(syscalls_of)
        .collect()
}

/// What the unit's SystemCallFilter= lines allow, applied in order as systemd does.
fn allowed_syscalls(unit: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for line in directive(unit, "SystemCallFilter") {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        for call in items.split_whitespace().flat_map(syscalls_of) {
            if deny {
                allowed.remove(&call);
            } else {
                allowed.insert(call);
            }
        }
    }
    allowed
}

#[test]
fn the_daemon_stays_inside_the_syscall_filter_and_address_families() {
    let (host, _router) = one_uplink();
    let unit = unit();
    let allowed = allowed_syscalls(&unit);
    assert!(allowed.contains("bpf") && !allowed.contains("reboot"));
    let families: Vec<String> = directive(&unit, "RestrictAddressFamilies")
        .join(" ")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let trace = std::env::temp_dir().join(format!("{}.strace", host.name()));
    let trace_arg = trace.display().to_string();
    let strace = Daemon::start_wrapped(
        &host,
        &[
            // cargo test sets LD_LIBRARY_PATH: the loader's search there is not the daemon's.
            "env",
            "-u",
            "LD_LIBRARY_PATH",
            "strace",
            "-f",
            "-q",
            "-o",
            &trace_arg,
        ],
        &["wan1"],
    )
    .unwrap();
    // Stop the daemon itself (strace's first traced pid), so that its teardown is traced too,
    // and let strace see it exit before it is stopped in turn.
    let read = || std::fs::read_to_string(&trace).unwrap_or_default();
    let pid: i32 = read()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("strace output starts with a pid");
    // SAFETY: plain kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let exited = |text: &str| {
        text.lines()
            .any(|l| l.starts_with(&pid.to_string()) && l.ends_with("+++ exited with 0 +++"))
    };
    wait_for(
        "the traced daemon to exit",
        Duration::from_secs(10),
        || exited(&read()).then_some(()),
        || strace.log(),
    );
    let log_text = strace.log();
    assert!(log_text.contains("stopping"), "{log_text}");
    strace.stop();
    let text = read();
    let mut used = BTreeSet::new();
    let mut used_families = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for line in text.lines() {
        let call = line
            .split_whitespace()
            .nth(1)
            .and_then(|rest| rest.split_once('('))
            .map(|(name, _)| name);
        let Some(call) = call.filter(|c| {
            c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }) else {
            continue;
        };
        used.insert(call.to_owned());
        if PATH_CALLS.contains(&call) {
            if let Some(path) = line.split('"').nth(1).filter(|p| p.starts_with('/')) {
                paths.insert(path.to_owned());
            }
        }
        if call == "socket" || call == "socketpair" {
            let family = line
                .split('(')
                .nth(1)
                .unwrap_or("")
                .split(',')
                .next()
                .unwrap_or("");
            used_families.insert(family.to_owned());
        }
    }
    assert!(used.contains("bpf") && used.len() > 20, "{used:?}");
    let refused: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "system calls outside SystemCallFilter=: {refused:?}"
    );
    let foreign: Vec<&String> = used_families
        .iter()
        .filter(|f| !families.contains(f))
        .collect();
    assert!(
        foreign.is_empty() && used_families.contains("AF_NETLINK"),
        "socket families outside RestrictAddressFamilies={families:?}: {used_families:?}"
    );
    // ProtectProc=invisible, ProcSubset=pid, ProtectSystem=strict with only /sys/fs/bpf and
    // the steering root writable: the daemon reads its own /proc entries, kernel BTF, the CPU
    // count and the dynamic loader's files, and touches nothing else but its pins and the
    // steering root (the unit's multihome.slice; the test's own root here).
    let bin = multihome_bin().display().to_string();
    // The claim and the control socket, in what stands in for the unit's RuntimeDirectory=.
    let runtime = host.runtime_dir().display().to_string();
    let steering_root = host.cgroup_root();
    let outside: Vec<&String> = paths
        .iter()
        .filter(|p| {
            **p != bin
                && !p.starts_with(&runtime)
                && !ALLOWED_PATHS.iter().any(|a| p.starts_with(a))
        })
        .filter(|p| !std::path::Path::new(p.as_str()).starts_with(&steering_root))
        .collect();
    assert!(
        outside.is_empty(),
        "paths outside the sandbox's view: {outside:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("/sys/fs/bpf/")),
        "{paths:?}"
    );
    let _ = std::fs::remove_file(trace);
}

/// System calls that name a path first.
const PATH_CALLS: &[&str] = &[
    "open",
    "openat",
    "stat",
    "lstat",
    "statx",
    "newfstatat",
    "access",
    "faccessat",
    "faccessat2",
    "mkdir",
    "mkdirat",
    "unlink",
    "unlinkat",
    "rmdir",
    "statfs",
    "readlink",
    "readlinkat",
    "execve",
    "mount",
];

/// What the daemon may touch under the unit's sandbox (`/proc/version_signature` is absent on
/// Debian and hidden by ProcSubset=pid; aya falls back to uname(2)). aya reads the number of
/// possible CPUs for every access to the per-CPU counters map (read-only /sys is visible).
const ALLOWED_PATHS: &[&str] = &[
    "/proc/self/",
    "/proc/thread-self/ns/net",
    "/proc/version_signature",
    "/sys/kernel/btf/vmlinux",
    "/sys/devices/system/cpu/possible",
    "/sys/fs/bpf",
    "/etc/ld.so",
    "/lib/",
    "/usr/lib/",
    "/lib64/",
];

/// A socket in the role of systemd's notify socket for a daemon in `host`: the socket, its
/// path, and the `NOTIFY_SOCKET=` assignment that points the daemon at it.
fn notify_socket(host: &Netns) -> (UnixDatagram, PathBuf, String) {
    let path = std::env::temp_dir().join(format!("{}-notify", host.name()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let notify = format!("NOTIFY_SOCKET={}", path.display());
    (socket, path, notify)
}

#[test]
fn the_daemon_speaks_sd_notify_ready_watchdog_stopping() {
    let (host, _router) = one_uplink();
    let (socket, socket_path, notify) = notify_socket(&host);
    // WatchdogSec=200ms: a ping every 100 ms.
    let daemon =
        Daemon::start_wrapped(&host, &["env", &notify, "WATCHDOG_USEC=200000"], &["wan1"]).unwrap();
    let next = || {
        let mut buf = [0; 64];
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // READY=1 comes once the first reconcile has installed the rules.
    assert_eq!(next(), "READY=1");
    // The pings run from READY=1 on (the first at once), whatever this test does meanwhile.
    let start = std::time::Instant::now();
    assert!(host
        .sh("ip -N rule")
        .unwrap()
        .contains("lookup 1001 proto 77"));
    for _ in 0..5 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "5 pings in {elapsed:?}"
    );
    assert!(daemon.stop().success());
    let rest: Vec<String> = std::iter::from_fn(|| {
        let mut buf = [0; 64];
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("STOPPING=1"),
        "{rest:?}"
    );
    std::fs::remove_file(socket_path).unwrap();
}

/// Installed and enabled but not configured yet (the package's /etc/default/multihome names
/// no uplink): the unit's ExecStart idles, tells systemd why (STATUS=, shown by `systemctl
/// status`), answers the watchdog, touches nothing and stops cleanly; a run from a shell
/// without the flag refuses with exit 2 instead.
#[test]
fn without_uplinks_the_units_command_idles_and_says_why() {
    let unit = unit();
    let exec = directive(&unit, "ExecStart");
    assert_eq!(
        exec,
        ["/usr/local/bin/multihome run --idle-without-uplinks $MULTIHOME_OPTS"]
    );
    let (host, _router) = one_uplink();
    let (socket, socket_path, notify) = notify_socket(&host);
    let bin = multihome_bin().display().to_string();
    // What systemd's EnvironmentFile= makes of the shipped file: MULTIHOME_OPTS="" and no
    // MULTIHOME_UPLINKS.
    let log = std::env::temp_dir().join(format!("{}-idle.log", host.name()));
    let mut idle = host
        .spawn_logged(
            &[
                "env",
                "-u",
                "MULTIHOME_UPLINKS",
                "MULTIHOME_OPTS=",
                &notify,
                "WATCHDOG_USEC=200000",
                &bin,
                "run",
                "--idle-without-uplinks",
            ],
            &log,
        )
        .unwrap();
    let next = || {
        let mut buf = [0; 512];
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let why = "no uplinks configured: set MULTIHOME_UPLINKS in /etc/default/multihome, then run \
               `systemctl restart multihome`; idle until then";
    assert_eq!(next(), format!("READY=1\nSTATUS={why}"));
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches(why).count(), 1, "{text}");
    assert!(idle.running(), "{text}");
    let rules = host.sh("ip rule; ip -6 rule").unwrap();
    assert!(!rules.contains("proto 77"), "{rules}");
    assert!(!host.pin_dir().exists());
    assert!(idle.stop(libc::SIGTERM).unwrap().success());
    let rest = std::iter::from_fn(|| {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0; 64];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .last();
    assert_eq!(rest.as_deref(), Some("STOPPING=1"));

    let out = host
        .command("env")
        .args(["-u", "MULTIHOME_UPLINKS", &bin, "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no uplink given"), "{stderr}");
    std::fs::remove_file(socket_path).unwrap();
    std::fs::remove_file(log).unwrap();
}

#[test]
fn iproute2_reads_the_protocol_name_from_rt_protos_d() {
    require_root();
    let ns = Netns::new("rt").unwrap();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/rt_protos.d/multihome.conf");
    // A private mount namespace with an /etc/iproute2 holding only our file: the host's stays
    // untouched.
    let script = format!(
        "mount -t tmpfs tmpfs /etc/iproute2 && mkdir /etc/iproute2/rt_protos.d &&
         cp {} /etc/iproute2/rt_protos.d/ &&
         ip rule add from 192.0.2.1 lookup 1001 proto multihome && ip rule show && ip -N rule show",
        conf.display()
    );
    let out = ns.run(&["unshare", "-m", "sh", "-c", &script]).unwrap();
    assert!(
        out.contains("from 192.0.2.1 lookup 1001 proto multihome")
            && out.contains("from 192.0.2.1 lookup 1001 proto 77"),
        "{out}"
    );
}
