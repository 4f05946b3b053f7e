//! The guard's one decision: given where a packet is leaving and the entry for its source
//! address, pass it, redirect it to its uplink, or drop it because it cannot fit there.

use crate::{
    frame::{Source, Vlan},
    maps::Egress,
};

/// What the program knows about a packet at the egress hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The device the packet is leaving through (`skb->ifindex`).
    pub ifindex: u32,
    /// Its outermost VLAN id, from `skb->vlan_tci` or the packet bytes.
    pub vlan: Vlan,
    pub src_mac: [u8; 6],
    /// Its source and destination addresses (of one family): an off-link IPv6 destination is
    /// redirected with an explicit next hop, see [`Verdict::Redirect`].
    pub src: Source,
    pub dst: Source,
    pub l3_len: u32,
    /// A GSO packet is segmented to the device's size later; its length says nothing about fit.
    pub gso: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leave the packet alone.
    Pass,
    /// Send it out of `ifindex` instead, first removing the VLAN tag it carries, if any: a stale
    /// tag must not leak into the target device.
    ///
    /// `via` is the next hop handed to `bpf_redirect_neigh`; `None` (NULL) lets the kernel route
    /// the packet again with `oif = ifindex` and attach that new route. It is `Some(gateway)`
    /// only for an IPv6 packet whose destination is off-link (outside the source address's
    /// prefix) and whose entry knows the gateway. Why IPv6 differs (net/core/filter.c,
    /// `__bpf_redirect_neigh_v6`): its re-route is `ipv6_dst_lookup_flow` without a socket, where
    /// the oif of a global destination is only a preference (no `RT6_LOOKUP_F_IFACE`), so in
    /// guard-only mode (no `oif U` rule) the lower-metric default route of another uplink wins
    /// and the kernel solicits that uplink's link-local gateway on `ifindex`, which never answers.
    /// IPv4's `ip_route_output_flow` honours the oif, so IPv4 keeps NULL.
    ///
    /// The price of a next hop, for either family: the kernel skips the lookup and the packet
    /// keeps its old route. A packet that has to wait for the gateway's neighbour entry is
    /// queued on the right device's entry, but `neigh_update` re-sends it through the neighbour
    /// of that old route: it leaves `ifindex` with the other uplink's MAC addresses and is lost
    /// (measured). So only packets towards an unresolved gateway are at risk; a router's
    /// advertisements keep its entry resolved (STALE is enough).
    Redirect {
        ifindex: u32,
        pop_tag: bool,
        via: Option<[u8; 16]>,
    },
    /// It belongs to `ifindex`, but is larger than that device's MTU.
    DropTooBig { ifindex: u32 },
}

/// Decides for one packet. `entry` is the map's entry for the packet's source address; without
/// one (ARP, DHCP from 0.0.0.0, any foreign source) the packet passes.
#[inline(always)]
pub fn decide(packet: &Packet, entry: Option<&Egress>) -> Verdict {
    let Some(entry) = entry else {
        return Verdict::Pass;
    };
    if on_its_uplink(packet, entry) {
        // Also what breaks a redirect loop: the redirected packet comes back through this hook on
        // the target device, and must pass there.
        return Verdict::Pass;
    }
    if !packet.gso && packet.l3_len > entry.mtu {
        return Verdict::DropTooBig {
            ifindex: entry.uplink_ifindex,
        };
    }
    Verdict::Redirect {
        ifindex: entry.uplink_ifindex,
        pop_tag: packet.vlan.is_some(),
        via: ipv6_next_hop(packet, entry),
    }
}

/// Whether a packet carrying a steering mark may leave here: only through its own uplink (the
/// uplink's device, or its parent in a frame of the uplink's). `uplink` is the marks map's
/// entry for the mark; without one (the uplink has no device now) it may leave nowhere. A marked
/// packet elsewhere is dropped, never redirected: its socket was routed by the uplink's rules,
/// and a missing rule (deleted by another manager) must not turn into traffic through the wrong
/// line.
#[inline(always)]
pub fn marked_passes(packet: &Packet, uplink: Option<&Egress>) -> bool {
    uplink.is_some_and(|uplink| on_its_uplink(packet, uplink))
}

