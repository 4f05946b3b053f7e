//! Ethernet frame parsing, generic over where the bytes come from: a slice on the host, the skb
//! in the kernel (direct packet access to its linear area, `bpf_skb_load_bytes` past it: see the
//! program's `skb`). Every read is bounds-checked by the source, so a truncated or malformed frame
//! yields `None` (the guard passes it untouched).

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// At most this many in-packet tags are skipped (802.1ad outer + 802.1Q inner).
const MAX_TAGS: usize = 2;

/// A source of frame bytes.
#[allow(
    clippy::len_without_is_empty,
    reason = "`is_empty` would be dead code: an empty frame simply fails to parse"
)]
pub trait FrameBytes {
    /// Length of the whole frame.
    fn len(&self) -> usize;
    /// `N` bytes at `offset`, or `None` past the end.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl FrameBytes for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// A packet's source (or destination) address, network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// A packet's destination address: the same shape as its source.
pub type Destination = Source;

/// A frame's outermost VLAN id, or none. Not an `Option<u16>`: `None` leaves the payload bytes
/// undefined, and the guard then copies them (LLVM keeps such a value in a stack slot it writes
/// only on the tagged path); the verifiers of kernels before 5.12 refuse any read of a stack
/// slot never written ("invalid read from stack", seen on Debian's 5.10.0-30). Every bit of this
/// is always defined.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Vlan(u16);

impl Vlan {
    /// No tag (no 12-bit VLAN id has this value).
    pub const NONE: Vlan = Vlan(u16::MAX);

    /// The id of a tag control information field (its low 12 bits).
    #[inline(always)]
    pub fn tag(tci: u16) -> Vlan {
        Vlan(tci & 0x0fff)
    }

    #[inline(always)]
    pub fn is_some(self) -> bool {
        self != Vlan::NONE
    }

    #[inline(always)]
    pub fn is_none(self) -> bool {
        self == Vlan::NONE
    }

    /// Whether the frame carries a tag with VLAN id `id`.
    #[inline(always)]
    pub fn is(self, id: u16) -> bool {
        self.is_some() && self.0 == id
    }

    /// The id, if there is a tag.
    pub fn id(self) -> Option<u16> {
        self.is_some().then_some(self.0)
    }
}

impl From<Option<u16>> for Vlan {
    fn from(id: Option<u16>) -> Vlan {
        id.map_or(Vlan::NONE, Vlan::tag)
    }
}

impl core::fmt::Debug for Vlan {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.id() {
            Some(id) => write!(f, "Vlan({id})"),
            None => f.write_str("Vlan(none)"),
        }
    }
}

/// What the decision needs to know about a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src_mac: [u8; 6],
    /// The outermost VLAN id: the skb's accelerated tag if any, else the first in-packet tag.
    pub vlan: Vlan,
    /// Whether a tag sits in the packet bytes (as opposed to only in `skb->vlan_tci`).
    pub tag_in_packet: bool,
    pub src: Source,
    /// Of the same family as `src`; the decision needs it to tell on-link from off-link.
    pub dst: Destination,
    /// Bytes from the network header to the end of the frame.
    pub l3_len: u32,
    /// The source's 32-bit words folded into one, for the source filter
    /// (`crate::source_filter`). Folded here, in the family's own branch: folded later from
    /// `src`, LLVM folds the unset bytes of an IPv4 `Source` too (and discards the result), and
    /// the verifier refuses code that reads never-written registers.
    pub src_fold: u32,
}

/// Parses Ethernet, up to two 802.1Q/802.1ad tags, and the IPv4 or IPv6 source and destination
/// addresses.
/// `skb_vlan` is the id of a tag the kernel holds outside the packet bytes (`skb->vlan_tci`).
#[inline(always)]
pub fn parse<B: FrameBytes + ?Sized>(bytes: &B, skb_vlan: Vlan) -> Option<Frame> {
    let src_mac: [u8; 6] = bytes.read(6)?;
    let mut ethertype = u16::from_be_bytes(bytes.read(12)?);
    let mut offset = ETH_HLEN;
    let mut in_packet_vlan = Vlan::NONE;
    for _ in 0..MAX_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tci = u16::from_be_bytes(bytes.read(offset)?);
        if in_packet_vlan.is_none() {
            in_packet_vlan = Vlan::tag(tci);
        }
        ethertype = u16::from_be_bytes(bytes.read(offset + 2)?);
        offset += 4;
    }
    let (src, dst, src_fold) = match ethertype {
        ETH_P_IP => {
            let [version_ihl] = bytes.read::<1>(offset)?;
            if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
                return None;
            }
            let src = bytes.read(offset + 12)?;
            (
                Source::V4(src),
                Source::V4(bytes.read(offset + 16)?),
                fold(&src),
            )
        }
        ETH_P_IPV6 => {
            let [version] = bytes.read::<1>(offset)?;
            if version >> 4 != 6 {
                return None;
            }
            let src = bytes.read(offset + 8)?;
            (
                Source::V6(src),
                Source::V6(bytes.read(offset + 24)?),
                fold(&src),
            )
        }
        _ => return None,
    };
    Some(Frame {
        src_mac,
        vlan: if skb_vlan.is_some() {
            skb_vlan
        } else {
            in_packet_vlan
        },
        tag_in_packet: in_packet_vlan.is_some(),
        src,
        dst,
        l3_len: (bytes.len() - offset) as u32,
        src_fold,
    })
}

