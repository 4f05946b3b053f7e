//! Map layouts. They are `#[repr(C)]` without implicit padding so that user space can view them
//! as plain bytes (bytemuck) and bpftool can print them by field name from the program's BTF.

/// Names of the maps, which are also their pin names under the pin directory.
pub const MAP_SRC_V4: &str = "SRC_V4";
pub const MAP_SRC_V6: &str = "SRC_V6";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_OWN_SOURCES: &str = "OWN_SOURCES";
pub const MAP_SOURCE_FILTER: &str = "SOURCE_FILTER";
/// Steering (`crate::steer`): cgroup id -> mark, mark -> its uplink's device, their counters.
pub const MAP_STEER: &str = "STEER";
pub const MAP_MARKS: &str = "MARKS";
pub const MAP_STEER_COUNTERS: &str = "STEER_COUNTERS";

/// Capacity of each source map: a few addresses for each of hundreds of uplinks.
pub const MAX_SOURCES: u32 = 4096;
/// Capacity of the counters map: one slot per uplink, slot 0 meaning "not counted", so 1023
/// uplinks are counted at a time.
pub const MAX_UPLINKS: u32 = 1024;

/// Key of the IPv4 source map: the packet's source address, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SrcV4 {
    pub addr: [u8; 4],
}

/// Key of the IPv6 source map: the packet's source address, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SrcV6 {
    pub addr: [u8; 16],
}

/// Where a packet with a given source address must leave.
///
/// `prefix_len` and `gateway` matter to IPv6 only: an off-link IPv6 packet is redirected with the
/// gateway as explicit next hop (see `Verdict::Redirect`); for IPv4 the kernel picks the next hop
/// after the redirect, and they are kept so that a `bpftool map dump` tells the whole story.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Egress {
    /// The uplink owning the source address: where a misrouted packet is redirected.
    pub uplink_ifindex: u32,
    /// The uplink's parent (IFLA_LINK), 0 when it has none.
    pub lower_ifindex: u32,
    /// The uplink's MTU: a redirected packet larger than this is dropped and counted.
    pub mtu: u32,
    /// 802.1Q id when the uplink is a VLAN child of `lower_ifindex`, else 0.
    pub vlan_id: u16,
    /// 1 when the uplink is a MAC-based child (macvlan) recognised on its parent by `mac`.
    pub match_mac: u8,
    pub prefix_len: u8,
    /// The uplink's own MAC address.
    pub mac: [u8; 6],
    /// The uplink's slot in the counters map, assigned by user space's map layer when it writes
    /// the entry (the plan leaves it 0, "not counted"): an array index the verifier turns into
    /// a few instructions, where a per-CPU hash keyed by ifindex cost a lookup and an insert
    /// per packet (about 30 ns of the pass path).
    pub counter_slot: u16,
    /// The uplink's gateway; IPv4 in the first four bytes, all zero when unknown. For IPv6
    /// usually the router's link-local address, which names a neighbour on the uplink itself.
    pub gateway: [u8; 16],
}

/// A slot of the counters map (a per-CPU array indexed by `Egress::counter_slot`): whose
/// counters these are, and the counters on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CounterSlot {
    /// The uplink owning the slot, 0 when it is free. Written by user space when it assigns
    /// the slot, never by the program, so that the map says by itself whose counters it holds:
    /// to `multihome status`, to a restarted daemon and to `bpftool map dump`.
    pub uplink_ifindex: u32,
    pub _pad: u32,
    pub counters: Counters,
}

/// Per-uplink, per-CPU packet counters, summed by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counters {
    /// Packets with the uplink's source already on the right device.
    pub passed: u64,
    /// Packets redirected to the uplink.
    pub redirected: u64,
    /// Redirects the kernel refused (the packet is dropped).
    pub redirect_failed: u64,
    /// Bytes of the redirected packets.
    pub bytes_redirected: u64,
    /// Misrouted packets larger than the uplink's MTU, dropped.
    pub dropped_too_big: u64,
}

impl Counters {
    /// Adds another CPU's counters (user space sums the per-CPU values).
    pub fn add(&mut self, other: &Counters) {
        self.passed += other.passed;
        self.redirected += other.redirected;
        self.redirect_failed += other.redirect_failed;
        self.bytes_redirected += other.bytes_redirected;
        self.dropped_too_big += other.dropped_too_big;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<Egress>(), 40);
        assert_eq!(core::mem::size_of::<Counters>(), 40);
        assert_eq!(core::mem::size_of::<CounterSlot>(), 48);
        assert_eq!(core::mem::size_of::<SrcV4>(), 4);
        assert_eq!(core::mem::size_of::<SrcV6>(), 16);
    }
}
