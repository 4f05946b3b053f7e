//! The daemon's own life outside systemd: signals from start-up on, reload, the one-daemon
//! claim against an unprivileged user, the hand-over of a restart (`--keep-on-exit`, then a new
//! start) and of an upgrade from an older map layout, what a bare SIGTERM does, the boot order
//! (the daemon before its uplinks, then DHCP), and what a crashed daemon leaves to
//! `cleanup --orphaned`. Wherever traffic runs, a stream from wan2's address is counted at both
//! routers: none of it may reach router A. What needs systemd as PID 1 (how a restart job is
//! told from a stop, `systemctl reload`) runs in the VM tier; here `--keep-on-exit` is what a
//! restart job decides, driven by the operator's own flag rather than a faked systemd.
//!
//! `cargo test --package multihome-tests --test privileged lifecycle:: -- --nocapture` prints
//! the hand-over times.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{tc::TcAttachType, SchedClassifier};
use multihome_tests::bed::*;
use multihome_tests::daemon::{multihome_bin, multihome_ok, wait_for, Daemon};
use multihome_tests::guard::pose_as_an_older_layout;
use multihome_tests::netns::{Netns, Process};
use multihome_tests::traffic::{arrivals, count_arrivals, Sender};

const WAIT: Duration = Duration::from_secs(10);

/// Signal numbers as /proc/PID/status masks them.
fn signal_masks(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = |key: &str| {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    (mask("SigIgn:"), mask("SigCgt:"))
}

fn bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) of a process this test started.
    unsafe { libc::kill(pid as i32, signal) };
}

/// The bed with both routers counting wan2's packets and the daemon converged.
fn counted_bed() -> Bed {
    let bed = bed();
    count_arrivals(&bed.a);
    count_arrivals(&bed.b);
    bed
}

/// Asserts that the stream went out and that none of it reached router A.
fn none_misrouted(bed: &Bed, sender: Sender, what: &str) {
    std::thread::sleep(Duration::from_millis(200));
    let sent = sender.sent();
    drop(sender);
    std::thread::sleep(Duration::from_millis(50));
    let (wrong, right) = (arrivals(&bed.a), arrivals(&bed.b));
    println!(
        "lifecycle: {what}: sent {sent}, at router B {right}, at router A (misrouted) {wrong}"
    );
    assert_eq!(
        wrong, 0,
        "{what}: packets from wan2's address reached router A"
    );
    assert!(
        sent > 100 && right > 0,
        "{what}: no traffic ({sent} sent, {right} at B)"
    );
}

/// Waits until every guarded device of the bed is hooked by TCX (auto mode moves them there in
/// the background).
fn wait_tcx(host: &Netns, devices: &[&str]) {
    for device in devices {
        wait_for(
            &format!("the guard on {device} moved to TCX"),
            WAIT,
            || {
                host.enter(|| SchedClassifier::query_tcx(device, TcAttachType::Egress))
                    .ok()
                    .filter(|(_, programs)| !programs.is_empty())
                    .map(drop)
            },
            String::new,
        );
    }
}

/// Each pinned TCX link's (link id, program id), by pin name.
fn links(pin_dir: &Path) -> BTreeMap<String, (u32, u32)> {
    std::fs::read_dir(pin_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .map(|e| {
            let info = FdLink::from(PinnedLink::from_pin(e.path()).unwrap())
                .info()
                .unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (info.id(), info.program_id()),
            )
        })
        .collect()
}