/// An address's 32-bit words, XORed (one word for IPv4).
#[inline(always)]
pub fn fold<const N: usize>(addr: &[u8; N]) -> u32 {
    let mut folded = 0;
    for word in addr.chunks_exact(4) {
        folded ^= u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1];
        f.extend_from_slice(&SRC_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(src: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&[203, 0, 113, 10]);
        h.extend_from_slice(&[0; 8]);
        h
    }

    fn ipv6(src: [u8; 16]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        h.extend_from_slice(&src);
        h.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        h.extend_from_slice(&[0; 8]);
        h
    }

    #[test]
    fn a_vlan_is_a_12_bit_id_or_none() {
        assert_eq!(
            Vlan::tag(0x2066),
            Vlan::tag(102),
            "PCP and DEI are not the id"
        );
        assert_eq!(Vlan::from(Some(102)).id(), Some(102));
        assert_eq!(Vlan::from(None), Vlan::NONE);
        assert!(Vlan::tag(0).is_some(), "a priority tag is a tag");
        assert!((0..=0x0fff).all(|id| !Vlan::NONE.is(id) && Vlan::tag(id).is(id)));
        assert!(!Vlan::tag(101).is(102));
    }

    #[test]
    fn untagged_ipv4() {
        let mut f = eth(ETH_P_IP);
        f.extend(ipv4([192, 168, 0, 100]));
        let p = parse(f.as_slice(), Vlan::NONE).unwrap();
        assert_eq!(p.src, Source::V4([192, 168, 0, 100]));
        assert_eq!(p.dst, Source::V4([203, 0, 113, 10]));
        assert_eq!(p.src_mac, SRC_MAC);
        assert_eq!(p.vlan, Vlan::NONE);
        assert!(!p.tag_in_packet);
        assert_eq!(p.l3_len, 28);
        assert_eq!(p.src_fold, u32::from_be_bytes([192, 168, 0, 100]));
    }

    #[test]
    fn tagged_ipv6_in_packet() {
        let mut f = eth(ETH_P_8021Q);
        f.extend_from_slice(&[0x20, 102]); // PCP 1, VID 102
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        let src = [0x20, 1, 0xd, 0xb8, 0, 0xb, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        f.extend(ipv6(src));
        let p = parse(f.as_slice(), Vlan::NONE).unwrap();
        assert_eq!(p.src, Source::V6(src));
        assert_eq!(
            p.dst,
            Source::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10])
        );
        assert_eq!(p.vlan, Vlan::tag(102));
        assert_eq!(p.vlan.id(), Some(102));
        assert!(p.tag_in_packet);
        assert_eq!(p.l3_len, 48);
        // What user space folds for the source filter is what the parser folds.
        assert_eq!(p.src_fold, crate::source_filter::fold_of(&p.src));
        assert_eq!(p.src_fold, 0x2001_0db8 ^ 0x000b_0000 ^ 2);
    }

    #[test]
    fn qinq_reports_the_outer_tag() {
        let mut f = eth(ETH_P_8021AD);
        f.extend_from_slice(&[0, 7]);
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&[0, 101]);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend(ipv4([192, 168, 0, 7]));
        assert_eq!(parse(f.as_slice(), Vlan::NONE).unwrap().vlan, Vlan::tag(7));
    }

    #[test]
    fn skb_tag_wins_over_in_packet_tag() {
        let mut f = eth(ETH_P_IP);
        f.extend(ipv4([192, 168, 0, 100]));
        let p = parse(f.as_slice(), Vlan::tag(101)).unwrap();
        assert_eq!(p.vlan, Vlan::tag(101));
        assert!(!p.tag_in_packet);
    }

    #[test]
    fn truncated_and_foreign_frames_are_not_parsed() {
        let mut f = eth(ETH_P_IP);
        f.extend(ipv4([192, 168, 0, 100]));
        // The destination ends 20 bytes into the IPv4 header.
        for cut in 0..ETH_HLEN + 20 {
            assert_eq!(parse(&f[..cut], Vlan::NONE), None, "cut at {cut}");
        }
        let mut arp = eth(0x0806);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(parse(arp.as_slice(), Vlan::NONE), None);
        let mut v6 = eth(ETH_P_IPV6);
        v6.extend(ipv6([
            0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ]));
        // The destination ends 40 bytes into the IPv6 header.
        for cut in 0..ETH_HLEN + 40 {
            assert_eq!(parse(&v6[..cut], Vlan::NONE), None, "IPv6 cut at {cut}");
        }
        assert!(parse(&v6[..ETH_HLEN + 40], Vlan::NONE).is_some());
        let mut bad_version = eth(ETH_P_IP);
        bad_version.extend(ipv6([0; 16]));
        assert_eq!(parse(bad_version.as_slice(), Vlan::NONE), None);
    }
}
