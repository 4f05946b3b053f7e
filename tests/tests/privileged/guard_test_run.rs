//! The loaded guard under BPF_PROG_TEST_RUN: crafted frames on real devices (in a namespace of
//! the test's own) give the verdicts of the design, move the counters, and random or truncated
//! frames never trip the verifier, crash, or redirect without an entry.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use multihome::guard::{AttachMode, Guard};
use multihome_ebpf::{decide, parse, Counters, Egress, Packet, Source, Verdict, Vlan};
use multihome_tests::guard::*;
use multihome_tests::netns::{require_root, veth, Netns};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const MAC_ETH0: [u8; 6] = [2, 0, 0, 0, 0, 0xe];
const MAC_CHILD: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

/// The devices the frames leave through, in a namespace of the test's own.
struct Bed {
    ns: Netns,
    eth0: u32,
    wan1: u32,
    wan2: u32,
}

fn bed(tag: &str) -> Bed {
    require_root();
    let ns = Netns::new(tag).unwrap();
    for (a, b) in [("eth0", "eth0p"), ("wan1", "wan1p"), ("wan2", "wan2p")] {
        veth(&ns, a, &ns, b).unwrap();
    }
    Bed {
        eth0: ns.ifindex("eth0").unwrap(),
        wan1: ns.ifindex("wan1").unwrap(),
        wan2: ns.ifindex("wan2").unwrap(),
        ns,
    }
}

fn run(guard: &mut Guard, bed: &Bed, frame: &[u8], ctx: &SkbCtx) -> (i32, Vec<u8>) {
    bed.ns
        .enter(|| guard.test_run(frame, &ctx.bytes()))
        .unwrap()
}

fn counters(guard: &Guard, uplink: u32) -> Counters {
    guard
        .counters()
        .unwrap()
        .get(&uplink)
        .copied()
        .unwrap_or_default()
}