#[test]
fn signals_are_handled_from_start_up_on_and_only_term_and_int_stop_it() {
    let bed = bed();
    let bin = multihome_bin();
    let pins = bed.host.pin_dir();
    let log = std::env::temp_dir().join(format!("{}-signals.log", bed.host.name()));
    let mut daemon = bed
        .host
        .spawn_logged(
            &[
                bin.to_str().unwrap(),
                "--log-level",
                "debug",
                "run",
                "--pin-dir",
                pins.to_str().unwrap(),
                "wan1",
                "wan2",
            ],
            &log,
        )
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    // The handlers are installed first thing (nothing runs before a process's main but the
    // loader and the runtime): from then on SIGHUP, through the claim, the dump and the guard's
    // verification, until it runs. Its default action would end it.
    wait_for(
        "the handlers installed",
        WAIT,
        || (signal_masks(daemon.pid()).1 & bit(libc::SIGHUP) != 0).then_some(()),
        read,
    );
    let started = Instant::now();
    let mut sent = 0;
    while !read().contains("running:") {
        assert!(
            daemon.running(),
            "a SIGHUP during start-up ended it:\n{}",
            read()
        );
        assert!(
            started.elapsed() < WAIT,
            "not running within {WAIT:?}:\n{}",
            read()
        );
        kill(daemon.pid(), libc::SIGHUP);
        sent += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(sent > 0);
    assert!(!read().contains("cannot load"), "{}", read());
    let (ignored, caught) = signal_masks(daemon.pid());
    assert_ne!(ignored & bit(libc::SIGPIPE), 0, "SIGPIPE not ignored");
    for (name, signal) in [
        ("SIGHUP", libc::SIGHUP),
        ("SIGINT", libc::SIGINT),
        ("SIGTERM", libc::SIGTERM),
        ("SIGUSR1", libc::SIGUSR1),
        ("SIGUSR2", libc::SIGUSR2),
    ] {
        assert_ne!(caught & bit(signal), 0, "{name} not handled");
    }
    for signal in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP, libc::SIGPIPE] {
        kill(daemon.pid(), signal);
    }
    wait_for(
        "the signals' log lines",
        WAIT,
        || {
            let text = read();
            (text.contains("SIGUSR1 ignored")
                && text.contains("SIGUSR2 ignored")
                && text.matches("reloaded: ").count() >= 2)
                .then_some(())
        },
        read,
    );
    assert!(daemon.running(), "{}", read());
    assert_eq!(our_rules(&bed.host), normalise(RULES_BOTH));
    // Ctrl-C in a terminal: outside systemd that removes everything.
    let status = daemon.stop(libc::SIGINT).unwrap();
    assert!(status.success(), "{status}: {}", read());
    assert!(
        read().contains("stopping (SIGINT): stopped outside systemd"),
        "{}",
        read()
    );
    assert_eq!(everything_owned(&bed.host), "");
    assert!(!pins.exists());
    let _ = std::fs::remove_file(log);
}

