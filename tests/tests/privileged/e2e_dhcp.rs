//! Scenarios 2, 3, 4, 7 and 8 on the real-DHCP testbed, for both DHCP clients: what DHCP and
//! the links do to uplink B while multihome runs, and that B's traffic follows each time
//! within a bounded time, with nothing stale left.
//!
//! dnsmasq's shortest lease is two minutes, too long to wait for: renumbering restarts router
//! B's dnsmasq with another pool and asks the client to renew (the authoritative server refuses
//! the old address); a lost lease is router B going silent and the client giving the lease up.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use multihome_tests::daemon::{wait_for, Daemon};
use multihome_tests::testbed::probe::{wait_isp, Via};
use multihome_tests::testbed::{Client, Isp, Lease, Testbed, DHCP_TIMEOUT};

/// How long multihome (plus the DHCP exchange that triggered the change) may take.
const FOLLOW: Duration = Duration::from_secs(20);

struct Run {
    bed: Testbed,
    daemon: Daemon,
}

fn start(client: Client) -> Run {
    let bed = Testbed::up(client).unwrap();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    let run = Run { bed, daemon };
    run.assert_uplink(Isp::B, false);
    run
}

impl Run {
    /// Both bindings of `isp`'s uplink (device, and its current address) leave through it.
    fn assert_uplink(&self, isp: Isp, v6: bool) -> Duration {
        let bed = &self.bed;
        let addr = if v6 { bed.v6(isp) } else { bed.v4(isp) };
        let ctx = || format!("{}\n{}", bed.describe(), self.daemon.log());
        let t = wait_isp(&bed.host, &Via::Addr(addr), v6, isp, FOLLOW, ctx);
        wait_isp(
            &bed.host,
            &Via::Device(isp.uplink().into()),
            v6,
            isp,
            FOLLOW,
            ctx,
        );
        t
    }

    /// Neither a rule nor a guard entry names `addr` any more.
    fn assert_forgotten(&self, addr: IpAddr) {
        let needle = format!("from {addr} ");
        wait_for(
            &format!("{addr} to leave multihome's rules and map"),
            FOLLOW,
            || {
                let rules = self.bed.owned_rules();
                let entries = Testbed::guard_entries(self.daemon.pin_dir());
                (!rules.contains(&needle) && entries.iter().all(|(a, _)| *a != addr)).then_some(())
            },
            || {
                format!(
                    "{}\n{:?}",
                    self.bed.owned_rules(),
                    Testbed::guard_entries(self.daemon.pin_dir())
                )
            },
        );
    }

    /// After wan2 was asked to renumber: it gets an address other than `old`, `old` goes, B's
    /// traffic follows and nothing names `old`; A is unaffected. Returns the new address.
    fn follow_renumbering(&self, old: IpAddr) -> IpAddr {
        let new = self.bed.wait_address(Isp::B, false, |a| a != old);
        wait_for(
            "the old address to go",
            DHCP_TIMEOUT,
            || (!self.bed.addresses(Isp::B, false).contains(&old)).then_some(()),
            || self.bed.describe(),
        );
        let took = self.assert_uplink(Isp::B, false);
        eprintln!("renumbered {old} -> {new}: right again {took:?} after the old address went");
        self.assert_forgotten(old);
        self.assert_uplink(Isp::A, false);
        new
    }

    fn wait_no_v4(&self, isp: Isp) {
        wait_for(
            &format!("{} to lose its IPv4 lease", isp.uplink()),
            DHCP_TIMEOUT,
            || self.bed.addresses(isp, false).is_empty().then_some(()),
            || self.bed.describe(),
        );
    }
}

fn renumbering(client: Client) {
    let mut run = start(client);
    let first = run.bed.v4(Isp::B);
    // The router's pool moves (an authoritative server refuses the address it no longer has).
    run.bed
        .b
        .serve(Lease {
            pool: (200, 249),
            ..Lease::initial(Isp::B)
        })
        .unwrap();
    run.bed.renew(Isp::B).unwrap();
    let second = run.follow_renumbering(first);
    // The router reserves another address for the host ("static lease available").
    run.bed
        .renumber(Isp::B, Ipv4Addr::new(192, 168, 0, 250))
        .unwrap();
    let new = run.follow_renumbering(second);
    assert_eq!(
        new,
        IpAddr::from([192, 168, 0, 250]),
        "the reserved address"
    );
}

