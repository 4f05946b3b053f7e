//! Scenario 1 on the real-DHCP testbed: egress by source, IPv4 and IPv6, both DHCP clients;
//! the problem shown without multihome; guard-only and rules-only modes (scenario 6).

use multihome_tests::daemon::Daemon;
use multihome_tests::testbed::probe::{self, Proto, Via, ALL_PROTOS};
use multihome_tests::testbed::{Client, Isp, Testbed};

/// What every connection answers with multihome running: bound to an uplink (device or
/// address) leaves through its ISP, unbound through ISP A (lowest metric).
fn assert_egress_by_source(bed: &Testbed) {
    for v6 in [false, true] {
        let cases = [
            (Via::Unbound, Isp::A),
            (Via::Device("wan1".into()), Isp::A),
            (Via::Device("wan2".into()), Isp::B),
            (Via::Addr(addr(bed, Isp::A, v6)), Isp::A),
            (Via::Addr(addr(bed, Isp::B, v6)), Isp::B),
        ];
        for (via, want) in cases {
            for proto in ALL_PROTOS {
                let got = probe::ask(&bed.host, &via, proto, v6);
                assert_eq!(
                    got.as_ref().ok().and_then(|a| Isp::from_wan(*a)),
                    Some(want),
                    "{via:?} {proto:?} v6={v6}: echo saw {got:?}\n{}",
                    bed.describe()
                );
            }
        }
    }
}

fn addr(bed: &Testbed, isp: Isp, v6: bool) -> std::net::IpAddr {
    if v6 {
        bed.v6(isp)
    } else {
        bed.v4(isp)
    }
}

/// `mode`: extra `multihome run` flags (none, `--no-rules`: guard only, `--no-ebpf`: rules
/// only).
fn egress(client: Client, mode: &[&str]) {
    let bed = Testbed::up(client).unwrap();
    // The problem: without multihome, traffic from wan2's address leaves via wan1.
    for v6 in [false, true] {
        let via = Via::Addr(addr(&bed, Isp::B, v6));
        let got = probe::isp(&bed.host, &via, Proto::Udp, v6);
        assert_ne!(got, Some(Isp::B), "without multihome {via:?} v6={v6} already works?");
    }
    let args: Vec<&str> = mode.iter().copied().chain(["wan1", "wan2"]).collect();
    let _daemon = Daemon::start(&bed.host, &args).unwrap();
    assert_egress_by_source(&bed);
}

#[test]
fn egress_by_source_networkd() {
    egress(Client::Networkd, &[]);
}

#[test]
fn egress_by_source_dhclient() {
    egress(Client::Dhclient, &[]);
}

#[test]
fn guard_only_networkd() {
    egress(Client::Networkd, &["--no-rules"]);
}

#[test]
fn guard_only_dhclient() {
    egress(Client::Dhclient, &["--no-rules"]);
}

#[test]
fn rules_only_networkd() {
    egress(Client::Networkd, &["--no-ebpf"]);
}

#[test]
fn rules_only_dhclient() {
    egress(Client::Dhclient, &["--no-ebpf"]);
}
