//! The guard's parser and decision on arbitrary frames, devices and map entries: `parse` never
//! panics and reads what it reports from where it says; `decide` never redirects without an
//! entry, never to the device the packet is on, and drops only a misrouted, non-GSO packet
//! larger than its uplink's MTU. A redirected packet passes on its target (no loop).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use multihome_ebpf::{
    decide, parse, source_filter, Egress, Frame, Packet, Source, Verdict, Vlan,
};

/// Few distinct ifindexes, so that the uplink, its parent and the device coincide often.
#[derive(Arbitrary, Debug)]
struct Input {
    skb_vlan: Option<u16>,
    gso: bool,
    /// The device the packet leaves through, among 1..=4.
    device: u8,
    entry: Option<Entry>,
    frame: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Entry {
    uplink: u8,
    /// 0: no parent.
    lower: u8,
    mtu: u16,
    /// Take the frame's VLAN id / source MAC, so that the parent's checks can match.
    vlan_of_frame: bool,
    vlan_id: u16,
    match_mac: bool,
    mac_of_frame: bool,
    mac: [u8; 6],
}

const ETH_HLEN: usize = 14;

fuzz_target!(|input: Input| {
    let bytes = input.frame.as_slice();
    let Some(frame) = parse(bytes, input.skb_vlan.into()) else {
        return;
    };
    check_frame(bytes, input.skb_vlan, &frame);
    let packet = Packet {
        ifindex: u32::from(input.device % 4) + 1,
        vlan: frame.vlan,
        src_mac: frame.src_mac,
        src: frame.src,
        dst: frame.dst,
        l3_len: frame.l3_len,
        gso: input.gso,
    };
    let entry = input.entry.map(|e| egress(&e, &frame));
    let verdict = decide(&packet, entry.as_ref());
    let Some(entry) = entry else {
        assert_eq!(verdict, Verdict::Pass, "no entry must pass: {packet:?}");
        return;
    };
    match verdict {
        Verdict::Pass => {}
        Verdict::Redirect { ifindex, pop_tag, .. } => {
            assert_eq!(
                ifindex, entry.uplink_ifindex,
                "redirect elsewhere than the uplink"
            );
            assert_ne!(ifindex, packet.ifindex, "redirect to the device it is on");
            assert_eq!(pop_tag, packet.vlan.is_some(), "a tag would leak");
            assert!(
                packet.gso || packet.l3_len <= entry.mtu,
                "too big, redirected"
            );
            // On the target, without its tag, the packet passes: no redirect loop.
            let redirected = Packet {
                ifindex,
                vlan: Vlan::NONE,
                ..packet
            };
            assert_eq!(decide(&redirected, Some(&entry)), Verdict::Pass, "loop");
        }
        Verdict::DropTooBig { ifindex } => {
            assert_eq!(ifindex, entry.uplink_ifindex);
            assert_ne!(
                packet.ifindex, entry.uplink_ifindex,
                "dropped on its own uplink"
            );
            assert!(!packet.gso, "a GSO packet dropped for its length");
            assert!(packet.l3_len > entry.mtu, "dropped though it fits");
        }
    }
});

fn egress(e: &Entry, frame: &Frame) -> Egress {
    Egress {
        uplink_ifindex: u32::from(e.uplink % 4) + 1,
        lower_ifindex: u32::from(e.lower % 5),
        mtu: u32::from(e.mtu),
        vlan_id: match (e.vlan_of_frame, frame.vlan.id()) {
            (true, Some(vlan)) => vlan,
            _ => e.vlan_id & 0x0fff,
        },
        match_mac: u8::from(e.match_mac),
        prefix_len: 24,
        mac: if e.mac_of_frame { frame.src_mac } else { e.mac },
        counter_slot: 0,
        gateway: [0; 16],
    }
}

/// What `parse` reports is where it says it is in the bytes.
fn check_frame(bytes: &[u8], skb_vlan: Option<u16>, frame: &Frame) {
    let l3 = bytes.len() - frame.l3_len as usize;
    assert!(
        [ETH_HLEN, ETH_HLEN + 4, ETH_HLEN + 8].contains(&l3),
        "network header at {l3}"
    );
    assert_eq!(frame.tag_in_packet, l3 > ETH_HLEN);
    assert_eq!(frame.src_mac, bytes[6..12]);
    let first_tag = (l3 > ETH_HLEN).then(|| u16::from_be_bytes([bytes[14], bytes[15]]) & 0x0fff);
    assert_eq!(frame.vlan, Vlan::from(skb_vlan.or(first_tag)));
    match frame.src {
        Source::V4(src) => {
            assert_eq!(bytes[l3] >> 4, 4);
            assert_eq!(src, bytes[l3 + 12..l3 + 16]);
        }
        Source::V6(src) => {
            assert_eq!(bytes[l3] >> 4, 6);
            assert_eq!(src, bytes[l3 + 8..l3 + 24]);
        }
    }
    assert_eq!(frame.src_fold, source_filter::fold_of(&frame.src));
}
