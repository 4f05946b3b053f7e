//! The BTF maps (pinned by the loader under their names, see `multihome_ebpf::maps`) and the
//! counter updates.

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use multihome_ebpf::{
    maps::{MAX_SOURCES, MAX_UPLINKS},
    own_sources::OWN_SOURCES_DEVICES,
    steer::MAX_STEERED,
    CounterSlot, Egress, OwnSources, Source, SourceFilter, SrcV4, SrcV6, SteerCounters,
    SteerTarget,
};

#[btf_map]
static SRC_V4: HashMap<SrcV4, Egress, { MAX_SOURCES as usize }> = HashMap::new();

#[btf_map]
static SRC_V6: HashMap<SrcV6, Egress, { MAX_SOURCES as usize }> = HashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<CounterSlot, { MAX_UPLINKS as usize }> = PerCpuArray::new();

#[btf_map]
static OWN_SOURCES: Array<OwnSources, { OWN_SOURCES_DEVICES as usize }> = Array::new();

/// The list of sources that pass on device `ifindex` as they are; `None` past the map's end.
#[inline(always)]
pub(crate) fn own_sources(ifindex: u32) -> Option<&'static OwnSources> {
    OWN_SOURCES.get(ifindex)
}

#[btf_map]
static SOURCE_FILTER: Array<SourceFilter, 1> = Array::new();

/// Whether the source whose words fold to `src_fold` may have an entry (see
/// `multihome_ebpf::source_filter`).
#[inline(always)]
pub(crate) fn may_have_entry(src_fold: u32) -> bool {
    SOURCE_FILTER
        .get(0)
        .is_none_or(|filter| filter.may_have(src_fold))
}

/// The entry for a packet's source address.
#[inline(always)]
pub(crate) fn lookup(src: &Source) -> Option<&'static Egress> {
    // SAFETY: the entry is only read during this run; user space replaces entries whole, and a
    // concurrently recycled slot yields at worst one packet decided on a fresh entry.
    unsafe {
        match src {
            Source::V4(addr) => SRC_V4.get(SrcV4 { addr: *addr }),
            Source::V6(addr) => SRC_V6.get(SrcV6 { addr: *addr }),
        }
    }
}

/// Which counter to bump.
#[derive(Clone, Copy)]
pub(crate) enum Counter {
    Passed,
    Redirected,
    RedirectFailed,
    DroppedTooBig,
}

/// Bumps `counter` (and `bytes_redirected` by `bytes`) in counters slot `slot` on this CPU.
/// Slot 0 is "not counted" (an entry user space wrote without one); the map itself refuses
/// indexes past its end.
#[inline(always)]
pub(crate) fn count(slot: u16, counter: Counter, bytes: u64) {
    if slot == 0 {
        return;
    }
    let Some(slot) = COUNTERS.get_ptr_mut(u32::from(slot)) else {
        return;
    };
    // SAFETY: a per-CPU slot is only written by this CPU, and the program is not preempted.
    let c = unsafe { &mut (*slot).counters };
    match counter {
        Counter::Passed => c.passed += 1,
        Counter::Redirected => {
            c.redirected += 1;
            c.bytes_redirected += bytes;
        }
        Counter::RedirectFailed => c.redirect_failed += 1,
        Counter::DroppedTooBig => c.dropped_too_big += 1,
    }
}

/// Steered cgroups: cgroup id -> the mark their sockets get (`multihome_ebpf::steer`). Per CPU,
/// so that each CPU counts its own sockets without an atomic operation; user space writes the
/// same mark for every CPU.
#[btf_map]
static STEER: PerCpuHashMap<u64, SteerTarget, { MAX_STEERED as usize }> = PerCpuHashMap::new();

/// Each steering mark's uplink, as a source entry describes it (device, parent, VLAN id, MAC).
#[btf_map]
static MARKS: HashMap<u32, Egress, { MAX_UPLINKS as usize }> = HashMap::new();

#[btf_map]
static STEER_COUNTERS: PerCpuArray<SteerCounters, { MAX_UPLINKS as usize }> = PerCpuArray::new();

/// This CPU's steering entry of cgroup `id`; the program counts its sockets through the
/// pointer.
#[inline(always)]
pub(crate) fn steer_target(id: u64) -> Option<*mut SteerTarget> {
    STEER.get_ptr_mut(id)
}

/// The uplink of steering mark `mark`.
#[inline(always)]
pub(crate) fn marked_uplink(mark: u32) -> Option<&'static Egress> {
    // SAFETY: as for `lookup`: entries are replaced whole.
    unsafe { MARKS.get(mark) }
}

/// Which steering counter to bump.
#[derive(Clone, Copy)]
pub(crate) enum SteerCounter {
    MarkedPassed,
    MarkedDropped,
    SocketRefused,
}

/// Bumps `counter` in steering counters slot `slot` (0: the host's) on this CPU.
#[inline(always)]
pub(crate) fn count_steer(slot: u16, counter: SteerCounter) {
    let Some(c) = STEER_COUNTERS.get_ptr_mut(u32::from(slot)) else {
        return;
    };
    // SAFETY: a per-CPU slot is only written by this CPU, and the program is not preempted.
    let c = unsafe { &mut *c };
    match counter {
        SteerCounter::MarkedPassed => c.marked_passed += 1,
        SteerCounter::MarkedDropped => c.marked_dropped += 1,
        SteerCounter::SocketRefused => c.sockets_refused += 1,
    }
}
