//! The BTF maps (pinned by the loader under their names, see `multihome_ebpf::maps`) and the
//! counter updates.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    btf_maps::{HashMap, PerCpuHashMap},
    macros::btf_map,
};
use multihome_ebpf::{
    maps::{MAX_SOURCES, MAX_UPLINKS},
    Counters, Egress, Source, SrcV4, SrcV6, UplinkKey,
};

#[btf_map]
static SRC_V4: HashMap<SrcV4, Egress, { MAX_SOURCES as usize }> = HashMap::new();

#[btf_map]
static SRC_V6: HashMap<SrcV6, Egress, { MAX_SOURCES as usize }> = HashMap::new();

#[btf_map]
static COUNTERS: PerCpuHashMap<UplinkKey, Counters, { MAX_UPLINKS as usize }> =
    PerCpuHashMap::new();

/// The entry for a packet's source address.
#[inline(always)]
pub fn lookup(src: &Source) -> Option<&'static Egress> {
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
pub enum Counter {
    Passed,
    Redirected,
    RedirectFailed,
    DroppedTooBig,
}

/// Bumps `counter` (and `bytes_redirected` by `bytes`) of `uplink` on this CPU, creating the
/// uplink's zeroed slot first if the daemon has not.
#[inline(always)]
pub fn count(uplink: u32, counter: Counter, bytes: u64) {
    let key = UplinkKey { ifindex: uplink };
    let slot = match COUNTERS.get_ptr_mut(key) {
        Some(slot) => slot,
        None => {
            // A full map or a racing insert from another CPU: either way try the lookup again.
            let _ = COUNTERS.insert(key, Counters::default(), u64::from(BPF_NOEXIST));
            match COUNTERS.get_ptr_mut(key) {
                Some(slot) => slot,
                None => return,
            }
        }
    };
    // SAFETY: a per-CPU slot is only written by this CPU, and the program is not preempted.
    let c = unsafe { &mut *slot };
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