#[test]
fn reload_restores_what_no_event_reports_and_answers_with_each_uplinks_health() {
    let bed = counted_bed();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    let sender = Sender::start(&bed.host);
    // A pin removed by hand tells nobody; without a watchdog only a reload notices.
    let pin = daemon.pin_dir().join("SRC_V6");
    std::fs::remove_file(&pin).unwrap();
    let reload = || {
        bed.host
            .command(multihome_bin().to_str().unwrap())
            .arg("reload")
            .output()
            .unwrap()
    };
    let out = reload();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("reloaded: "), "{text}");
    assert!(
        text.contains("\nwan1: ok\n") && text.contains("\nwan2: ok\n"),
        "{text}"
    );
    assert!(pin.exists(), "the reload did not pin the map again");
    assert!(daemon.log().contains("was removed: pinned again"));
    for _ in 0..20 {
        assert!(reload().status.success());
    }
    // SIGHUP does the same, without anyone waiting for it.
    let before = daemon.log().matches("reloaded: ").count();
    for _ in 0..20 {
        kill(daemon.pid(), libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for(
        "the SIGHUPs' reloads",
        WAIT,
        || (daemon.log().matches("reloaded: ").count() > before).then_some(()),
        || daemon.log(),
    );
    none_misrouted(&bed, sender, "21 reloads and 20 SIGHUPs");
    assert!(daemon.stop().success(), "a SIGHUP ended it");
}

#[test]
fn the_claim_cannot_be_taken_by_an_unprivileged_user_and_a_refusal_names_the_holder() {
    let (host, _router) = one_uplink();
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    // Releases before this one claimed @multihome/77, which anyone can bind: a squatter that
    // keeps listening (socat forks a child for each connection) is ignored with a warning.
    let mut squat = nobody.to_vec();
    squat.extend(["socat", "ABSTRACT-LISTEN:multihome/77,fork", "/dev/null"]);
    let squatter = host.spawn(&squat).unwrap();
    wait_for_old_claim(&host, "the squatter to listen");
    let daemon = Daemon::start(&host, &["wan1"]).unwrap();
    assert!(
        daemon
            .log()
            .contains("(socat, uid 65534), which is not a multihome daemon: ignored"),
        "{}",
        daemon.log()
    );

    // The claim itself: a file only root can open, in a directory only root can write to.
    let dir = host.runtime_dir();
    let lock: PathBuf = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "lock"))
        .expect("a lock file");
    let meta = std::fs::metadata(&lock).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.mode() & 0o022, 0);
    let as_nobody = |argv: &[&str]| {
        let mut cmd = nobody.to_vec();
        cmd.extend_from_slice(argv);
        host.run(&cmd)
    };
    let lock_arg = lock.to_str().unwrap();
    assert!(as_nobody(&["flock", "-n", "-s", lock_arg, "true"]).is_err());
    assert!(as_nobody(&["cat", lock_arg]).is_err());
    let planted = dir.join("planted");
    assert!(as_nobody(&["touch", planted.to_str().unwrap()]).is_err());

    // A second daemon is refused, naming the first.
    let other_pins = format!("{}-second", host.pin_dir().display());
    let out = host
        .command(multihome_bin().to_str().unwrap())
        .args(["run", "--pin-dir", &other_pins, "wan1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let named = format!(
        "already running in this network namespace: pid {} (multihome, uid 0)",
        daemon.pid()
    );
    assert!(stderr.contains(&named), "{stderr}");
    assert!(!Path::new(&other_pins).exists());
    drop(squatter);
    assert!(daemon.stop().success());
}

#[test]
fn an_older_daemon_holding_the_old_claim_as_root_is_refused() {
    let (host, _router) = one_uplink();
    // What an older release's daemon holds: the abstract socket, bound by root.
    let older: Process = host
        .spawn(&["socat", "ABSTRACT-LISTEN:multihome/77,fork", "/dev/null"])
        .unwrap();
    wait_for_old_claim(&host, "the older claim");
    let out = host
        .command(multihome_bin().to_str().unwrap())
        .args(["run", "--pin-dir", host.pin_dir().to_str().unwrap(), "wan1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already running") && stderr.contains("holding @multihome/77"),
        "{stderr}"
    );
    assert_eq!(everything_owned(&host), "");
    drop(older);
}

/// What a restart under systemd does, by hand: the daemon stops leaving everything
/// (--keep-on-exit stands in for the restart job, which only systemd gives), the next one
/// adopts it and replaces the program in place: the same links, the new program, no packet
/// through the other uplink.
#[test]
fn a_restart_hands_over_in_place_with_no_packet_misrouted() {
    let bed = counted_bed();
    let args = ["--keep-on-exit", "wan1", "wan2"];
    let mut daemon = Daemon::start(&bed.host, &args).unwrap();
    let pin_dir = daemon.pin_dir().to_path_buf();
    wait_rules(&bed.host, RULES_BOTH);
    wait_tcx(&bed.host, &["wan1", "wan2"]);
    let before = links(&pin_dir);
    assert_eq!(before.len(), 2, "{before:?}");
    let sender = Sender::start(&bed.host);
    let mut slowest = Duration::ZERO;
    let mut program = before.values().next().unwrap().1;
    for _ in 0..10 {
        let stopped = Instant::now();
        assert!(daemon.stop().success());
        assert_eq!(
            our_rules(&bed.host),
            normalise(RULES_BOTH),
            "the stop removed rules"
        );
        daemon = Daemon::start_with_pins(&bed.host, &args, &pin_dir).unwrap();
        let now = wait_for(
            "the new program on every link",
            WAIT,
            || {
                let now = links(&pin_dir);
                now.values().all(|&(_, p)| p != program).then_some(now)
            },
            || format!("{:?}", links(&pin_dir)),
        );
        slowest = slowest.max(stopped.elapsed());
        let ids: Vec<u32> = now.values().map(|&(link, _)| link).collect();
        let kept: Vec<u32> = before.values().map(|&(link, _)| link).collect();
        assert_eq!(ids, kept, "the links were made anew, not updated in place");
        program = now.values().next().unwrap().1;
    }
    println!(
        "lifecycle: restart hand-over (SIGTERM to the new program on every link), slowest of 10: {:.1} ms",
        slowest.as_secs_f64() * 1e3
    );
    none_misrouted(&bed, sender, "10 restarts");
    assert!(daemon.stop().success());
}