#[test]
fn crafted_frames_get_the_designed_verdicts_and_move_the_counters() {
    let bed = bed("gtr");
    let pins = PinDir::new("tr");
    let mut guard = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    let (eth0, wan1, wan2) = (bed.eth0, bed.wan1, bed.wan2);

    let plain: Ipv4Addr = "192.168.0.50".parse().unwrap();
    let vlan_child: Ipv4Addr = "192.168.0.102".parse().unwrap();
    let mac_child: Ipv4Addr = "192.168.0.77".parse().unwrap();
    let small: Ipv4Addr = "192.168.0.99".parse().unwrap();
    let v6: Ipv6Addr = "2001:db8:2::2".parse().unwrap();
    // A /64 with router B's link-local gateway: frames to 2001:db8:ffff::1 are off-link and
    // redirected with an explicit next hop.
    let v6_routed: Ipv6Addr = "2001:db8:2::3".parse().unwrap();
    let foreign: Ipv4Addr = "198.51.100.7".parse().unwrap();
    guard.put_entry(plain.into(), &egress(wan2, 1500)).unwrap();
    guard
        .put_entry(
            vlan_child.into(),
            &Egress {
                lower_ifindex: eth0,
                vlan_id: 102,
                ..egress(wan2, 1500)
            },
        )
        .unwrap();
    guard
        .put_entry(
            mac_child.into(),
            &Egress {
                lower_ifindex: eth0,
                match_mac: 1,
                mac: MAC_CHILD,
                ..egress(wan2, 1500)
            },
        )
        .unwrap();
    guard.put_entry(small.into(), &egress(wan2, 100)).unwrap();
    guard.put_entry(v6.into(), &egress(wan2, 1500)).unwrap();
    guard
        .put_entry(v6_routed.into(), &egress_v6(wan2, 64, ROUTER_B_LL))
        .unwrap();
    assert_eq!(guard.entries().unwrap().len(), 6);

    let v4 = |src, tags: &[u16], mac| frame(mac, tags, ETH_P_IP, &ipv4(src, 60));
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Moves {
        Passed,
        Redirected,
        TooBig,
        Nothing,
    }
    use Moves::*;
    let cases: Vec<(&str, Vec<u8>, SkbCtx, i32, Moves)> = vec![
        (
            "right device",
            v4(plain, &[], MAC_ETH0),
            SkbCtx::on(wan2),
            TC_ACT_UNSPEC,
            Passed,
        ),
        (
            "wrong device",
            v4(plain, &[], MAC_ETH0),
            SkbCtx::on(wan1),
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "parent, right tag",
            v4(vlan_child, &[102], MAC_ETH0),
            SkbCtx::on(eth0),
            TC_ACT_UNSPEC,
            Passed,
        ),
        (
            "parent, wrong tag",
            v4(vlan_child, &[101], MAC_ETH0),
            SkbCtx::on(eth0),
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "parent, no tag",
            v4(vlan_child, &[], MAC_ETH0),
            SkbCtx::on(eth0),
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "VLAN child on itself",
            v4(vlan_child, &[], MAC_ETH0),
            SkbCtx::on(wan2),
            TC_ACT_UNSPEC,
            Passed,
        ),
        (
            "MAC child's frame on the parent",
            v4(mac_child, &[], MAC_CHILD),
            SkbCtx::on(eth0),
            TC_ACT_UNSPEC,
            Passed,
        ),
        (
            "parent's frame with a MAC child's source",
            v4(mac_child, &[], MAC_ETH0),
            SkbCtx::on(eth0),
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "too big for the target",
            frame(MAC_ETH0, &[], ETH_P_IP, &ipv4(small, 200)),
            SkbCtx::on(wan1),
            TC_ACT_SHOT,
            TooBig,
        ),
        (
            "GSO packet larger than the MTU",
            frame(MAC_ETH0, &[], ETH_P_IP, &ipv4(small, 200)),
            SkbCtx {
                gso_segs: 2,
                gso_size: 60,
                ..SkbCtx::on(wan1)
            },
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "too big but on its own device",
            frame(MAC_ETH0, &[], ETH_P_IP, &ipv4(small, 200)),
            SkbCtx::on(wan2),
            TC_ACT_UNSPEC,
            Passed,
        ),
        (
            "IPv6, wrong device",
            frame(MAC_ETH0, &[], ETH_P_IPV6, &ipv6(v6, 80)),
            SkbCtx::on(wan1),
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "IPv6 off-link, wrong device: explicit next hop",
            frame(MAC_ETH0, &[], ETH_P_IPV6, &ipv6(v6_routed, 80)),
            SkbCtx::on(wan1),
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "IPv6 off-link, wrong tag on the parent: explicit next hop",
            frame(MAC_ETH0, &[101], ETH_P_IPV6, &ipv6(v6_routed, 80)),
            SkbCtx::on(eth0),
            TC_ACT_REDIRECT,
            Redirected,
        ),
        (
            "IPv6 off-link, right device",
            frame(MAC_ETH0, &[], ETH_P_IPV6, &ipv6(v6_routed, 80)),
            SkbCtx::on(wan2),
            TC_ACT_UNSPEC,
            Passed,
        ),
        (
            "IPv6, right device",
            frame(MAC_ETH0, &[], ETH_P_IPV6, &ipv6(v6, 80)),
            SkbCtx::on(wan2),
            TC_ACT_UNSPEC,
            Passed,
        ),
        (
            "no entry",
            v4(foreign, &[], MAC_ETH0),
            SkbCtx::on(wan1),
            TC_ACT_UNSPEC,
            Nothing,
        ),
        (
            "not IP",
            frame(MAC_ETH0, &[], 0x0806, &[0; 28]),
            SkbCtx::on(wan1),
            TC_ACT_UNSPEC,
            Nothing,
        ),
    ];
    for (name, frame, ctx, want, moves) in cases {
        let before = counters(&guard, wan2);
        let (got, out) = run(&mut guard, &bed, &frame, &ctx);
        assert_eq!(got, want, "{name}: return code");
        if moves == Redirected {
            assert_eq!(
                out,
                untagged(&frame),
                "{name}: a tag must not leak into the target"
            );
        } else {
            assert_eq!(out, frame, "{name}: the frame must be untouched");
        }
        let after = counters(&guard, wan2);
        let mut expected = before;
        match moves {
            Passed => expected.passed += 1,
            Redirected => {
                expected.redirected += 1;
                expected.bytes_redirected += frame.len() as u64;
            }
            TooBig => expected.dropped_too_big += 1,
            Nothing => {}
        }
        assert_eq!(after, expected, "{name}: counters");
    }
    assert_eq!(counters(&guard, wan2).redirect_failed, 0);
    assert!(
        !guard.counters().unwrap().contains_key(&wan1),
        "counted on the wrong uplink"
    );
}

