//! Scenario 5: systemd-networkd deletes "foreign" routing policy rules when it reconfigures a
//! link (`ManageForeignRoutingPolicyRules=yes`, the default). multihome puts them back, and a
//! steady UDP stream from wan2's address loses no packet to ISP A meanwhile: the guard keeps
//! it on wan2 while the rules are missing. Counted at both routers.
//!
//! networkd 252 removes every foreign rule whichever link it reconfigures, and it also drops
//! and re-adds the reconfigured link's DHCP address (even with `KeepConfiguration=dhcp`).
//! Reconfiguring wan1 therefore takes wan2's rules away while wan2's address stays: the
//! guard's job. Reconfiguring wan2 itself adds a window the guard cannot cover today (see
//! the ignored test).

use std::time::Duration;

use multihome_tests::daemon::{wait_for, Daemon};
use multihome_tests::testbed::probe::{udp_stream, wait_isp, Via};
use multihome_tests::testbed::{Client, Isp, Testbed};

/// Streams from wan2's address across `networkctl reconfigure UPLINK`, asserts that
/// multihome had to restore wan2's rule, and that every datagram left through ISP B.
fn stream_across_reconfigure(reconfigured: Isp) {
    let bed = Testbed::up(Client::Networkd).unwrap();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    let src = bed.v4(Isp::B);
    let rule = format!("from {src} lookup 1002");
    wait_isp(&bed.host, &Via::Addr(src), false, Isp::B, Duration::from_secs(10), || {
        bed.describe()
    });
    let added = || daemon.log().matches(&format!("rule 1000: from {src}/32")).count();
    let adds_before = added();
    let (a0, b0) = (bed.a.forwarded_udp().unwrap(), bed.b.forwarded_udp().unwrap());

    let sent = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            udp_stream(&bed.host, src, Duration::from_secs(3), Duration::from_millis(1))
        });
        std::thread::sleep(Duration::from_millis(500));
        bed.reconfigure(reconfigured).unwrap();
        stream.join().unwrap().unwrap()
    });

    // networkd did delete the rules (multihome had to add them again), and they are back.
    wait_for(
        "multihome to restore wan2's rule",
        Duration::from_secs(10),
        || (added() > adds_before && bed.owned_rules().contains(&rule)).then_some(()),
        || format!("{}\n{}", bed.owned_rules(), daemon.log()),
    );
    // Let the last datagrams reach the routers' counters.
    std::thread::sleep(Duration::from_millis(200));
    let (a, b) = (
        bed.a.forwarded_udp().unwrap() - a0,
        bed.b.forwarded_udp().unwrap() - b0,
    );
    eprintln!("stream from {src}: {sent} sent, {b} via ISP B, {a} via ISP A");
    assert_eq!(a, 0, "datagrams from wan2's address left through ISP A");
    assert_eq!(b, sent, "every datagram sent left through ISP B");
}

#[test]
fn reconfigure_other_uplink_guard_covers_the_rule_gap() {
    stream_across_reconfigure(Isp::A);
}

/// networkd drops wan2's address and adds it again ~30 ms later: from its return until
/// multihome has reacted (~2 ms: no guard entry, no rule, wan2's default route not back
/// yet), datagrams from it leave through ISP A (1-4 of ~2500 in about half the runs).
/// Closing this needs multihome to keep a released address's guard entry for a while.
#[test]
#[ignore = "known gap: a re-added address is unguarded until multihome reacts (1-4 datagrams in ~half the runs)"]
fn reconfigure_same_uplink() {
    stream_across_reconfigure(Isp::B);
}