/// The same with the guard on clsact: the filter is replaced at its own priority and handle.
#[test]
fn a_restart_replaces_the_clsact_filter_in_place() {
    let bed = counted_bed();
    let args = ["--keep-on-exit", "--attach", "clsact", "wan1", "wan2"];
    let mut daemon = Daemon::start(&bed.host, &args).unwrap();
    let pin_dir = daemon.pin_dir().to_path_buf();
    wait_rules(&bed.host, RULES_BOTH);
    let filter = || {
        let out = bed
            .host
            .run(&["tc", "filter", "show", "dev", "wan2", "egress"])
            .unwrap();
        let line = out
            .lines()
            .find(|l| l.contains("multihome_guard"))
            .unwrap_or_else(|| panic!("no guard filter: {out}"))
            .to_owned();
        let id = line
            .split_whitespace()
            .skip_while(|w| *w != "id")
            .nth(1)
            .unwrap()
            .to_owned();
        (line.replace(&id, "ID"), id)
    };
    let (shape, first) = filter();
    let sender = Sender::start(&bed.host);
    for _ in 0..5 {
        assert!(daemon.stop().success());
        daemon = Daemon::start_with_pins(&bed.host, &args, &pin_dir).unwrap();
    }
    let (now, last) = filter();
    assert_eq!(now, shape, "another priority or handle");
    assert_ne!(last, first, "the filter still runs the first program");
    none_misrouted(&bed, sender, "5 restarts on clsact");
    assert!(daemon.stop().success());
}

/// Auto mode hooks a device by clsact first and moves it to TCX in the background: from a cold
/// start the clsact qdisc it added goes with the move; from a daemon that ran on clsact (an older
/// kernel's way, or --attach clsact) the filters are replaced in place, then moved, under
/// traffic, and the qdisc it did not add stays. `status` tells the kind at every step.
#[test]
fn auto_mode_moves_devices_from_clsact_to_tcx_with_no_packet_misrouted() {
    let bed = counted_bed();
    let clsact_qdisc = |dev: &str| {
        bed.host
            .run(&["tc", "qdisc", "show", "dev", dev])
            .unwrap()
            .contains("clsact")
    };
    let daemon = Daemon::start(&bed.host, &["--keep-on-exit", "wan1", "wan2"]).unwrap();
    let pin_dir = daemon.pin_dir().to_path_buf();
    wait_tcx(&bed.host, &["wan1", "wan2"]);
    wait_for(
        "the qdiscs the moves made removed",
        WAIT,
        || (!clsact_qdisc("wan1") && !clsact_qdisc("wan2")).then_some(()),
        || daemon.log(),
    );
    assert!(daemon.stop().success());

    let on_clsact = Daemon::start_with_pins(
        &bed.host,
        &["--keep-on-exit", "--attach", "clsact", "wan1", "wan2"],
        &pin_dir,
    )
    .unwrap();
    let kinds = || {
        bed.host
            .enter(|| multihome::guard::attachments(&pin_dir))
            .into_values()
            .map(|kind| kind.to_string())
            .collect::<Vec<_>>()
    };
    wait_for(
        "both devices on clsact",
        WAIT,
        || (kinds() == ["clsact", "clsact"]).then_some(()),
        || format!("{:?}", kinds()),
    );
    assert!(on_clsact.stop().success());
    let sender = Sender::start(&bed.host);
    std::thread::sleep(Duration::from_millis(200));
    let daemon = Daemon::start_with_pins(&bed.host, &["wan1", "wan2"], &pin_dir).unwrap();
    wait_for(
        "both devices on TCX",
        WAIT,
        || (kinds() == ["tcx", "tcx"]).then_some(()),
        || format!("{:?}\n{}", kinds(), daemon.log()),
    );
    let filters = bed
        .host
        .run(&["tc", "filter", "show", "dev", "wan2", "egress"])
        .unwrap();
    assert!(!filters.contains("multihome_guard"), "{filters}");
    assert!(
        clsact_qdisc("wan2"),
        "the qdisc someone else added was removed"
    );
    none_misrouted(&bed, sender, "moves from clsact to TCX");
    assert!(daemon.stop().success());
}