/// `frame` without its in-packet 802.1Q tags.
fn untagged(frame: &[u8]) -> Vec<u8> {
    let mut at = 12;
    while u16::from_be_bytes([frame[at], frame[at + 1]]) == 0x8100 {
        at += 4;
    }
    [&frame[..12], &frame[at..]].concat()
}

/// xorshift64*: reproducible noise without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the program must do with `frame` on `ifindex`, by the host's own parse and decision:
/// the verdict, and the uplink whose counters it moves (the entry's; none without an entry).
fn model(entries: &BTreeMap<IpAddr, Egress>, frame: &[u8], ifindex: u32) -> (Verdict, Option<u32>) {
    let Some(parsed) = parse(frame, Vlan::NONE) else {
        return (Verdict::Pass, None);
    };
    let src = match parsed.src {
        Source::V4(a) => IpAddr::from(a),
        Source::V6(a) => IpAddr::from(a),
    };
    let entry = entries.get(&src);
    let packet = Packet {
        ifindex,
        vlan: parsed.vlan,
        src_mac: parsed.src_mac,
        src: parsed.src,
        dst: parsed.dst,
        l3_len: parsed.l3_len,
        gso: false,
    };
    (decide(&packet, entry), entry.map(|e| e.uplink_ifindex))
}

/// The program's return code for a verdict.
fn return_code(verdict: &Verdict) -> i32 {
    match verdict {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Redirect { .. } => TC_ACT_REDIRECT,
        Verdict::DropTooBig { .. } => TC_ACT_SHOT,
    }
}

/// BPF_PROG_TEST_RUN itself (not the program) refuses an untagged IPv4 or IPv6 frame shorter
/// than its network header.
fn refused_by_test_run(frame: &[u8]) -> bool {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => frame.len() < 14 + 20,
        ETH_P_IPV6 => frame.len() < 14 + 40,
        _ => false,
    }
}

