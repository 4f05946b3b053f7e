//! The skb seen as a frame (`FrameBytes`) and the metadata the decision needs.

use aya_ebpf::programs::TcContext;
use multihome_ebpf::FrameBytes;

/// The skb under the program; every read goes through `bpf_skb_load_bytes`, which checks bounds
/// (and works on non-linear skbs, unlike direct packet access).
pub struct Skb<'a>(pub &'a TcContext);

impl Skb<'_> {
    fn raw(&self) -> &aya_ebpf::bindings::__sk_buff {
        // SAFETY: the context pointer is valid for the whole run.
        unsafe { &*self.0.skb.skb }
    }

    /// The device the packet is leaving through.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.raw().ifindex
    }

    /// The id of a tag the kernel holds outside the packet bytes, if any.
    #[inline(always)]
    pub fn accelerated_vlan(&self) -> Option<u16> {
        let skb = self.raw();
        (skb.vlan_present != 0).then_some((skb.vlan_tci & 0x0fff) as u16)
    }

    /// A GSO packet is cut to the device's size later, so its length says nothing about fit.
    #[inline(always)]
    pub fn is_gso(&self) -> bool {
        let skb = self.raw();
        skb.gso_segs > 1 || skb.gso_size != 0
    }
}

impl FrameBytes for Skb<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}
