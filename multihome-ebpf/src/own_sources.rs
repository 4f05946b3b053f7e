//! A device's own sources: the addresses whose packets pass on that device as they are, listed
//! per device so that the program can pass them after one array lookup instead of a hash lookup
//! of the source address (the hash lookup is most of the pass path's cost, see the benchmark).
//!
//! The lists are derived by user space from the source maps' entries ([`claims`]), and are
//! written so that every listed source is one the source maps also pass on that device: a
//! source's old claims are removed before its entry changes and its new ones added after. The
//! lists may be incomplete (a full list, a device past [`OWN_SOURCES_DEVICES`], a write still to
//! come); a source not listed takes the hash lookup, so [`OwnSources::pass`] only ever answers
//! "pass" where `decide` would.
//!
//! One limit, of a single run during a write: the kernel copies a new list over the old one
//! without a lock, so a run reading it meanwhile may see an item half old, half new. Old and new
//! items are both right; a mix of two different addresses is another address, and a packet from
//! exactly that address, if it belongs to another uplink, would pass once. Uplinks sharing a
//! subnet (the common case) differ in the last bytes only, where a mix is one or the other.

use crate::{
    frame::{Source, Vlan},
    maps::Egress,
};

/// Slots in the map: one per ifindex below this. A device with a larger ifindex has no list.
pub const OWN_SOURCES_DEVICES: u32 = 4096;
/// IPv4 and IPv6 sources a list holds.
pub const OWN_V4: usize = 8;
pub const OWN_V6: usize = 4;

/// One listed IPv4 source. An all-zero address ends the list (0.0.0.0 never has an entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct OwnV4 {
    pub addr: [u8; 4],
    /// 0: any frame; else only frames whose outermost tag is this VLAN id (a VLAN child's
    /// source on its parent).
    pub vlan_id: u16,
    /// The counters slot of the source's uplink.
    pub counter_slot: u16,
}

/// One listed IPv6 source; `::` ends the list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct OwnV6 {
    pub addr: [u8; 16],
    pub vlan_id: u16,
    pub counter_slot: u16,
    pub _pad: u32,
}

/// The value of the map's slot for one device (key: its ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct OwnSources {
    pub v4: [OwnV4; OWN_V4],
    pub v6: [OwnV6; OWN_V6],
}

impl OwnSources {
    /// The counters slot to count a packet from `src`, whose outermost tag is `vlan`, as passed,
    /// when this device's list says it passes; `None` when the list does not know it.
    #[inline(always)]
    pub fn pass(&self, src: &Source, vlan: Vlan) -> Option<u16> {
        let tag_fits = |vlan_id: u16| vlan_id == 0 || vlan.is(vlan_id);
        match src {
            Source::V4(addr) => {
                for own in &self.v4 {
                    if own.addr == [0; 4] {
                        return None;
                    }
                    if own.addr == *addr && tag_fits(own.vlan_id) {
                        return Some(own.counter_slot);
                    }
                }
            }
            Source::V6(addr) => {
                for own in &self.v6 {
                    if own.addr == [0; 16] {
                        return None;
                    }
                    if own.addr == *addr && tag_fits(own.vlan_id) {
                        return Some(own.counter_slot);
                    }
                }
            }
        }
        None
    }
}

/// The devices on which an entry's source passes as it is, with the tag a frame must carry
/// there (0: any): the uplink itself, and the parent of a VLAN child for frames with its tag.
/// A MAC-based child, or a child its parent cannot tell apart, is left to the hash lookup.
pub fn claims(entry: &Egress) -> impl Iterator<Item = (u32, u16)> {
    let parent = (entry.lower_ifindex != 0 && entry.vlan_id != 0)
        .then_some((entry.lower_ifindex, entry.vlan_id));
    core::iter::once((entry.uplink_ifindex, 0)).chain(parent)
}
