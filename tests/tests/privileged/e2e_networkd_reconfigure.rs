//! Scenario 5: systemd-networkd deletes "foreign" routing policy rules when it reconfigures a
//! link (`ManageForeignRoutingPolicyRules=yes`, the default). multihome puts them back, and a
//! steady UDP stream from wan2's address loses no packet to ISP A meanwhile. Counted at both
//! routers.
//!
//! networkd 252 removes every foreign rule whichever link it reconfigures, and also drops and
//! re-adds the reconfigured link's DHCP address (even with `KeepConfiguration=dhcp`), and
//! with it the link's default route. Reconfiguring wan1 takes wan2's rules away while wan2's
//! address stays. A live multihome restores them within milliseconds, before wan1's default
//! route is back, so only a longer gap shows the guard's own job: the daemon crashed (its
//! pinned guard and map stay) while networkd wipes the rules. Reconfiguring wan2 itself adds
//! a window nothing covers today (see the ignored test).

use std::net::IpAddr;
use std::time::Duration;

use multihome_tests::daemon::{wait_for, Daemon};
use multihome_tests::testbed::probe::{udp_stream, wait_isp, Via};
use multihome_tests::testbed::{Client, Isp, Testbed};

const STREAM: Duration = Duration::from_secs(3);

/// Streams from `src` (one datagram a millisecond) while `during` runs, and returns how many
/// were sent and how many each router forwarded.
fn stream(bed: &Testbed, src: IpAddr, during: impl FnOnce()) -> (u64, u64, u64) {
    let (a0, b0) = (
        bed.a.forwarded_udp().unwrap(),
        bed.b.forwarded_udp().unwrap(),
    );
    let sent = std::thread::scope(|s| {
        let stream = s.spawn(|| udp_stream(&bed.host, src, STREAM, Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(300));
        during();
        stream.join().unwrap().unwrap()
    });
    // Let the last datagrams reach the routers' counters.
    std::thread::sleep(Duration::from_millis(200));
    let a = bed.a.forwarded_udp().unwrap() - a0;
    let b = bed.b.forwarded_udp().unwrap() - b0;
    eprintln!("stream from {src}: {sent} sent, {b} via ISP B, {a} via ISP A");
    (sent, a, b)
}

fn assert_all_via_b((sent, a, b): (u64, u64, u64), what: &str) {
    assert_eq!(
        a, 0,
        "{what}: datagrams from wan2's address left through ISP A"
    );
    assert_eq!(b, sent, "{what}: every datagram sent left through ISP B");
}

struct Bed {
    bed: Testbed,
    src: IpAddr,
    rule: String,
}

fn bed_with_daemon(args: &[&str]) -> (Bed, Daemon) {
    let bed = Testbed::up(Client::Networkd).unwrap();
    let daemon = Daemon::start(&bed.host, args).unwrap();
    let src = bed.v4(Isp::B);
    wait_isp(
        &bed.host,
        &Via::Addr(src),
        false,
        Isp::B,
        Duration::from_secs(10),
        || bed.describe(),
    );
    let rule = format!("from {src} lookup 1002");
    (Bed { bed, src, rule }, daemon)
}

impl Bed {
    fn wait_rule(&self, present: bool) {
        wait_for(
            &format!("wan2's rule present={present}"),
            Duration::from_secs(10),
            || (self.bed.owned_rules().contains(&self.rule) == present).then_some(()),
            || self.bed.owned_rules(),
        );
    }
}

/// `networkctl reconfigure wan1` with multihome running: wan2's rules are deleted and
/// restored, the stream stays on ISP B. Then the same with multihome crashed: the rules stay
/// gone, the guard alone keeps the stream on ISP B, and a restarted multihome restores them.
fn reconfigure_other_uplink(args: &[&str]) {
    let (bed, daemon) = bed_with_daemon(args);
    let added = || {
        daemon
            .log()
            .matches(&format!("rule 1000: from {}/32", bed.src))
            .count()
    };
    let before = added();
    let counts = stream(&bed.bed, bed.src, || bed.bed.reconfigure(Isp::A).unwrap());
    wait_for(
        "multihome to restore wan2's rule",
        Duration::from_secs(10),
        || (added() > before && bed.bed.owned_rules().contains(&bed.rule)).then_some(()),
        || format!("{}\n{}", bed.bed.owned_rules(), daemon.log()),
    );
    assert_all_via_b(counts, "multihome running");

    let pins = daemon.pin_dir().to_path_buf();
    daemon.kill();
    let counts = stream(&bed.bed, bed.src, || {
        bed.bed.reconfigure(Isp::A).unwrap();
        bed.wait_rule(false);
        bed.bed.wait_configured(Isp::A);
    });
    assert_all_via_b(counts, "multihome crashed, rules deleted");
    let _again = Daemon::start_with_pins(&bed.bed.host, args, &pins).unwrap();
    bed.wait_rule(true);
}

#[test]
fn reconfigure_other_uplink_rules_and_guard() {
    reconfigure_other_uplink(&["wan1", "wan2"]);
}

/// The same without the guard must lose datagrams to ISP A once the rules are gone: the
/// scenario can tell a working guard from none.
#[test]
#[should_panic(
    expected = "multihome crashed, rules deleted: datagrams from wan2's address left through ISP A"
)]
fn reconfigure_other_uplink_rules_only_leaks() {
    reconfigure_other_uplink(&["--no-ebpf", "wan1", "wan2"]);
}

/// networkd drops wan2's address and adds it again ~30 ms later: from its return until
/// multihome has reacted (~2 ms: no rule, wan2's default route not back yet) only the guard
/// entry, kept for a moment after the address went (`linger`), stands between those datagrams
/// and ISP A. Without it, 1-4 of ~2500 left through ISP A in 5 of 8 runs.
#[test]
fn reconfigure_same_uplink() {
    let (bed, _daemon) = bed_with_daemon(&["wan1", "wan2"]);
    let (sent, a, b) = stream(&bed.bed, bed.src, || bed.bed.reconfigure(Isp::B).unwrap());
    bed.wait_rule(true);
    // While wan2 itself has no address and no route, a datagram the kernel still accepted can
    // only be dropped (the guard redirects it to wan2, where nothing routes it): lost, but never
    // through ISP A. A handful at most, in a window of ~30 ms.
    assert_eq!(
        a, 0,
        "wan2 reconfigured: datagrams from wan2's address left through ISP A"
    );
    assert!(
        b + 30 >= sent,
        "wan2 reconfigured: {sent} sent, only {b} via ISP B"
    );
}