/// The explicit next hop for a redirected packet (see [`Verdict::Redirect`]): the entry's gateway
/// for an IPv6 destination outside the source address's prefix, else `None`. Link-local and
/// multicast destinations are on-link by definition; an all-zero gateway is unknown.
#[inline(always)]
fn ipv6_next_hop(packet: &Packet, entry: &Egress) -> Option<[u8; 16]> {
    let (Source::V6(src), Source::V6(dst)) = (packet.src, packet.dst) else {
        return None;
    };
    let link_local = dst[0] == 0xfe && dst[1] & 0xc0 == 0x80;
    let multicast = dst[0] == 0xff;
    if link_local || multicast || entry.gateway == [0; 16] {
        return None;
    }
    if same_prefix(&src, &dst, entry.prefix_len) {
        return None;
    }
    Some(entry.gateway)
}

/// Whether `a` and `b` agree in their first `prefix_len` bits (all 128 beyond 128). Byte by byte
/// with a fixed bound: 128-bit arithmetic is not available to the BPF target.
#[inline(always)]
fn same_prefix(a: &[u8; 16], b: &[u8; 16], prefix_len: u8) -> bool {
    let full = usize::from(prefix_len / 8);
    let rest = prefix_len % 8;
    let mut differ = 0u8;
    for i in 0..16 {
        let mask = if i < full {
            0xff
        } else if i == full && rest != 0 {
            0xffu8 << (8 - rest)
        } else {
            0
        };
        differ |= (a[i] ^ b[i]) & mask;
    }
    differ == 0
}

