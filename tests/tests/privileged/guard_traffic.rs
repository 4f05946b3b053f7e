//! The guard on real traffic: a host namespace with two uplinks to two peers that both use
//! 192.168.0.0/24 with gateway 192.168.0.1, and DHCP-style default routes (metrics 10 and 20)
//! in `main`, no policy rules. Traffic from uplink B's address, which the kernel routes out of
//! uplink A, must reach B's peer, from the very first packet; without the guard it reaches A.
//! The same for IPv6 with router-advertisement-style default routes via the peers' link-local
//! addresses, which the guard reaches by naming B's gateway as the next hop.

use std::{
    io::{ErrorKind, Read},
    net::{IpAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use multihome::guard::{AttachKind, AttachMode, Guard};
use multihome_tests::guard::*;
use multihome_tests::netns::{require_root, veth, Netns};

const INTERNET: &str = "203.0.113.10";
const ADDR_A: &str = "192.168.0.10";
const ADDR_B: &str = "192.168.0.20";

struct Bed {
    host: Netns,
    peer_a: Netns,
    peer_b: Netns,
    up_a: u32,
    up_b: u32,
}

fn bed() -> Bed {
    require_root();
    let host = Netns::new("gh").unwrap();
    let peer_a = Netns::new("ga").unwrap();
    let peer_b = Netns::new("gb").unwrap();
    veth(&host, "upa", &peer_a, "p0").unwrap();
    veth(&host, "upb", &peer_b, "p0").unwrap();
    for peer in [&peer_a, &peer_b] {
        // Both peers are "the router" 192.168.0.1 and both answer for the internet address.
        peer.sh(&format!(
            "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
             net.ipv4.conf.p0.rp_filter=0 && ip addr add 192.168.0.1/24 dev p0 && \
             ip addr add {INTERNET}/32 dev lo"
        ))
        .unwrap();
    }
    // Loose reverse-path checks: replies from the internet come back on uplink B, whose
    // default route is not the best one (the operator hint `check` gives).
    host.sh(&format!(
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
         net.ipv4.conf.upa.rp_filter=0 net.ipv4.conf.upb.rp_filter=0 && \
         ip addr add {ADDR_A}/24 dev upa && ip addr add {ADDR_B}/24 dev upb && \
         ip route add default via 192.168.0.1 dev upa metric 10 && \
         ip route add default via 192.168.0.1 dev upb metric 20"
    ))
    .unwrap();
    Bed {
        up_a: host.ifindex("upa").unwrap(),
        up_b: host.ifindex("upb").unwrap(),
        host,
        peer_a,
        peer_b,
    }
}

/// A UDP receiver on the internet address `at` inside `ns`.
fn udp_receiver(ns: &Netns, at: &str) -> UdpSocket {
    let socket = ns.enter(|| UdpSocket::bind((at, 9999))).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
}

/// Datagrams that arrived within `wait`.
fn received(socket: &UdpSocket, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

/// Sends one datagram from `src` in the host namespace, with B's gateway neighbour flushed
/// first so that the very first packet is the one that must find its way.
fn send_from(bed: &Bed, src: &str, text: &str) {
    bed.host
        .run(&["ip", "neigh", "flush", "dev", "upb"])
        .unwrap();
    bed.host
        .enter(|| {
            let socket = UdpSocket::bind((src, 0))?;
            socket.send_to(text.as_bytes(), (INTERNET, 9999))
        })
        .unwrap();
}

fn scenario(mode: AttachMode, want_kind: AttachKind, tag: &str) {
    let bed = bed();
    let pins = PinDir::new(tag);
    let mut guard = Guard::load(pins.path(), mode).unwrap();
    let (rx_a, rx_b) = (
        udp_receiver(&bed.peer_a, INTERNET),
        udp_receiver(&bed.peer_b, INTERNET),
    );

    // The kernel alone: B's source leaves through A (the black hole the guard exists for).
    send_from(&bed, ADDR_B, "unguarded");
    assert_eq!(received(&rx_a, Duration::from_secs(2)), ["unguarded"]);
    assert!(received(&rx_b, Duration::from_millis(300)).is_empty());

    guard
        .put_entry(ADDR_A.parse::<IpAddr>().unwrap(), &egress(bed.up_a, 1500))
        .unwrap();
    guard
        .put_entry(ADDR_B.parse::<IpAddr>().unwrap(), &egress(bed.up_b, 1500))
        .unwrap();
    bed.host
        .enter(|| -> anyhow::Result<()> {
            guard.attach(bed.up_a)?;
            guard.attach(bed.up_b)
        })
        .unwrap();
    assert_eq!(guard.attach_mode_of(bed.up_a), Some(want_kind));
    assert_eq!(
        bed.host.enter(|| guard.attached()),
        [bed.up_a, bed.up_b].into()
    );

    // Guarded: the first packet, towards an unresolved gateway, arrives at B and only there.
    send_from(&bed, ADDR_B, "first");
    assert_eq!(received(&rx_b, Duration::from_secs(3)), ["first"]);
    assert!(received(&rx_a, Duration::from_millis(300)).is_empty());
    // A's own traffic is untouched.
    send_from(&bed, ADDR_A, "from A");
    assert_eq!(received(&rx_a, Duration::from_secs(2)), ["from A"]);
    assert!(received(&rx_b, Duration::from_millis(300)).is_empty());

    // TCP from B's address completes its handshake with B's peer.
    let listen_a = bed
        .peer_a
        .enter(|| TcpListener::bind((INTERNET, 8080)))
        .unwrap();
    let listen_b = bed
        .peer_b
        .enter(|| TcpListener::bind((INTERNET, 8080)))
        .unwrap();
    listen_a.set_nonblocking(true).unwrap();
    listen_b.set_nonblocking(true).unwrap();
    bed.host
        .run(&[
            "socat",
            "-u",
            "EXEC:echo hello-b",
            &format!("TCP4:{INTERNET}:8080,bind={ADDR_B},connect-timeout=5"),
        ])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut stream = loop {
        match listen_b.accept() {
            Ok((stream, peer)) => {
                assert_eq!(peer.ip().to_string(), ADDR_B);
                break stream;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("no connection at B: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert_eq!(text.trim(), "hello-b");
    assert!(listen_a.accept().is_err(), "a connection reached A");

    let counters = guard.counters().unwrap();
    let b = counters.get(&bed.up_b).copied().unwrap_or_default();
    assert!(b.redirected >= 3, "B's redirects: {b:?}");
    assert_eq!(b.redirect_failed, 0);

    // Detached again, the same packet goes back to A: the guard did it.
    bed.host
        .enter(|| -> anyhow::Result<()> {
            guard.detach(bed.up_a)?;
            guard.detach(bed.up_b)
        })
        .unwrap();
    assert!(bed.host.enter(|| guard.attached()).is_empty());
    send_from(&bed, ADDR_B, "detached");
    assert_eq!(received(&rx_a, Duration::from_secs(2)), ["detached"]);
    assert!(received(&rx_b, Duration::from_millis(300)).is_empty());
}

/// How the guard chains with other programs on a device's egress, which auto mode's move from
/// clsact to TCX relies on (for a moment both hook the device): TCX programs run before the
/// clsact qdisc's filters; the guard passes a packet on (TC_ACT_UNSPEC, TCX_NEXT) to whatever
/// runs after it, and ends the chain only by redirecting it. With a filter that drops everything
/// on clsact and the guard on TCX, A's traffic (no redirect) reaches the dropper, B's (redirected)
/// never does.
#[test]
fn the_guard_passes_packets_on_and_ends_the_chain_only_by_a_redirect() {
    use aya::programs::tc::{self, NlOptions, TcAttachOptions, TcAttachType};
    use aya::programs::SchedClassifier;

    let bed = bed();
    let pins = PinDir::new("to");
    let mut guard = Guard::load(pins.path(), AttachMode::Tcx).unwrap();
    let dropper = pins.path().join("dropper");
    pin_verdict_program(&dropper, "dropper", TC_ACT_SHOT).unwrap();
    let mut dropper = SchedClassifier::from_pin(&dropper).unwrap();
    bed.host
        .enter(|| -> anyhow::Result<()> {
            tc::qdisc_add_clsact("upa")?;
            let id = dropper.attach_with_options(
                "upa",
                TcAttachType::Egress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )?;
            // The filter stays when this handle goes (it goes with the namespace).
            std::mem::forget(dropper.take_link(id)?);
            Ok(())
        })
        .unwrap();
    let (rx_a, rx_b) = (
        udp_receiver(&bed.peer_a, INTERNET),
        udp_receiver(&bed.peer_b, INTERNET),
    );
    // A static neighbour: the dropper drops ARP too.
    let link = bed
        .peer_a
        .run(&["ip", "-br", "link", "show", "dev", "p0"])
        .unwrap();
    let mac = link.split_whitespace().nth(2).unwrap().to_owned();
    bed.host
        .run(&[
            "ip",
            "neigh",
            "replace",
            "192.168.0.1",
            "lladdr",
            mac.trim(),
            "dev",
            "upa",
            "nud",
            "permanent",
        ])
        .unwrap();
    guard
        .put_entry(ADDR_B.parse::<IpAddr>().unwrap(), &egress(bed.up_b, 1500))
        .unwrap();
    bed.host.enter(|| guard.attach(bed.up_a)).unwrap();
    send_from(&bed, ADDR_B, "redirected");
    assert_eq!(received(&rx_b, Duration::from_secs(3)), ["redirected"]);
    send_from(&bed, ADDR_A, "passed on");
    assert!(
        received(&rx_a, Duration::from_millis(500)).is_empty(),
        "the guard ended the chain for a packet it passes"
    );
    bed.host.enter(|| guard.detach(bed.up_a)).unwrap();
    send_from(&bed, ADDR_B, "unguarded");
    assert!(
        received(&rx_a, Duration::from_millis(500)).is_empty(),
        "the dropper let it pass"
    );
    assert!(received(&rx_b, Duration::from_millis(300)).is_empty());
}

#[test]
fn tcx_guard_sends_b_traffic_out_of_b() {
    scenario(AttachMode::Tcx, AttachKind::Tcx, "tt");
}

#[test]
fn clsact_guard_sends_b_traffic_out_of_b() {
    scenario(AttachMode::Clsact, AttachKind::Clsact, "tc");
}

const INTERNET_V6: &str = "2001:db8:ffff::10";
const ADDR_A_V6: &str = "2001:db8:a::10";
const ADDR_B_V6: &str = "2001:db8:b::10";
/// The peers' link-local addresses: the IPv6 gateways, as routers advertise them.
const GW_A_V6: &str = "fe80::a";
const GW_B_V6: &str = "fe80::b";

/// The IPv4 bed plus IPv6: each peer is the router of its own /64 with a link-local gateway
/// address, and answers for the internet address; the host's default routes go via those
/// link-local gateways with metrics 10 and 20 (no policy rules), as after two RAs.
fn bed_v6() -> Bed {
    let bed = bed();
    for (peer, letter) in [(&bed.peer_a, 'a'), (&bed.peer_b, 'b')] {
        peer.sh(&format!(
            "ip addr add fe80::{letter}/64 dev p0 nodad && \
             ip addr add 2001:db8:{letter}::1/64 dev p0 nodad && \
             ip addr add {INTERNET_V6}/128 dev lo"
        ))
        .unwrap();
    }
    bed.host
        .sh(&format!(
            "ip addr add {ADDR_A_V6}/64 dev upa nodad && ip addr add {ADDR_B_V6}/64 dev upb nodad && \
             ip route add default via {GW_A_V6} dev upa metric 10 && \
             ip route add default via {GW_B_V6} dev upb metric 20"
        ))
        .unwrap();
    // Until duplicate address detection ends, the kernel does not solicit the gateways.
    let deadline = Instant::now() + Duration::from_secs(10);
    for ns in [&bed.host, &bed.peer_a, &bed.peer_b] {
        while !ns
            .run(&["ip", "-6", "addr", "show", "tentative"])
            .unwrap()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "IPv6 addresses still tentative");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    bed
}

/// Sends one datagram from `src` to the IPv6 internet address in the host namespace.
fn send_v6(bed: &Bed, src: &str, text: &str) {
    bed.host
        .enter(|| {
            let socket = UdpSocket::bind((src, 0))?;
            socket.send_to(text.as_bytes(), (INTERNET_V6, 9999))
        })
        .unwrap();
}

fn gateway(addr: &str) -> [u8; 16] {
    addr.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// The guard-only IPv6 path: a redirect with a NULL next hop would be routed again by the
/// kernel to A's gateway (an oif is only a preference to an IPv6 lookup without a socket), so
/// the guard names B's gateway. With B's gateway resolved (a router's advertisements keep it
/// so) the very first packet arrives at B. Towards an unresolved gateway the first packet is
/// queued and then re-sent by the kernel through its old route's neighbour (A's MAC addresses,
/// on B's device) and lost; what follows arrives at B, and nothing ever reaches A.
#[test]
fn ipv6_guard_sends_b_traffic_out_of_b_via_its_gateway() {
    let bed = bed_v6();
    let pins = PinDir::new("t6");
    let mut guard = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    let (rx_a, rx_b) = (
        udp_receiver(&bed.peer_a, INTERNET_V6),
        udp_receiver(&bed.peer_b, INTERNET_V6),
    );

    // The kernel alone: B's source leaves through A.
    send_v6(&bed, ADDR_B_V6, "unguarded");
    assert_eq!(received(&rx_a, Duration::from_secs(2)), ["unguarded"]);
    assert!(received(&rx_b, Duration::from_millis(300)).is_empty());

    for (addr, uplink, gw) in [
        (ADDR_A_V6, bed.up_a, GW_A_V6),
        (ADDR_B_V6, bed.up_b, GW_B_V6),
    ] {
        guard
            .put_entry(addr.parse().unwrap(), &egress_v6(uplink, 64, gateway(gw)))
            .unwrap();
    }
    bed.host
        .enter(|| -> anyhow::Result<()> {
            guard.attach(bed.up_a)?;
            guard.attach(bed.up_b)
        })
        .unwrap();

    // B's gateway resolved: the first packet arrives at B and only there.
    bed.host
        .run(&["ping", "-c1", "-W2", "-I", "upb", GW_B_V6])
        .unwrap();
    send_v6(&bed, ADDR_B_V6, "resolved");
    assert_eq!(received(&rx_b, Duration::from_secs(3)), ["resolved"]);
    assert!(received(&rx_a, Duration::from_millis(300)).is_empty());
    // A's own traffic is untouched.
    send_v6(&bed, ADDR_A_V6, "from A");
    assert_eq!(received(&rx_a, Duration::from_secs(2)), ["from A"]);
    assert!(received(&rx_b, Duration::from_millis(300)).is_empty());

    // B's gateway unresolved: B's traffic still never reaches A, and once the gateway is
    // resolved (the first packet triggers that) it arrives at B.
    bed.host
        .run(&["ip", "-6", "neigh", "flush", "dev", "upb"])
        .unwrap();
    send_v6(&bed, ADDR_B_V6, "first");
    let first = received(&rx_b, Duration::from_secs(2));
    send_v6(&bed, ADDR_B_V6, "second");
    assert_eq!(received(&rx_b, Duration::from_secs(3)), ["second"]);
    assert!(received(&rx_a, Duration::from_millis(300)).is_empty());
    // The known limit (see `Verdict::Redirect`): if this starts to arrive, the kernel changed,
    // and the docs that describe the limit must change with it.
    assert!(
        first.is_empty(),
        "the first packet towards an unresolved gateway arrived: {first:?}"
    );

    let b = guard
        .counters()
        .unwrap()
        .get(&bed.up_b)
        .copied()
        .unwrap_or_default();
    assert!(b.redirected >= 3, "B's redirects: {b:?}");
    assert_eq!(b.redirect_failed, 0);
}
