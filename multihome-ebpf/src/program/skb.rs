//! The skb seen as a frame (`FrameBytes`) and the metadata the decision needs.

use aya_ebpf::programs::TcContext;
use multihome_ebpf::{FrameBytes, Vlan};

/// The skb under the program. Reads go straight to the linear area (direct packet access: no
/// helper call, which is most of the pass path's cost); a read reaching past it falls back to
/// `bpf_skb_load_bytes`, which also sees non-linear data, so a frame parses the same either way.
pub(crate) struct Skb<'a> {
    ctx: &'a TcContext,
    /// `skb->data` and `skb->data_end`, read once: no helper the parser runs under moves them.
    data: usize,
    data_end: usize,
}

impl<'a> Skb<'a> {
    #[inline(always)]
    pub(crate) fn new(ctx: &'a TcContext) -> Self {
        Self {
            ctx,
            data: ctx.data(),
            data_end: ctx.data_end(),
        }
    }

    fn raw(&self) -> &aya_ebpf::bindings::__sk_buff {
        // SAFETY: the context pointer is valid for the whole run.
        unsafe { &*self.ctx.skb.skb }
    }

    /// The device the packet is leaving through.
    #[inline(always)]
    pub(crate) fn ifindex(&self) -> u32 {
        self.raw().ifindex
    }

    /// The packet's mark: its socket's, for a steered one.
    #[inline(always)]
    pub(crate) fn mark(&self) -> u32 {
        self.raw().mark
    }

    /// The id of a tag the kernel holds outside the packet bytes, if any.
    #[inline(always)]
    pub(crate) fn accelerated_vlan(&self) -> Vlan {
        let skb = self.raw();
        if skb.vlan_present != 0 {
            Vlan::tag(skb.vlan_tci as u16)
        } else {
            Vlan::NONE
        }
    }

    /// A GSO packet is cut to the device's size later, so its length says nothing about fit.
    #[inline(always)]
    pub(crate) fn is_gso(&self) -> bool {
        let skb = self.raw();
        skb.gso_segs > 1 || skb.gso_size != 0
    }
}

impl FrameBytes for Skb<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.len() as usize
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // Pointer against `data_end`, in this shape, is the check the verifier understands.
        let start = self.data + offset;
        if start + N <= self.data_end {
            // SAFETY: `start..start + N` lies inside the linear area, checked just above.
            return Some(unsafe { (start as *const [u8; N]).read_unaligned() });
        }
        self.ctx.load::<[u8; N]>(offset).ok()
    }
}