/// An upgrade from a release whose SRC_V4 had another capacity: the new daemon renames the old
/// map aside (the old program keeps using it), fills its own, replaces the program on every
/// link in place, then unpins the old map. The stream runs throughout.
#[test]
fn an_older_map_layout_is_migrated_with_no_packet_misrouted() {
    let bed = counted_bed();
    let args = ["--keep-on-exit", "wan1", "wan2"];
    let daemon = Daemon::start(&bed.host, &args).unwrap();
    let pin_dir = daemon.pin_dir().to_path_buf();
    wait_rules(&bed.host, RULES_BOTH);
    wait_tcx(&bed.host, &["wan1", "wan2"]);
    assert!(daemon.stop().success());
    let before = links(&pin_dir);
    let older = bed
        .host
        .enter(|| pose_as_an_older_layout(&pin_dir, 1024))
        .unwrap();
    assert!(links(&pin_dir).values().all(|&(_, p)| p == older));
    let sender = Sender::start(&bed.host);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let daemon = Daemon::start_with_pins(&bed.host, &args, &pin_dir).unwrap();
    let aside = pin_dir.join("SRC_V4:old");
    wait_for(
        "the hand-over done",
        WAIT,
        || (links(&pin_dir).values().all(|&(_, p)| p != older) && !aside.exists()).then_some(()),
        || daemon.log(),
    );
    println!(
        "lifecycle: layout migration: start to the new program on every link and the old map \
         unpinned: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let log = daemon.log();
    assert!(
        log.contains("renamed to") && log.contains("SRC_V4:old"),
        "{log}"
    );
    let after = links(&pin_dir);
    let ids = |m: &BTreeMap<String, (u32, u32)>| m.values().map(|&(l, _)| l).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "links made anew");
    // The program now running uses the map pinned at SRC_V4, of this release's capacity.
    let map = aya::maps::MapInfo::from_pin(pin_dir.join("SRC_V4")).unwrap();
    assert_ne!(map.max_entries(), 1024);
    let running = after.values().next().unwrap().1;
    let program = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == running)
        .expect("the running program");
    let maps = program.map_ids().unwrap().unwrap_or_default();
    assert!(
        maps.contains(&map.id()),
        "{maps:?} lacks SRC_V4's {}",
        map.id()
    );
    none_misrouted(&bed, sender, "upgrade from an older map layout");
    assert!(daemon.stop().success());
}

