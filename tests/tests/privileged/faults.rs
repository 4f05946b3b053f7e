//! Faults against a running `multihome run`: what an admin, another network manager, a crash
//! or a storm of changes does to a host. Each test injects a fault while a sender bound to
//! wan2's address sends UDP towards the internet, and asserts that multihome repairs its state
//! (the time is measured from the injection until the rules, tables and map are back) and that
//! no packet from wan2's address reached router A, the other uplink's router.
//!
//! Measured numbers are printed: `cargo test --package multihome-tests --test privileged faults::
//! -- --nocapture` shows them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{tc::TcAttachType, SchedClassifier};
use multihome_tests::bed::*;
use multihome_tests::daemon::{multihome_bin, wait_for, Daemon};
use multihome_tests::netns::Netns;
use multihome_tests::traffic::{arrivals, count_arrivals, stop_counting, Sender, SOURCE};

/// How long a repair may take before the test fails.
const REPAIR: Duration = Duration::from_secs(5);

/// Whether a program is attached to `ifname`'s TCX egress hook (bpftool 7.1 does not list TCX).
fn tcx_attached(host: &Netns, ifname: &str) -> bool {
    host.enter(|| SchedClassifier::query_tcx(ifname, TcAttachType::Egress))
        .map(|(_, programs)| !programs.is_empty())
        .unwrap_or_else(|e| panic!("querying the TCX programs of {ifname}: {e}"))
}

/// The pinned attachments as the daemon sees them (ifindexes of the host namespace).
fn attachments(host: &Netns, pin_dir: &std::path::Path) -> BTreeSet<u32> {
    host.enter(|| multihome::guard::attachments(pin_dir))
        .into_keys()
        .collect()
}

/// The bed with the daemon running and converged, arrivals counted at both routers and the
/// sender going.
struct Running {
    bed: Bed,
    daemon: Option<Daemon>,
    /// What multihome owns when converged: rules and routes (sorted lines) and map entries.
    baseline: (Vec<String>, BTreeSet<(IpAddr, u32)>),
    sender: Option<Sender>,
}

fn running(extra: &[&str]) -> Running {
    running_wrapped(&[], extra)
}

/// As under systemd with `WatchdogSec=2s`: the daemon wakes every second for the watchdog, and
/// audits the guard's pins and links then (nothing else would tell it they are gone).
fn running_with_watchdog() -> Running {
    let run = running_wrapped(&["env", "WATCHDOG_USEC=2000000"], &[]);
    // The guard hooks by clsact first and moves to TCX in the background.
    for ifname in ["wan1", "wan2"] {
        wait_for(
            &format!("the guard on {ifname} moved to TCX"),
            REPAIR,
            || tcx_attached(run.host(), ifname).then_some(()),
            || run.daemon().log(),
        );
    }
    run
}

fn running_wrapped(wrapper: &[&str], extra: &[&str]) -> Running {
    let bed = bed();
    count_arrivals(&bed.a);
    count_arrivals(&bed.b);
    let mut args = extra.to_vec();
    args.extend(["wan1", "wan2"]);
    let daemon = Daemon::start_wrapped(&bed.host, wrapper, &args).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    wait_table(&bed.host, 1002, TABLE_1002);
    let baseline = (owned_lines(&bed.host), map_entries(daemon.pin_dir()));
    assert_eq!(baseline.1.len(), 4, "map entries: {:?}", baseline.1);
    let sender = Sender::start(&bed.host);
    Running {
        bed,
        daemon: Some(daemon),
        baseline,
        sender: Some(sender),
    }
}

