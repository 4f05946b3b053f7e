//! `multihome check` on this machine's kernel (6.18: BTF, TCX, clsact): its probe loads the real
//! guard and attaches it in namespaces of its own, reports what a kernel refuses as refused
//! (the verifier's own words, the capability that was missing), checks the host without
//! uplinks, reports systemd-networkd where it runs (the real one, in a testbed) and only there,
//! and leaves nothing behind, even when killed half-way.
//!
//! Each run is inside a test namespace and a mount namespace of its own with a fresh bpffs at
//! /sys/fs/bpf: neither an earlier test nor another helper's pins play a part, and anything
//! the probe pinned where the host could see it would be found there.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::process::{Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use multihome_tests::daemon::{multihome_bin, wait_for};
use multihome_tests::netns::{cgroup2_mount, require_root, veth, Netns};
use multihome_tests::testbed::{Client, Testbed};
use serde_json::Value;

/// What this kernel accepts: everything, TCX first.
const GUARD_WORKS: &str =
    "guard: loads; attaches by tcx and clsact (auto uses tcx); redirect helper ok";

struct Run {
    code: Option<i32>,
    stdout: String,
    /// What the fresh bpffs at /sys/fs/bpf held before and after the check, one path a line
    /// (the kernel's preloaded iterators, `maps.debug` and `progs.debug`, where it has them).
    bpffs_before: String,
    bpffs_after: String,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn has_line(&self, start: &str) -> bool {
        self.stdout.lines().any(|l| l.starts_with(start))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("check --json: {e}: {}", self.stdout))
    }
}

/// `multihome check ARGS` in `ns` after `setup` (shell, in the private mount namespace), run
/// through `wrapper` (e.g. setpriv), with neither $MULTIHOME_UPLINKS nor /etc/default/multihome.
fn check(ns: &Netns, setup: &str, wrapper: &str, args: &[&str]) -> Run {
    let script = format!(
        "set -e
         mount -t bpf bpf /sys/fs/bpf
         {setup}
         set +e
         echo BEFORE >&2; find /sys/fs/bpf -mindepth 1 >&2; echo CHECK >&2
         {wrapper} \"$@\"; rc=$?
         echo AFTER >&2; find /sys/fs/bpf -mindepth 1 >&2
         exit $rc"
    );
    let bin = multihome_bin();
    let out = ns
        .command("unshare")
        .args(["-m", "sh", "-c", &script, "sh"])
        .arg(&bin)
        .arg("check")
        .args(args)
        .env_remove("MULTIHOME_UPLINKS")
        .env("MULTIHOME_DEFAULTS", "/nonexistent")
        .output()
        .unwrap();
    run_of(out)
}

/// Splits the script's standard error: the bpffs before, the check's own (which must be
/// empty), the bpffs after.
fn run_of(out: Output) -> Run {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let parts = (stderr.strip_prefix("BEFORE\n"))
        .and_then(|rest| rest.split_once("CHECK\n"))
        .and_then(|(before, rest)| Some((before, rest.split_once("AFTER\n")?)));
    let Some((before, (own, after))) = parts else {
        panic!("the check's script failed: {stderr}");
    };
    assert_eq!(own, "", "check wrote to stderr");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        bpffs_before: before.to_owned(),
        bpffs_after: after.to_owned(),
    }
}

fn host() -> Netns {
    require_root();
    Netns::new("chk").unwrap()
}