/// A daemon killed outright leaves its objects and its record (state running, lock released):
/// `cleanup --orphaned` (what the unit's OnFailure= runs) removes them, and leaves alone what a
/// live daemon holds and what one kept on purpose.
#[test]
fn cleanup_orphaned_removes_only_what_nobody_looks_after() {
    let bed = bed();
    let orphaned = || multihome_ok(&bed.host, &["cleanup", "--orphaned"]);
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    let pin_dir = daemon.pin_dir().to_path_buf();
    assert!(orphaned().starts_with("nothing orphaned"));
    assert_eq!(
        our_rules(&bed.host),
        normalise(RULES_BOTH),
        "a live daemon's rules went"
    );
    daemon.kill();
    let text = orphaned();
    assert!(
        text.contains("ended without removing what it owned"),
        "{text}"
    );
    assert!(text.contains("removed ipv4 rule"), "{text}");
    assert_eq!(everything_owned(&bed.host), "");
    assert!(!pin_dir.exists());
    assert!(orphaned().starts_with("nothing orphaned"), "twice");

    let daemon = Daemon::start(&bed.host, &["--keep-on-exit", "wan1", "wan2"]).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    assert!(daemon.stop().success());
    assert!(orphaned().starts_with("nothing orphaned"));
    assert_eq!(
        our_rules(&bed.host),
        normalise(RULES_BOTH),
        "kept on purpose, and removed"
    );
}

/// The idle daemon (no uplinks configured) follows the same signal rules, answers reloads, and
/// removes what an earlier instance handed it: the operator emptied MULTIHOME_UPLINKS and
/// restarted.
#[test]
fn the_idle_daemon_keeps_the_signal_rules_and_takes_nothing_over() {
    let bed = bed();
    let daemon = Daemon::start(&bed.host, &["--keep-on-exit", "wan1", "wan2"]).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    let pin_dir = daemon.pin_dir().to_path_buf();
    assert!(daemon.stop().success());
    let log = std::env::temp_dir().join(format!("{}-idle.log", bed.host.name()));
    let bin = multihome_bin();
    let mut idle = bed
        .host
        .spawn_logged(
            &[
                "env",
                "-u",
                "MULTIHOME_UPLINKS",
                bin.to_str().unwrap(),
                "run",
                "--idle-without-uplinks",
                "--pin-dir",
                pin_dir.to_str().unwrap(),
            ],
            &log,
        )
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(
        "the idle daemon to clean up and idle",
        WAIT,
        || read().contains("idle until then").then_some(()),
        read,
    );
    assert_eq!(everything_owned(&bed.host), "", "{}", read());
    assert!(!pin_dir.exists());
    assert!(read().contains("(an earlier instance's; nothing is configured now)"));
    for signal in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        kill(idle.pid(), signal);
    }
    let out = bed
        .host
        .command(bin.to_str().unwrap())
        .arg("reload")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("reloaded: no uplinks configured"),
        "{text}"
    );
    assert!(idle.running(), "{}", read());
    assert!(idle.stop(libc::SIGTERM).unwrap().success());
    let _ = std::fs::remove_file(log);
}