fn gateway_change(client: Client) {
    let mut run = start(client);
    let gw: Ipv4Addr = "192.168.0.254".parse().unwrap();
    run.bed.b.move_gateway(gw).unwrap();
    run.bed.renew(Isp::B).unwrap();
    wait_for(
        "wan2's default route via the new gateway",
        DHCP_TIMEOUT,
        || {
            let out = run
                .bed
                .host
                .run(&["ip", "-4", "route", "show", "default", "dev", "wan2"])
                .unwrap_or_default();
            out.contains(&format!("via {gw} ")).then_some(())
        },
        || run.bed.describe(),
    );
    run.assert_uplink(Isp::B, false);
    let table = run
        .bed
        .host
        .run(&["ip", "-4", "route", "show", "table", "1002"])
        .unwrap();
    assert!(
        table.contains(&format!("default via {gw} ")) && !table.contains("via 192.168.0.1 "),
        "table 1002 still routes via the old gateway:\n{table}"
    );
}

fn lease_lost_and_back(client: Client) {
    let mut run = start(client);
    let old = run.bed.v4(Isp::B);
    run.bed.b.stop_dhcp();
    run.bed.lose_lease(Isp::B).unwrap();
    run.wait_no_v4(Isp::B);
    run.assert_forgotten(old);
    run.assert_uplink(Isp::A, false);
    wait_isp(&run.bed.host, &Via::Unbound, false, Isp::A, FOLLOW, || {
        run.bed.describe()
    });
    // Router B returns; only the DHCP client is asked, multihome is left alone.
    run.bed.b.serve(Lease::initial(Isp::B)).unwrap();
    run.bed.renew(Isp::B).unwrap();
    run.bed.wait_configured(Isp::B);
    run.assert_uplink(Isp::B, false);
}

fn link_flap(client: Client) {
    let mut run = start(client);
    run.bed.flap(Isp::B).unwrap();
    run.bed.wait_configured(Isp::B);
    run.assert_uplink(Isp::B, false);
    run.assert_uplink(Isp::B, true);
}

fn device_recreated(client: Client) {
    let mut run = start(client);
    let before = run.bed.host.ifindex("wan2").unwrap();
    run.bed.recreate(Isp::B).unwrap();
    let after = run.bed.host.ifindex("wan2").unwrap();
    assert_ne!(before, after, "wan2 was re-created with a new ifindex");
    run.bed.wait_configured(Isp::B);
    run.assert_uplink(Isp::B, false);
    run.assert_uplink(Isp::B, true);
    let v4 = run.bed.v4(Isp::B);
    wait_for(
        "the guard entry on the new ifindex",
        FOLLOW,
        || {
            Testbed::guard_entries(run.daemon.pin_dir())
                .contains(&(v4, after))
                .then_some(())
        },
        || format!("{:?}", Testbed::guard_entries(run.daemon.pin_dir())),
    );
}

fn two_addresses(client: Client) {
    let run = start(client);
    run.bed
        .host
        .sh("ip addr add 192.168.0.250/24 dev wan2 && ip -6 addr add 2001:db8:b::250/64 dev wan2")
        .unwrap();
    for (extra, v6) in [("192.168.0.250", false), ("2001:db8:b::250", true)] {
        let extra: IpAddr = extra.parse().unwrap();
        for addr in [
            extra,
            if v6 {
                run.bed.v6(Isp::B)
            } else {
                run.bed.v4(Isp::B)
            },
        ] {
            wait_isp(&run.bed.host, &Via::Addr(addr), v6, Isp::B, FOLLOW, || {
                run.bed.describe()
            });
        }
    }
}

macro_rules! for_both_clients {
    ($($scenario:ident),*) => {
        mod networkd {
            $(#[test]
            fn $scenario() {
                super::$scenario(multihome_tests::testbed::Client::Networkd);
            })*
        }
        mod dhclient {
            $(#[test]
            fn $scenario() {
                super::$scenario(multihome_tests::testbed::Client::Dhclient);
            })*
        }
    };
}

for_both_clients!(
    renumbering,
    gateway_change,
    lease_lost_and_back,
    link_flap,
    device_recreated,
    two_addresses
);