#[test]
fn on_this_kernel_the_guard_loads_attaches_by_tcx_and_clsact_and_redirects() {
    let _tree = probe_tree();
    let ns = host();
    let run = check(&ns, "", "", &[]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let lines = run.lines();
    assert!(lines[0].starts_with("kernel: "), "{lines:#?}");
    assert_eq!(lines[1], GUARD_WORKS, "{lines:#?}");
    // cgroup2 where mountinfo says (this machine is hybrid: /sys/fs/cgroup/unified), and the
    // steering program attaches beside the namespace's steering root.
    let cgroup2 = cgroup2_mount();
    assert_eq!(
        lines[2],
        format!(
            "steer: cgroup2 at {}; the steering program (cgroup/sock_create) attaches: multihome \
             exec and the uplink slices below {} work",
            cgroup2.display(),
            ns.cgroup_root().display()
        ),
        "{lines:#?}"
    );
    assert_eq!(
        probe_cgroups(),
        Vec::<String>::new(),
        "the probe's cgroup was left"
    );
    assert_eq!(
        lines.last(),
        Some(&"no findings: kernel, privileges and host settings suit multihome")
    );
    assert!(
        !run.has_line("note:"),
        "nothing falls back here: {lines:#?}"
    );

    let json = check(&ns, "", "", &["--json"]).json();
    assert_eq!(json["version"], 1);
    assert_eq!(json["guard"], GUARD_WORKS.strip_prefix("guard: ").unwrap());
    assert_eq!(json["kernel"]["btf"], true, "this machine's kernel has BTF");
    for step in [
        "sandbox", "device", "load", "tcx", "clsact", "auto", "redirect",
    ] {
        assert_eq!(json["probe"][step]["status"], "ok", "{step}: {json:#}");
    }
    assert_eq!(json["probe"]["auto_uses"], "tcx");
    assert_eq!(json["probe"]["steer"]["status"], "ok", "{json:#}");
    assert_eq!(
        (
            &json["steer"]["cgroup2"],
            &json["steer"]["root"],
            &json["steer"]["attaches"]
        ),
        (
            &Value::from(cgroup2.display().to_string()),
            &Value::from(ns.cgroup_root().display().to_string()),
            &Value::Bool(true)
        ),
        "{json:#}"
    );
    assert_eq!(
        json["steer"]["summary"],
        lines[2].strip_prefix("steer: ").unwrap()
    );
    assert_eq!(json["ok"], true);
    assert_eq!(json["findings"], serde_json::json!([]));
}

/// Held by the tests that look at the probes' cgroups: the killed checks of one leave theirs
/// behind on purpose, which the other would count (the tests of this binary run in parallel).
fn probe_tree() -> MutexGuard<'static, ()> {
    static PROBE_TREE: Mutex<()> = Mutex::new(());
    PROBE_TREE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cgroups of probes of this process's children left in the cgroup2 root (there should be
/// none: each probe removes its own).
fn probe_cgroups() -> Vec<String> {
    let mine: Vec<String> = fs::read_dir(cgroup2_mount())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("multihome-probe-"))
        .collect();
    // Other helpers' checks may be probing right now: only dead probes' cgroups count.
    mine.into_iter()
        .filter(|n| {
            let pid = n.trim_start_matches("multihome-probe-");
            !std::path::Path::new("/proc").join(pid).exists()
        })
        .collect()
}