#[test]
fn random_and_truncated_frames_agree_with_the_host_model() {
    const FRAMES: usize = 100_000;
    let bed = bed("gfz");
    let pins = PinDir::new("fz");
    let mut guard = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    let sources: Vec<IpAddr> = vec![
        "192.168.0.50".parse().unwrap(),
        "192.168.0.102".parse().unwrap(),
        "2001:db8:2::2".parse().unwrap(),
        "192.168.0.99".parse().unwrap(),
    ];
    let others: Vec<IpAddr> = vec![
        "192.168.0.51".parse().unwrap(),
        "2001:db8:2::3".parse().unwrap(),
    ];
    guard
        .put_entry(sources[0], &egress(bed.wan2, 1500))
        .unwrap();
    guard
        .put_entry(
            sources[1],
            &Egress {
                lower_ifindex: bed.eth0,
                vlan_id: 102,
                ..egress(bed.wan2, 1500)
            },
        )
        .unwrap();
    // An IPv6 /64 with a link-local gateway: its frames (to 2001:db8:ffff::1, or wherever the
    // noise sends them) take both redirect forms, with and without an explicit next hop.
    guard
        .put_entry(sources[2], &egress_v6(bed.wan1, 64, ROUTER_B_LL))
        .unwrap();
    guard.put_entry(sources[3], &egress(bed.wan1, 120)).unwrap();
    let entries = guard.entries().unwrap();
    let devices = [1, bed.eth0, bed.wan1, bed.wan2];

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // The counters the model says the program moves, per uplink; every uplink with an entry
    // has its slot, counted or not.
    let mut expected: BTreeMap<u32, Counters> = entries
        .values()
        .map(|e| (e.uplink_ifindex, Counters::default()))
        .collect();
    let mut redirects_seen = 0u64;
    let mut via_next_hop = 0u64;
    let mut refused = 0usize;
    let frames: Vec<(Vec<u8>, u32)> = (0..FRAMES)
        .map(|_| {
            let all = [&sources[..], &others[..]].concat();
            let src = all[rng.below(all.len())];
            let tags: Vec<u16> = (0..rng.below(3))
                .map(|_| [101, 102, 7][rng.below(3)])
                .collect();
            let len = 20 + rng.below(200);
            let mut f = match src {
                IpAddr::V4(a) => frame(MAC_ETH0, &tags, ETH_P_IP, &ipv4(a, len)),
                IpAddr::V6(a) => frame(MAC_ETH0, &tags, ETH_P_IPV6, &ipv6(a, len + 20)),
            };
            match rng.below(4) {
                // Truncated anywhere after the Ethernet header (test_run wants 14 bytes).
                0 => f.truncate(14 + rng.below(f.len() - 13)),
                // Random bytes flipped, in the headers most of the time.
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(f.len().min(64));
                        f[at] = rng.next() as u8;
                    }
                }
                // Pure noise.
                2 => {
                    let n = 14 + rng.below(300);
                    f = (0..n).map(|_| rng.next() as u8).collect();
                }
                _ => {}
            }
            (f, devices[rng.below(devices.len())])
        })
        .collect();
    bed.ns.enter(|| {
        for (i, (frame, ifindex)) in frames.iter().enumerate() {
            let got = match guard.test_run(frame, &SkbCtx::on(*ifindex).bytes()) {
                Ok((got, _)) => got,
                Err(_) if refused_by_test_run(frame) => {
                    refused += 1;
                    continue;
                }
                Err(e) => panic!("frame {i} ({frame:02x?}): {e:#}"),
            };
            let (verdict, uplink) = model(&entries, frame, *ifindex);
            assert_eq!(
                got,
                return_code(&verdict),
                "frame {i} on ifindex {ifindex}: {frame:02x?}"
            );
            if let Some(uplink) = uplink {
                let counters = expected.get_mut(&uplink).expect("an entry's uplink");
                match verdict {
                    Verdict::Pass => counters.passed += 1,
                    Verdict::Redirect { .. } => {
                        counters.redirected += 1;
                        counters.bytes_redirected += frame.len() as u64;
                    }
                    Verdict::DropTooBig { .. } => counters.dropped_too_big += 1,
                }
            }
            if let Verdict::Redirect { via, .. } = verdict {
                redirects_seen += 1;
                via_next_hop += u64::from(via.is_some());
            }
        }
    });
    eprintln!(
        "{FRAMES} frames: {redirects_seen} redirected ({via_next_hop} with a next hop), \
         {refused} refused by test_run"
    );
    assert!(refused < FRAMES / 10, "test_run refused {refused} frames");
    assert!(
        redirects_seen > 1000,
        "the noise must exercise redirects too: {redirects_seen}"
    );
    assert!(
        via_next_hop > 1000 && redirects_seen - via_next_hop > 1000,
        "both redirect forms must be exercised: {via_next_hop} of {redirects_seen}"
    );
    // Counted by the program in the kernel, predicted by the model on the host: passes,
    // redirects and their bytes, drops, and no failed redirect, per uplink.
    assert_eq!(guard.counters().unwrap(), expected, "counters");
}