/// Every rule and route with protocol 77, one normalised line each, sorted (re-added objects
/// may come back in another order).
fn owned_lines(host: &Netns) -> Vec<String> {
    let mut lines: Vec<String> = everything_owned(host).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

impl Running {
    fn host(&self) -> &Netns {
        &self.bed.host
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    fn converged(&self) -> bool {
        owned_lines(self.host()) == self.baseline.0
            && map_entries(self.daemon().pin_dir()) == self.baseline.1
    }

    /// Runs `fault` (a shell script in the host namespace) and returns how long it took from
    /// the end of the injection until multihome's state is the baseline again, polling as fast
    /// as `ip` answers.
    fn inject(&self, what: &str, fault: &str) -> Duration {
        self.host().sh(fault).unwrap();
        let injected = Instant::now();
        self.wait_converged(what);
        injected.elapsed()
    }

    fn wait_converged(&self, what: &str) {
        wait_for(
            &format!("repair after {what}"),
            REPAIR,
            || self.converged().then_some(()),
            || {
                format!(
                    "owned: {:#?}\nwanted: {:#?}\nmap: {:?}",
                    owned_lines(self.host()),
                    self.baseline.0,
                    map_entries(self.daemon().pin_dir())
                )
            },
        );
    }

    /// Lets the sender run a little longer, stops it, and asserts that packets went out and
    /// that none reached router A. Prints the fault's numbers.
    fn finish(mut self, what: &str, repair: Duration) -> Daemon {
        std::thread::sleep(Duration::from_millis(300));
        let sender = self.sender.take().unwrap();
        let sent = sender.sent();
        drop(sender);
        std::thread::sleep(Duration::from_millis(50));
        let (wrong, right) = (arrivals(&self.bed.a), arrivals(&self.bed.b));
        println!(
            "fault: {what}: repaired in {:.1} ms; sent {sent}, at router B {right}, \
             misrouted (at router A) {wrong}",
            repair.as_secs_f64() * 1e3
        );
        assert_eq!(wrong, 0, "{what}: packets from {SOURCE} left through wan1");
        assert!(
            sent > 100 && right > 0,
            "{what}: no traffic ({sent} sent, {right} at B)"
        );
        self.daemon.take().unwrap()
    }
}

#[test]
fn our_rules_flushed() {
    let run = running(&[]);
    let repair = run.inject(
        "rules flushed",
        "ip -4 rule flush protocol 77 && ip -6 rule flush protocol 77",
    );
    run.finish("rules flushed", repair);
}

#[test]
fn our_routes_flushed() {
    let run = running(&[]);
    let repair = run.inject(
        "routes flushed",
        "ip -4 route flush table all proto 77 && ip -6 route flush table all proto 77",
    );
    run.finish("routes flushed", repair);
}

/// Someone replaces our table's default route with theirs, through the wrong uplink. It is not
/// ours: multihome leaves it and warns; the guard keeps wan2's packets on wan2. Once it is
/// deleted, multihome's own route is back.
#[test]
fn our_default_route_replaced_by_a_foreign_one() {
    let run = running(&[]);
    run.host()
        .sh("ip route replace default via 192.168.0.1 dev wan1 table 1002 proto static")
        .unwrap();
    wait_for(
        "the warning about the foreign route",
        REPAIR,
        || {
            run.daemon()
                .log()
                .contains("table 1002 holds a route that is not multihome's")
                .then_some(())
        },
        || run.daemon().log(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        // `ip -N` prints the protocol by number: 4 is `static`.
        table(run.host(), 1002).contains("default via 192.168.0.1 dev wan1 proto 4"),
        "the foreign route was touched:\n{}",
        table(run.host(), 1002)
    );
    let repair = run.inject(
        "foreign default route deleted",
        "ip route del default table 1002 proto static",
    );
    run.finish("default route replaced by a foreign one", repair);
}

/// The pin directory removed by hand: every TCX link goes with its pin (the guard detached),
/// the maps lose their pins. The watchdog's audit puts both back.
#[test]
fn guard_pins_removed() {
    let run = running_with_watchdog();
    let pin_dir = run.daemon().pin_dir().to_path_buf();
    let attached = attachments(run.host(), &pin_dir);
    assert_eq!(attached.len(), 2, "{attached:?}");
    assert!(tcx_attached(run.host(), "wan1"));
    let wan1 = run.host().ifindex("wan1").unwrap();
    let link_id = || {
        PinnedLink::from_pin(pin_dir.join(format!("link_{wan1}")))
            .ok()
            .and_then(|link| FdLink::from(link).info().ok())
            .map(|info| info.id())
    };
    let before = link_id().expect("wan1's link pin");
    std::fs::remove_dir_all(&pin_dir).unwrap();
    let removed = Instant::now();
    // The kernel releases the unpinned link a moment later (deferred work).
    wait_for(
        "the guard detached",
        Duration::from_millis(500),
        || (!tcx_attached(run.host(), "wan1")).then_some(()),
        || "still attached".into(),
    );
    wait_for(
        "the guard attached again",
        REPAIR,
        || {
            (attachments(run.host(), &pin_dir) == attached
                && tcx_attached(run.host(), "wan1")
                && run.converged())
            .then_some(())
        },
        || run.daemon().log(),
    );
    let repair = removed.elapsed();
    assert_ne!(
        link_id(),
        Some(before),
        "the same link, not a new attachment"
    );
    assert!(run.daemon().log().contains("was removed: pinned again"));
    run.finish("guard pins removed (TCX detached)", repair);
}

/// The guard's TCX link on wan1 detached by hand (`bpftool link detach`): the pin stays, the
/// program is gone from the device. The watchdog's audit sees it and attaches again.
#[test]
fn guard_link_detached_by_hand() {
    let run = running_with_watchdog();
    let wan1 = run.host().ifindex("wan1").unwrap();
    let pin = run.daemon().pin_dir().join(format!("link_{wan1}"));
    let guarded = || tcx_attached(run.host(), "wan1");
    assert!(guarded() && pin.exists());
    run.host()
        .run(&["bpftool", "link", "detach", "pinned", pin.to_str().unwrap()])
        .unwrap();
    let detached = Instant::now();
    assert!(!guarded(), "bpftool link detach left the program attached");
    wait_for(
        "the guard attached to wan1 again",
        REPAIR,
        || (guarded() && run.converged()).then_some(()),
        || run.daemon().log(),
    );
    let repair = detached.elapsed();
    run.finish("guard's TCX link detached by hand", repair);
}

/// 100,000 address changes on wan2 in one `ip -batch` against a 64 KiB netlink receive buffer:
/// notifications are lost (ENOBUFS), the daemon says so, dumps again and converges on the state
/// the storm left (one more address on wan2).
#[test]
fn event_storm_with_a_small_receive_buffer() {
    let run = running(&["--netlink-receive-buffer", "65536"]);
    let mut batch = String::new();
    for i in 0..50_000u32 {
        let addr = format!("10.77.{}.{}/32", i / 250, 1 + i % 250);
        batch.push_str(&format!(
            "address add {addr} dev wan2\naddress del {addr} dev wan2\n"
        ));
    }
    batch.push_str("address add 192.168.0.21/24 dev wan2\n");
    let file = std::env::temp_dir().join(format!("{}-storm", run.host().name()));
    std::fs::write(&file, batch).unwrap();
    let started = Instant::now();
    run.host()
        .run(&["ip", "-batch", file.to_str().unwrap()])
        .unwrap();
    let storm = started.elapsed();
    std::fs::remove_file(&file).unwrap();
    let end = Instant::now();
    let want = RULES_BOTH.replace(
        "1000: from 192.168.0.20 lookup 1002 proto 77",
        "1000: from 192.168.0.20 lookup 1002 proto 77
         1000: from 192.168.0.21 lookup 1002 proto 77",
    );
    wait_rules(run.host(), &want);
    let repair = end.elapsed();
    println!("fault: storm: 100,001 changes applied by ip in {storm:.1?}");
    assert!(
        run.daemon()
            .log()
            .contains("netlink notifications were lost, dumping the kernel's state again"),
        "no resync logged"
    );
    let wan2 = run.host().ifindex("wan2").unwrap();
    assert!(map_entries(run.daemon().pin_dir()).contains(&("192.168.0.21".parse().unwrap(), wan2)));
    run.finish("storm of 100,000 address changes (ENOBUFS)", repair);
}

/// wan2 deleted and created again 100 times (a VLAN or USB modem coming and going), addresses
/// and the DHCP route put back each time. The sender pauses while the device is away: the
/// question is whether packets leak while it comes back.
#[test]
fn uplink_deleted_and_created_again_100_times() {
    let run = running(&[]);
    let b = run.bed.b.name();
    let mut script = String::from("set -e\n");
    for _ in 0..100 {
        script.push_str(&format!(
            "ip link del wan2
             ip link add wan2 type veth peer name lan netns {b}
             ip -n {b} addr add 192.168.0.1/24 dev lan
             ip -n {b} -6 addr add 2001:db8:b::1/64 dev lan nodad
             ip -n {b} link set lan up
             ip addr add 192.168.0.20/24 dev wan2
             ip -6 addr add 2001:db8:b::20/64 dev wan2 nodad
             ip link set wan2 up
             ip route add default via 192.168.0.1 dev wan2 metric 20 proto dhcp
             ip -6 route add default via 2001:db8:b::1 dev wan2 metric 20 proto ra
"
        ));
    }
    let started = Instant::now();
    run.host().sh(&script).unwrap();
    let churn = started.elapsed();
    // The map's ifindex for wan2 changed: compare against the new one.
    let wan2 = run.host().ifindex("wan2").unwrap();
    let end = Instant::now();
    wait_for(
        "repair after 100 re-creations",
        REPAIR,
        || {
            let map = map_entries(run.daemon().pin_dir());
            (owned_lines(run.host()) == run.baseline.0
                && map.contains(&(SOURCE.parse().unwrap(), wan2)))
            .then_some(())
        },
        || format!("{:#?}", owned_lines(run.host())),
    );
    let repair = end.elapsed();
    // Each time the address comes back, the daemon needs a moment to see it: until then only
    // the guard entry that lingers after the address went (see `linger`) keeps its packets off
    // wan1 (redirected towards the gone device, they are dropped, not misrouted).
    let during = arrivals(&run.bed.a);
    println!(
        "fault: 100 re-creations took {churn:.1?}; {during} packets left through wan1 while an \
         address was back and not yet seen"
    );
    assert_eq!(
        during, 0,
        "packets from wan2's address reached router A during the churn"
    );
    for router in [&run.bed.a, &run.bed.b] {
        // Router B's counter went with its old `lan` device: count on the new one.
        stop_counting(router);
        count_arrivals(router);
    }
    std::thread::sleep(Duration::from_millis(200));
    run.finish(
        "uplink deleted and re-created 100 times (after repair)",
        repair,
    );
}

/// SIGKILL and a new start, 50 times, under traffic: what the killed daemon left is adopted
/// (no duplicates) and keeps traffic right meanwhile.
#[test]
fn sigkill_and_restart_50_times() {
    let mut run = running(&[]);
    let pin_dir = run.daemon().pin_dir().to_path_buf();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..50 {
        run.daemon.take().unwrap().kill();
        let killed = Instant::now();
        run.daemon =
            Some(Daemon::start_with_pins(run.host(), &["wan1", "wan2"], &pin_dir).unwrap());
        run.wait_converged("SIGKILL and restart");
        slowest = slowest.max(killed.elapsed());
    }
    println!(
        "fault: 50 kill/restart cycles took {:.1?}",
        started.elapsed()
    );
    run.finish("SIGKILL and restart (slowest of 50 cycles)", slowest);
}

/// SIGTERM removes everything; the next start installs it once.
#[test]
fn sigterm_then_start_leaves_nothing_and_duplicates_nothing() {
    let bed = bed();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    let before = owned_lines(&bed.host);
    let pin_dir = daemon.pin_dir().to_path_buf();
    assert!(daemon.stop().success());
    assert_eq!(everything_owned(&bed.host), "", "SIGTERM left objects");
    assert!(!pin_dir.exists(), "SIGTERM left pins");
    let started = Instant::now();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    wait_rules(&bed.host, RULES_BOTH);
    wait_table(&bed.host, 1002, TABLE_1002);
    println!(
        "fault: SIGTERM then start: converged {:.1?} after the start",
        started.elapsed()
    );
    assert_eq!(owned_lines(&bed.host), before, "duplicates or losses");
    assert_eq!(map_entries(daemon.pin_dir()).len(), 4);
}

/// Two daemons started at the same instant: one runs, the other refuses with exit status 2
/// and one line that says why, and touches nothing.
#[test]
fn two_daemons_started_at_once() {
    let bed = bed();
    let bin = multihome_bin();
    let bin = bin.to_str().unwrap();
    let pins = bed.host.pin_dir();
    let pins = pins.to_str().unwrap();
    let logs: Vec<_> = (0..2)
        .map(|n| std::env::temp_dir().join(format!("{}-twin{n}.log", bed.host.name())))
        .collect();
    let mut twins: Vec<_> = logs
        .iter()
        .map(|log| {
            bed.host
                .spawn_logged(&[bin, "run", "--pin-dir", pins, "wan1", "wan2"], log)
                .unwrap()
        })
        .collect();
    let read = |n: usize| std::fs::read_to_string(&logs[n]).unwrap_or_default();
    let refused = wait_for(
        "one of the two to refuse",
        REPAIR,
        || (0..2).find(|&n| !twins[n].running()),
        || format!("{}\n{}", read(0), read(1)),
    );
    let runner = 1 - refused;
    let status = twins.remove(refused).stop(libc::SIGKILL).unwrap();
    assert_eq!(status.code(), Some(2), "{}", read(refused));
    let message = read(refused);
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(message.contains("already"), "{message}");
    wait_rules(&bed.host, RULES_BOTH);
    assert!(twins[0].running(), "{}", read(runner));
    for log in logs {
        let _ = std::fs::remove_file(log);
    }
}