#[test]
fn without_cgroup2_or_outside_it_steering_is_unavailable_and_the_guard_unaffected() {
    let ns = host();
    let without = "multihome exec and the uplink slices refuse; the guard and the rules are \
                   unaffected";
    // No cgroup2 in the check's mount namespace (a host with cgroup v1 alone).
    let cgroup2 = cgroup2_mount();
    let unmounted = format!("umount -l {}", cgroup2.display());
    let run = check(&ns, &unmounted, "", &[]);
    assert_eq!(run.code, Some(0), "steering is optional: {}", run.stdout);
    assert_eq!(run.lines()[1], GUARD_WORKS, "{}", run.stdout);
    assert_eq!(
        run.lines()[2],
        format!(
            "steer: unavailable: no cgroup2 file system is mounted (none in \
             /proc/self/mountinfo): {without}"
        ),
        "{}",
        run.stdout
    );
    let json = check(&ns, &unmounted, "", &["--json"]).json();
    assert_eq!(json["steer"]["cgroup2"], Value::Null, "{json:#}");
    assert_eq!(json["steer"]["attaches"], false, "{json:#}");
    assert_eq!(json["probe"]["steer"]["status"], "skipped", "{json:#}");

    // A steering root that is not in cgroup2 (a plain directory).
    let plain = std::env::temp_dir().join(format!("{}-plain", ns.name()));
    fs::create_dir_all(&plain).unwrap();
    let outside = format!("export MULTIHOME_CGROUP_ROOT={}", plain.display());
    let run = check(&ns, &outside, "", &[]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert_eq!(
        run.lines()[2],
        format!(
            "steer: unavailable: the steering root {} (--cgroup-root, MULTIHOME_CGROUP_ROOT) is \
             not in a cgroup2 file system (cgroup2 is mounted at {}): give a cgroup below it: \
             {without}",
            plain.display(),
            cgroup2.display()
        ),
        "{}",
        run.stdout
    );
    assert_eq!(fs::read_dir(&plain).unwrap().count(), 0);
    fs::remove_dir(&plain).unwrap();
}

#[test]
fn without_kernel_btf_the_guard_still_loads_and_btf_is_only_a_note() {
    let ns = host();
    // Raspberry Pi OS kernels have no /sys/kernel/btf: hide it from the check alone.
    let run = check(&ns, "mount -t tmpfs none /sys/kernel/btf", "", &[]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert!(run.has_line(GUARD_WORKS), "{}", run.stdout);
    assert!(
        run.has_line(
            "note: no kernel BTF (/sys/kernel/btf/vmlinux): not needed, the guard loaded \
             without it"
        ),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("CONFIG_DEBUG_INFO_BTF"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_refused_load_is_reported_as_refused_never_as_working() {
    let ns = host();
    // (capability taken away, how the guard line starts, what the kernel said, step failed)
    let cases = [
        (
            "perfmon",
            "guard: refused by the verifier: ",
            "prohibited for !root (Permission denied, EACCES)",
            "load",
        ),
        (
            "bpf",
            "guard: does not load: ",
            "(Operation not permitted, EPERM)",
            "load",
        ),
        (
            "net_admin",
            "guard: not checked: cannot create a scratch veth pair",
            "Operation not permitted, EPERM",
            "device",
        ),
        (
            "sys_admin",
            "guard: not checked: cannot create a private network and mount namespace",
            "Operation not permitted, EPERM",
            "sandbox",
        ),
    ];
    for (cap, guard, said, step) in cases {
        let wrapper = format!("setpriv --bounding-set -{cap} --inh-caps -{cap}");
        let run = check(&ns, "", &wrapper, &[]);
        let text = &run.stdout;
        assert_eq!(run.code, Some(1), "without {cap}: {text}");
        let guard_line = run.lines()[1];
        assert!(
            guard_line.starts_with(guard) && guard_line.contains(said),
            "without {cap}: {text}"
        );
        let name = format!("CAP_{}", cap.to_uppercase());
        assert!(
            run.lines()
                .iter()
                .any(|l| l.starts_with("the guard could not be checked (")
                    && l.contains(&format!(
                        "this process lacks {name}: run multihome check as root"
                    ))),
            "without {cap}: {text}"
        );
        assert!(!text.contains("no findings"), "without {cap}: {text}");

        let json = check(&ns, "", &wrapper, &["--json"]).json();
        assert_eq!(json["probe"][step]["status"], "failed", "{json:#}");
        assert_eq!(json["ok"], false);
    }
    let json = check(
        &ns,
        "",
        "setpriv --bounding-set -perfmon --inh-caps -perfmon",
        &["--json"],
    )
    .json();
    assert_eq!(json["probe"]["load"]["kind"], "verifier", "{json:#}");
    assert_eq!(json["probe"]["load"]["errno"], "EACCES", "{json:#}");
    for later in ["tcx", "clsact", "auto", "redirect"] {
        assert_eq!(json["probe"][later]["status"], "skipped", "{json:#}");
    }
}

#[test]
fn without_uplinks_check_looks_at_the_host_and_only_at_it() {
    let ns = host();
    let peer = Netns::new("chkp").unwrap();
    veth(&ns, "wan1", &peer, "lan").unwrap();
    ns.sh("sysctl -qw net.ipv4.conf.wan1.rp_filter=1").unwrap();
    let run = check(&ns, "", "", &[]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert_eq!(
        run.lines()[3],
        "uplinks: none known (none given, none in MULTIHOME_UPLINKS or /etc/default/multihome, \
         nothing owned): checked the host only"
    );
    assert!(run.has_line(GUARD_WORKS), "{}", run.stdout);
    assert!(
        !run.has_line("wan1:"),
        "wan1 is no known uplink: {}",
        run.stdout
    );

    // A host-wide finding is found without uplinks...
    ns.run(&["ip", "rule", "add", "priority", "1000", "lookup", "100"])
        .unwrap();
    let run = check(&ns, "", "", &[]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.has_line(
            "a rule of another owner (protocol 0) sits at priority 1000: choose another \
             --priority for multihome, or move that rule"
        ),
        "{}",
        run.stdout
    );
    // ...and an uplink's once it is named.
    let run = check(&ns, "", "", &["wan1"]);
    assert!(run.has_line("uplinks: wan1"), "{}", run.stdout);
    assert!(
        run.has_line("wan1: rp_filter is 1 (strict)"),
        "{}",
        run.stdout
    );
}

/// Everything of the namespace the check ran in that the probe could have left: devices,
/// qdiscs and filters, rules, routes. (Its own namespaces have no name and nothing but its
/// thread holds them: once no process of it runs, they are gone.)
fn snapshot(ns: &Netns) -> String {
    ns.sh(
        "ip -d link show; tc qdisc show; tc filter show dev wan1 egress; ip rule; ip -6 rule; \
         ip route show table all; ip -6 route show table all",
    )
    .unwrap()
}

#[test]
fn nothing_is_left_behind_even_when_check_is_killed() {
    let _tree = probe_tree();
    let ns = host();
    let peer = Netns::new("chkl").unwrap();
    veth(&ns, "wan1", &peer, "lan").unwrap();
    // No IPv6 link-local address arriving half-way through (after duplicate detection).
    ns.sh("sysctl -qw net.ipv6.conf.wan1.disable_ipv6=1")
        .unwrap();
    let before = snapshot(&ns);
    let run = check(&ns, "", "", &["wan1"]);
    assert!(run.has_line(GUARD_WORKS), "{}", run.stdout);
    assert_eq!(
        run.bpffs_after, run.bpffs_before,
        "the check pinned something"
    );
    assert_eq!(snapshot(&ns), before);
    assert!(!before.contains("mhprobe"));
    assert!(
        !std::fs::read_dir("/sys/fs/bpf")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("probe")),
        "the host's bpffs has a pin of the probe"
    );
    // Killed at various points of the probe (from when its thread is in a namespace of its
    // own): whatever it had made goes with that thread's namespaces.
    let mut killed = Vec::new();
    for delay_ms in [0, 10, 30, 100] {
        let script = "mount -t bpf bpf /sys/fs/bpf
             echo BEFORE >&2; find /sys/fs/bpf -mindepth 1 >&2; echo CHECK >&2
             \"$@\" >/dev/null & pid=$!; echo $pid; wait $pid 2>/dev/null; echo $?
             echo AFTER >&2; find /sys/fs/bpf -mindepth 1 >&2";
        let mut child = ns
            .command("unshare")
            .args(["-m", "sh", "-c", script, "sh"])
            .arg(multihome_bin())
            .args(["check", "wan1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut pid = String::new();
        stdout.read_line(&mut pid).unwrap();
        let pid: i32 = pid.trim().parse().unwrap();
        wait_for(
            "the probe's thread to be in a network namespace of its own",
            Duration::from_secs(10),
            || probing(pid, &ns).then_some(()),
            || {
                format!(
                    "threads of {pid}: {:?}",
                    fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count())
                )
            },
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: plain kill(2) of the check, our grandchild, which its shell has not reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut status = String::new();
        stdout.read_to_string(&mut status).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            status.trim(),
            "137",
            "killed after {delay_ms} ms: not by the kill"
        );
        let run = run_of(out);
        assert_eq!(
            run.bpffs_after, run.bpffs_before,
            "killed after {delay_ms} ms: pins left"
        );
        assert_eq!(snapshot(&ns), before, "killed after {delay_ms} ms");
        killed.push(pid);
    }
    // A killed probe may leave its empty cgroup (the tree is the host's): the next one
    // removes it.
    assert!(check(&ns, "", "", &["wan1"]).has_line(GUARD_WORKS));
    let left = probe_cgroups();
    for pid in killed {
        assert!(
            !left.contains(&format!("multihome-probe-{pid}")),
            "{left:?}"
        );
    }
}

/// Whether a thread of `pid` is in a network namespace other than `ns`: the probe's.
fn probing(pid: i32, ns: &Netns) -> bool {
    let theirs = fs::metadata(ns.path()).unwrap().ino();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|task| fs::metadata(task.path().join("ns/net")).is_ok_and(|m| m.ino() != theirs))
}

#[test]
fn systemd_networkd_is_reported_where_it_runs_and_only_there() {
    let bed = Testbed::up(Client::Networkd).unwrap();
    let elsewhere = host();
    // The check's own /etc/systemd: networkd's defaults, then the settings the fix names.
    let defaults = "mount -t tmpfs none /etc/systemd";
    let fixed = "mount -t tmpfs none /etc/systemd && printf '[Network]\\n\
                 ManageForeignRoutingPolicyRules=no\\nManageForeignRoutes=no\\n' \
                 > /etc/systemd/networkd.conf";
    let networkd = "systemd-networkd deletes foreign rules and routes on reconfigure";
    let run = check(&bed.host, defaults, "", &["wan1", "wan2"]);
    assert!(run.has_line(networkd), "{}", run.stdout);
    assert!(run.has_line("uplinks: wan1 wan2"), "{}", run.stdout);
    let run = check(&bed.host, fixed, "", &["wan1", "wan2"]);
    assert!(!run.has_line(networkd), "{}", run.stdout);
    let run = check(&elsewhere, defaults, "", &[]);
    assert!(
        !run.has_line(networkd),
        "not in this namespace: {}",
        run.stdout
    );
}
