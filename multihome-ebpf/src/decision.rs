//! The guard's one decision: given where a packet is leaving and the entry for its source
//! address, pass it, redirect it to its uplink, or drop it because it cannot fit there.

use crate::maps::Egress;

/// What the program knows about a packet at the egress hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The device the packet is leaving through (`skb->ifindex`).
    pub ifindex: u32,
    /// Its outermost VLAN id, from `skb->vlan_tci` or the packet bytes.
    pub vlan: Option<u16>,
    pub src_mac: [u8; 6],
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
    Redirect { ifindex: u32, pop_tag: bool },
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
    }
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
        return packet.vlan == Some(entry.vlan_id);
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
            _pad: [0; 2],
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
            vlan,
            src_mac,
            l3_len: 100,
            gso: false,
        }
    }

    const REDIRECT: Verdict = Verdict::Redirect {
        ifindex: WAN2,
        pop_tag: false,
    };
    const REDIRECT_POP: Verdict = Verdict::Redirect {
        ifindex: WAN2,
        pop_tag: true,
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
}