/// Boot: the unit starts before networking, so the daemon runs before its uplinks exist; the
/// devices appear, then dhclient's first leases. The first lease of wan2 must be covered (its
/// `from` rule announced, which the diff does after the guard's entry) as fast as a later
/// renumbering, and a stream from that address, started 5 ms after it appeared (as the
/// misroute bench does after a renumbering), reaches router B only.
#[test]
fn at_boot_the_first_lease_is_covered_as_fast_as_a_later_change() {
    use multihome_tests::bench::watch::{Note, Watcher};
    use multihome_tests::testbed::probe::{echo_addr, ECHO_PORT};
    use multihome_tests::testbed::{Client, Isp, Testbed};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    // Router B's pool (testbed::Lease::initial) and the addresses it is renumbered to.
    let from_b =
        |addr: IpAddr| matches!(addr, IpAddr::V4(a) if a.octets()[3] >= 150 && a.octets()[2] == 0);
    let (mut bed, (daemon, watcher, sender)) = Testbed::boot(Client::Dhclient, |host| {
        assert!(!host.has_link("wan2"));
        let daemon = Daemon::start(host, &["wan1", "wan2"])?;
        let follower = Watcher::start(host)?;
        let sender = Sender::follow(
            host,
            follower,
            from_b,
            SocketAddr::new(echo_addr(false), ECHO_PORT),
            Duration::from_millis(5),
        );
        Ok((daemon, Watcher::start(host)?, sender))
    })
    .unwrap();
    let first = bed.v4(Isp::B);
    // Covered: the latency from the address's notification to its rule's.
    let covered = |watcher: &Watcher, addr: IpAddr| -> Duration {
        let deadline = Instant::now() + WAIT;
        let added = watcher
            .wait(
                deadline,
                |n| matches!(n, Note::Addr { added: true, addr: a, .. } if *a == addr),
            )
            .unwrap_or_else(|| panic!("no notification of {addr}"));
        let rule = watcher
            .wait(
                deadline,
                |n| matches!(n, Note::Rule { added: true, src: Some(s), .. } if *s == addr),
            )
            .unwrap_or_else(|| panic!("no rule from {addr}:\n{}", daemon.log()));
        rule.saturating_duration_since(added)
    };
    let at_boot = covered(&watcher, first);
    assert!(
        Testbed::guard_entries(daemon.pin_dir())
            .iter()
            .any(|(a, _)| *a == first),
        "no guard entry for {first}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let sent = sender.sent();
    drop(sender);
    std::thread::sleep(Duration::from_millis(100));
    let (wrong, right) = (
        bed.a.forwarded_udp().unwrap(),
        bed.b.forwarded_udp().unwrap(),
    );
    println!(
        "lifecycle: boot: stream from {first}: sent {sent}, at router B {right}, at router A \
         (misrouted) {wrong}"
    );
    assert_eq!(wrong, 0, "packets from wan2's first lease reached router A");
    assert!(
        sent > 100 && right > 0,
        "no traffic ({sent} sent, {right} at B)"
    );

    let mut later = Vec::new();
    for host in [200u8, 201] {
        let addr = Ipv4Addr::new(192, 168, 0, host);
        watcher.drain();
        bed.renumber(Isp::B, addr).unwrap();
        later.push(covered(&watcher, IpAddr::V4(addr)));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let slowest = later.iter().copied().max().unwrap();
    println!(
        "lifecycle: boot: first lease covered {:.2} ms after its address; renumberings: {}",
        ms(at_boot),
        later
            .iter()
            .map(|d| format!("{:.2} ms", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Same path, same cost; the slack is for a loaded machine's scheduling.
    assert!(
        at_boot <= slowest * 3 + Duration::from_millis(5),
        "the first lease took {at_boot:?}, later changes {later:?}"
    );
    assert!(daemon.stop().success());
}

/// A bare SIGTERM outside systemd (`kill`, a terminal's supervisor) removes everything the
/// daemon installed, as Ctrl-C does: nobody would watch what it left. Under systemd
/// ($INVOCATION_ID set) a stop systemd does not explain (here nothing answers on PID 1's
/// private socket or the system bus, or the test's own process has no job) removes too.
#[test]
fn a_bare_sigterm_removes_everything_and_so_does_an_unexplained_stop_under_systemd() {
    let bed = bed();
    for (wrapper, said) in [
        (
            &[][..],
            "stopping (SIGTERM): stopped outside systemd: removing",
        ),
        (
            &["env", "INVOCATION_ID=0123456789abcdef0123456789abcdef"][..],
            "stopping (SIGTERM): ",
        ),
    ] {
        let daemon = Daemon::start_wrapped(&bed.host, wrapper, &["wan1", "wan2"]).unwrap();
        let pin_dir = daemon.pin_dir().to_path_buf();
        wait_rules(&bed.host, RULES_BOTH);
        assert!(pin_dir.exists());
        let (status, log) = daemon.stop_logged();
        assert!(status.success(), "{status}: {log}");
        assert!(
            log.contains(said) && log.contains("removing what multihome installed"),
            "{log}"
        );
        assert_eq!(everything_owned(&bed.host), "", "{log}");
        assert!(!pin_dir.exists(), "{log}");
    }
}

/// Waits until something listens on the old claim, the abstract socket @multihome/77.
fn wait_for_old_claim(host: &Netns, what: &str) {
    wait_for(
        what,
        WAIT,
        || {
            host.run(&["ss", "-xlH", "src", "@multihome/77"])
                .ok()
                .filter(|out| !out.trim().is_empty())
                .map(drop)
        },
        String::new,
    );
}
