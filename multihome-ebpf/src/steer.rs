//! Steering a program onto an uplink (`multihome exec`, per-uplink slices): the socket mark of
//! each uplink, the layouts of the steering maps, and the pure parts of the two checks the kernel
//! runs. The cgroup program (`sock_create`) gives every IPv4/IPv6 socket created under the
//! steering root the mark of the deepest steered cgroup it is in, and refuses the socket when
//! there is none (fail closed); policy routing then takes the marked socket to the uplink's table.
//! The TC guard drops a marked packet that leaves through another uplink's device.

/// Every steering mark has these high bits ("mh"); the low 16 are the uplink's table's.
pub const MARK_BASE: u32 = 0x6d68_0000;
pub const MARK_MASK: u32 = 0xffff_0000;

/// The mark of the uplink whose routing table is `table`.
pub const fn mark_of_table(table: u32) -> u32 {
    MARK_BASE | (table & 0xffff)
}

/// Whether `mark` is a steering mark (of any uplink).
#[inline(always)]
pub const fn is_steering_mark(mark: u32) -> bool {
    mark & MARK_MASK == MARK_BASE
}

/// How deep the program looks for a steered ancestor: the cgroup levels it asks for, from the
/// root's children down. systemd's deepest units sit at level 4 or 5.
pub const MAX_LEVELS: i32 = 16;

/// Capacity of the steering map: steered cgroups (one per uplink slice, plus any the operator
/// maps below them).
pub const MAX_STEERED: u32 = 1024;

/// The value of the steering map (key: a cgroup id, the directory's inode number on cgroup2), a
/// per-CPU hash: every CPU has its copy, with the same mark.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SteerTarget {
    /// The socket mark to give, [`mark_of_table`] of the uplink.
    pub mark: u32,
    pub _pad: u32,
    /// Sockets this entry marked on this CPU.
    pub sockets: u64,
}

/// One slot of the steering counters (a per-CPU array indexed like `COUNTERS`, by the uplink's
/// counters slot). Slot 0 is the host's: sockets refused (created under the steering root in a
/// cgroup no entry covers) and marked packets of an uplink without a device entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SteerCounters {
    /// Marked packets leaving through their own uplink.
    pub marked_passed: u64,
    /// Marked packets about to leave through another uplink's device: dropped.
    pub marked_dropped: u64,
    /// Sockets refused (slot 0 only).
    pub sockets_refused: u64,
    pub _reserved: u64,
}

impl SteerCounters {
    /// Adds another CPU's counters (user space sums the per-CPU values).
    pub fn add(&mut self, other: &SteerCounters) {
        self.marked_passed += other.marked_passed;
        self.marked_dropped += other.marked_dropped;
        self.sockets_refused += other.sockets_refused;
    }
}

/// The entry of the deepest cgroup that has one, given the ancestors' ids from the root's
/// children down (a 0 ends the list, as the kernel's helper answers past the task's own level).
/// The program feeds it `bpf_get_current_ancestor_cgroup_id(1..)`; `lookup` is the map.
#[inline(always)]
pub fn deepest<T>(
    mut ancestor: impl FnMut(i32) -> u64,
    mut lookup: impl FnMut(u64) -> Option<T>,
) -> Option<T> {
    let mut found = None;
    for level in 1..=MAX_LEVELS {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        if let Some(target) = lookup(id) {
            found = Some(target);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_carry_the_table() {
        assert_eq!(mark_of_table(1002), 0x6d68_03ea);
        assert_eq!(mark_of_table(0x1_03ea), 0x6d68_03ea);
        assert!(is_steering_mark(mark_of_table(7)));
        assert!(!is_steering_mark(0));
        assert!(!is_steering_mark(0x0008_0000), "tailscale's mark");
        assert!(!is_steering_mark(0xca6c), "wireguard's mark");
    }

    #[test]
    fn the_deepest_entry_wins() {
        // root's children down: multihome.slice (10), multihome-wan2.slice (20), a unit (30).
        let path = [10u64, 20, 30];
        let ancestor = |level: i32| path.get(level as usize - 1).copied().unwrap_or(0);
        let map = |entries: &'static [(u64, u32)]| {
            move |id: u64| entries.iter().find(|(k, _)| *k == id).map(|(_, m)| *m)
        };
        assert_eq!(deepest(ancestor, map(&[(20, 2)])), Some(2));
        assert_eq!(deepest(ancestor, map(&[(20, 2), (30, 3)])), Some(3));
        assert_eq!(deepest(ancestor, map(&[(30, 3), (20, 2)])), Some(3));
        assert_eq!(deepest(ancestor, map(&[])), None, "no entry: refused");
        assert_eq!(deepest(ancestor, map(&[(40, 4)])), None, "not an ancestor");
        // A task exactly at the root's level stops at once.
        assert_eq!(deepest(|_| 0, map(&[(10, 1)])), None);
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<SteerTarget>(), 16);
        assert_eq!(core::mem::size_of::<SteerCounters>(), 32);
    }
}
