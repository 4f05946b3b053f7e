//! Scenario 1 on the real-DHCP testbed: egress by source, IPv4 and IPv6, both DHCP clients;
//! the problem shown without multihome; guard-only and rules-only modes (scenario 6).

use multihome_tests::daemon::Daemon;
use multihome_tests::testbed::probe::{self, Proto, Via, ALL_PROTOS};
use multihome_tests::testbed::{Client, Isp, Testbed};

/// What every connection answers with multihome running: bound to an uplink (device or
/// address) leaves through its ISP, unbound through ISP A (lowest metric).
fn assert_egress_by_source(bed: &Testbed, families: &[bool]) {
    for &v6 in families {
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

const BOTH: &[bool] = &[false, true];
const V4: &[bool] = &[false];
const V6: &[bool] = &[true];

/// `mode`: extra `multihome run` flags (none, `--no-rules`: guard only, `--no-ebpf`: rules
/// only); `families`: `v6` flags to check.
fn egress(client: Client, mode: &[&str], families: &[bool]) {
    let bed = Testbed::up(client).unwrap();
    // The problem: without multihome, traffic from wan2's address leaves via wan1.
    for &v6 in families {
        let via = Via::Addr(addr(&bed, Isp::B, v6));
        let got = probe::isp(&bed.host, &via, Proto::Udp, v6);
        assert_ne!(
            got,
            Some(Isp::B),
            "without multihome {via:?} v6={v6} already works?"
        );
    }
    let args: Vec<&str> = mode.iter().copied().chain(["wan1", "wan2"]).collect();
    let _daemon = Daemon::start(&bed.host, &args).unwrap();
    assert_egress_by_source(&bed, families);
}

#[test]
fn egress_by_source_networkd() {
    egress(Client::Networkd, &[], BOTH);
}

#[test]
fn egress_by_source_dhclient() {
    egress(Client::Dhclient, &[], BOTH);
}

#[test]
fn guard_only_networkd() {
    egress(Client::Networkd, &["--no-rules"], V4);
}

#[test]
fn guard_only_dhclient() {
    egress(Client::Dhclient, &["--no-rules"], V4);
}

/// IPv6 in guard-only mode. `bpf_redirect_neigh(wan2, NULL)` would route the packet again with
/// `oif` wan2, but IPv6 treats an oif without a socket binding as a preference only, so the
/// lookup in `main` returns wan1's default route (metric 10) and the kernel solicits router A's
/// link-local gateway on wan2, which never answers ("No route to host"). The guard therefore
/// names wan2's gateway (router B's link-local address, from its RA) as the next hop of an
/// off-link IPv6 destination.
#[test]
fn guard_only_ipv6_networkd() {
    egress(Client::Networkd, &["--no-rules"], V6);
}

#[test]
fn guard_only_ipv6_dhclient() {
    egress(Client::Dhclient, &["--no-rules"], V6);
}

#[test]
fn rules_only_networkd() {
    egress(Client::Networkd, &["--no-ebpf"], BOTH);
}

#[test]
fn rules_only_dhclient() {
    egress(Client::Dhclient, &["--no-ebpf"], BOTH);
}