/// Whether the packet is already leaving through the entry's uplink: on the uplink itself, or on
/// its parent in a frame that belongs to the uplink (its VLAN tag, or its source MAC for a
/// MAC-based child). A child the parent cannot tell apart (neither) is given the benefit of doubt.
#[inline(always)]
fn on_its_uplink(packet: &Packet, entry: &Egress) -> bool {
    if packet.ifindex == entry.uplink_ifindex {
        return true;
    }
    if entry.lower_ifindex == 0 || packet.ifindex != entry.lower_ifindex {
        return false;
    }
    if entry.vlan_id != 0 {
        return packet.vlan.is(entry.vlan_id);
    }
    if entry.match_mac != 0 {
        return packet.vlan.is_none() && packet.src_mac == entry.mac;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAN1: u32 = 11;
    const WAN2: u32 = 12;
    const ETH0: u32 = 2;
    const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const MAC_ETH0: [u8; 6] = [2, 0, 0, 0, 0, 0xe];

    fn vlan_child(vlan_id: u16) -> Egress {
        Egress {
            uplink_ifindex: WAN2,
            lower_ifindex: ETH0,
            mtu: 1500,
            vlan_id,
            match_mac: 0,
            prefix_len: 24,
            mac: MAC_ETH0,
            counter_slot: 0,
            gateway: [192, 168, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    fn plain_uplink() -> Egress {
        Egress {
            lower_ifindex: 0,
            vlan_id: 0,
            mac: MAC2,
            ..vlan_child(0)
        }
    }

    fn macvlan_child() -> Egress {
        Egress {
            vlan_id: 0,
            match_mac: 1,
            mac: MAC2,
            ..vlan_child(0)
        }
    }

    fn packet(ifindex: u32, vlan: Option<u16>, src_mac: [u8; 6]) -> Packet {
        Packet {
            ifindex,
            vlan: vlan.into(),
            src_mac,
            src: Source::V4([192, 168, 0, 102]),
            dst: Source::V4([203, 0, 113, 10]),
            l3_len: 100,
            gso: false,
        }
    }

    const REDIRECT: Verdict = Verdict::Redirect {
        ifindex: WAN2,
        pop_tag: false,
        via: None,
    };
    const REDIRECT_POP: Verdict = Verdict::Redirect {
        ifindex: WAN2,
        pop_tag: true,
        via: None,
    };

    #[test]
    fn table() {
        let cases: &[(&str, Packet, Option<Egress>, Verdict)] = &[
            (
                "no entry passes",
                packet(WAN1, None, MAC2),
                None,
                Verdict::Pass,
            ),
            (
                "right device",
                packet(WAN2, None, MAC2),
                Some(plain_uplink()),
                Verdict::Pass,
            ),
            (
                "wrong uplink",
                packet(WAN1, None, MAC2),
                Some(plain_uplink()),
                REDIRECT,
            ),
            (
                "parent, right tag",
                packet(ETH0, Some(102), MAC_ETH0),
                Some(vlan_child(102)),
                Verdict::Pass,
            ),
            (
                "parent, wrong tag",
                packet(ETH0, Some(101), MAC_ETH0),
                Some(vlan_child(102)),
                REDIRECT_POP,
            ),
            (
                "parent, untagged",
                packet(ETH0, None, MAC_ETH0),
                Some(vlan_child(102)),
                REDIRECT,
            ),
            (
                "VLAN child, on itself",
                packet(WAN2, None, MAC_ETH0),
                Some(vlan_child(102)),
                Verdict::Pass,
            ),
            (
                "VLAN child, on a sibling",
                packet(WAN1, None, MAC_ETH0),
                Some(vlan_child(102)),
                REDIRECT,
            ),
            (
                "macvlan parent, child's MAC",
                packet(ETH0, None, MAC2),
                Some(macvlan_child()),
                Verdict::Pass,
            ),
            (
                "macvlan parent, parent's MAC",
                packet(ETH0, None, MAC_ETH0),
                Some(macvlan_child()),
                REDIRECT,
            ),
            (
                "macvlan parent, tagged frame with child's MAC",
                packet(ETH0, Some(5), MAC2),
                Some(macvlan_child()),
                REDIRECT_POP,
            ),
            (
                "parent that cannot tell its children apart",
                packet(ETH0, None, MAC_ETH0),
                Some(Egress {
                    vlan_id: 0,
                    match_mac: 0,
                    ..vlan_child(0)
                }),
                Verdict::Pass,
            ),
            (
                "another parent",
                packet(99, Some(102), MAC_ETH0),
                Some(vlan_child(102)),
                REDIRECT_POP,
            ),
        ];
        for (name, packet, entry, want) in cases {
            assert_eq!(decide(packet, entry.as_ref()), *want, "{name}");
        }
    }

    #[test]
    fn marked_packets_leave_through_their_uplink_only() {
        let cases: &[(&str, Packet, Option<Egress>, bool)] = &[
            (
                "own device",
                packet(WAN2, None, MAC2),
                Some(plain_uplink()),
                true,
            ),
            (
                "another uplink",
                packet(WAN1, None, MAC2),
                Some(plain_uplink()),
                false,
            ),
            (
                "uplink without device",
                packet(WAN2, None, MAC2),
                None,
                false,
            ),
            (
                "parent, own tag",
                packet(ETH0, Some(102), MAC_ETH0),
                Some(vlan_child(102)),
                true,
            ),
            (
                "parent, a sibling's tag",
                packet(ETH0, Some(101), MAC_ETH0),
                Some(vlan_child(102)),
                false,
            ),
            (
                "parent, untagged",
                packet(ETH0, None, MAC_ETH0),
                Some(vlan_child(102)),
                false,
            ),
            (
                "macvlan parent, child's MAC",
                packet(ETH0, None, MAC2),
                Some(macvlan_child()),
                true,
            ),
        ];
        for (name, packet, entry, want) in cases {
            assert_eq!(marked_passes(packet, entry.as_ref()), *want, "{name}");
        }
    }

    #[test]
    fn too_big_for_the_target_is_dropped_only_when_misrouted() {
        let entry = plain_uplink();
        let mut big = packet(WAN1, None, MAC2);
        big.l3_len = 1501;
        assert_eq!(
            decide(&big, Some(&entry)),
            Verdict::DropTooBig { ifindex: WAN2 }
        );
        big.l3_len = 1500;
        assert_eq!(decide(&big, Some(&entry)), REDIRECT);
        big.l3_len = 9000;
        big.ifindex = WAN2;
        assert_eq!(decide(&big, Some(&entry)), Verdict::Pass);
    }

    #[test]
    fn gso_packets_are_not_measured_whole() {
        let mut gso = packet(WAN1, None, MAC2);
        gso.l3_len = 64_000;
        gso.gso = true;
        assert_eq!(decide(&gso, Some(&plain_uplink())), REDIRECT);
    }

    /// wan2's IPv6 address, a /64 of 2001:db8:2::, and router B's link-local gateway.
    const V6_SRC: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const V6_GW: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];

    fn v6_entry(gateway: [u8; 16]) -> Egress {
        Egress {
            prefix_len: 64,
            gateway,
            ..plain_uplink()
        }
    }

    fn v6_packet(dst: [u8; 16]) -> Packet {
        Packet {
            src: Source::V6(V6_SRC),
            dst: Source::V6(dst),
            ..packet(WAN1, None, MAC2)
        }
    }

    fn via(verdict: Verdict) -> Option<[u8; 16]> {
        match verdict {
            Verdict::Redirect { via, .. } => via,
            other => panic!("not a redirect: {other:?}"),
        }
    }

    #[test]
    fn ipv6_off_link_with_a_gateway_goes_via_the_gateway() {
        let internet = [0x20, 1, 0xd, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            decide(&v6_packet(internet), Some(&v6_entry(V6_GW))),
            Verdict::Redirect {
                ifindex: WAN2,
                pop_tag: false,
                via: Some(V6_GW),
            }
        );
        // Differs from the source only in the last bit of the /64 prefix.
        let mut neighbour_net = V6_SRC;
        neighbour_net[7] ^= 1;
        assert_eq!(
            via(decide(&v6_packet(neighbour_net), Some(&v6_entry(V6_GW)))),
            Some(V6_GW)
        );
    }

    #[test]
    fn ipv6_on_link_goes_to_the_neighbour_itself() {
        let mut on_link = V6_SRC;
        on_link[15] = 0x77;
        on_link[8] = 0xab; // inside the /64
        let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];
        let multicast = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        for dst in [on_link, link_local, multicast] {
            assert_eq!(
                via(decide(&v6_packet(dst), Some(&v6_entry(V6_GW)))),
                None,
                "{dst:02x?}"
            );
        }
        // Prefix lengths that are not a multiple of eight, and the whole address.
        let mut odd = V6_SRC;
        odd[7] ^= 0x01;
        let entry = |prefix_len| Egress {
            prefix_len,
            ..v6_entry(V6_GW)
        };
        assert_eq!(via(decide(&v6_packet(odd), Some(&entry(63)))), None);
        assert_eq!(via(decide(&v6_packet(odd), Some(&entry(64)))), Some(V6_GW));
        assert_eq!(via(decide(&v6_packet(V6_SRC), Some(&entry(128)))), None);
        let mut host = V6_SRC;
        host[15] ^= 1;
        assert_eq!(
            via(decide(&v6_packet(host), Some(&entry(128)))),
            Some(V6_GW)
        );
        assert_eq!(via(decide(&v6_packet(host), Some(&entry(127)))), None);
        assert_eq!(via(decide(&v6_packet(host), Some(&entry(0)))), None);
    }

    #[test]
    fn ipv6_unknown_gateway_leaves_the_next_hop_to_the_kernel() {
        let internet = [0x20, 1, 0xd, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            via(decide(&v6_packet(internet), Some(&v6_entry([0; 16])))),
            None
        );
    }

    #[test]
    fn ipv4_never_names_a_next_hop() {
        for (dst, prefix_len) in [
            ([203, 0, 113, 10], 24),
            ([192, 168, 0, 1], 24),
            ([192, 168, 1, 1], 24),
            ([10, 0, 0, 1], 0),
        ] {
            let packet = Packet {
                dst: Source::V4(dst),
                ..packet(WAN1, None, MAC2)
            };
            let entry = Egress {
                prefix_len,
                ..plain_uplink()
            };
            assert_eq!(via(decide(&packet, Some(&entry))), None, "{dst:?}");
        }
    }

    #[test]
    fn ipv6_off_link_keeps_popping_the_tag_and_respecting_the_mtu() {
        let internet = [0x20, 1, 0xd, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let tagged = Packet {
            ifindex: ETH0,
            vlan: Vlan::tag(101),
            ..v6_packet(internet)
        };
        let entry = Egress {
            prefix_len: 64,
            gateway: V6_GW,
            ..vlan_child(102)
        };
        assert_eq!(
            decide(&tagged, Some(&entry)),
            Verdict::Redirect {
                ifindex: WAN2,
                pop_tag: true,
                via: Some(V6_GW),
            }
        );
        let big = Packet {
            l3_len: 1501,
            ..v6_packet(internet)
        };
        assert_eq!(
            decide(&big, Some(&v6_entry(V6_GW))),
            Verdict::DropTooBig { ifindex: WAN2 }
        );
    }
}
