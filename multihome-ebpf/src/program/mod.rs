//! The program proper: maps, the skb as a frame source, and the verdict's execution.
//! The decision itself lives in the library (`multihome_ebpf::decide`), unit-tested on the host.

mod maps;
mod skb;
mod steer;

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1, TC_ACT_UNSPEC},
    helpers::generated::{bpf_redirect_neigh, bpf_skb_vlan_pop},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use multihome_ebpf::{
    decide, marked_passes, parse, steer::is_steering_mark, Egress, Frame, Packet, Verdict,
};

use maps::{Counter, SteerCounter};
use skb::Skb;

// From uapi pkt_cls.h (aya's bindings give them different integer types on different hosts).
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
// From the uapi socket.h.
const AF_INET6: u32 = 10;

/// The program's name (kernel program names have at most 15 characters); the loader finds
/// clsact filters left by an earlier run by it.
#[classifier]
pub(crate) fn multihome_guard(ctx: TcContext) -> i32 {
    guard(&ctx)
}

#[inline(always)]
fn guard(ctx: &TcContext) -> i32 {
    let skb = Skb::new(ctx);
    // A steered socket's packet first: its uplink decides, whatever its source (see
    // `multihome_ebpf::marked_passes`). Unmarked packets pay one load and a compare.
    let mark = skb.mark();
    if is_steering_mark(mark) {
        return steered(&skb, mark);
    }
    let Some(frame) = parse(&skb, skb.accelerated_vlan()) else {
        return TC_ACT_UNSPEC;
    };
    let ifindex = skb.ifindex();
    // The device's own list first: an array lookup the verifier inlines, where the source's
    // hash lookup is a call (see `multihome_ebpf::own_sources`).
    if let Some(slot) = maps::own_sources(ifindex).and_then(|own| own.pass(&frame.src, frame.vlan))
    {
        maps::count(slot, Counter::Passed, 0);
        return TC_ACT_UNSPEC;
    }
    // A source whose filter bit is clear has no entry, so the lookup would miss.
    if !maps::may_have_entry(frame.src_fold) {
        return TC_ACT_UNSPEC;
    }
    let Some(entry) = maps::lookup(&frame.src) else {
        return TC_ACT_UNSPEC;
    };
    let packet = packet(&frame, &skb, ifindex);
    execute(ctx, &skb, decide(&packet, Some(entry)), entry)
}

/// A packet with steering mark `mark`: passed on its uplink, dropped anywhere else. It parses
/// the frame itself rather than share the parse with the source path: a frame kept across this
/// branch's lookups had its addresses' unset bytes (an IPv4 `Source`) spilled to the stack, and
/// the verifier refuses reading a register nothing wrote.
#[inline(always)]
fn steered(skb: &Skb, mark: u32) -> i32 {
    let uplink = maps::marked_uplink(mark);
    let slot = uplink.map_or(0, |u| u.counter_slot);
    let passes = parse(skb, skb.accelerated_vlan())
        .is_some_and(|frame| marked_passes(&packet(&frame, skb, skb.ifindex()), uplink));
    if passes {
        maps::count_steer(slot, SteerCounter::MarkedPassed);
        TC_ACT_UNSPEC
    } else {
        maps::count_steer(slot, SteerCounter::MarkedDropped);
        TC_ACT_SHOT
    }
}

/// What the decision knows of the packet leaving through `ifindex`.
#[inline(always)]
fn packet(frame: &Frame, skb: &Skb, ifindex: u32) -> Packet {
    Packet {
        ifindex,
        vlan: frame.vlan,
        src_mac: frame.src_mac,
        src: frame.src,
        dst: frame.dst,
        l3_len: frame.l3_len,
        gso: skb.is_gso(),
    }
}

/// Carries out a verdict and counts it in the entry's uplink's counters slot.
#[inline(always)]
fn execute(ctx: &TcContext, skb: &Skb, verdict: Verdict, entry: &Egress) -> i32 {
    let slot = entry.counter_slot;
    match verdict {
        Verdict::Pass => {
            maps::count(slot, Counter::Passed, 0);
            // UNSPEC (TCX_NEXT) rather than OK: other programs on the device still run.
            TC_ACT_UNSPEC
        }
        Verdict::DropTooBig { .. } => {
            maps::count(slot, Counter::DroppedTooBig, 0);
            TC_ACT_SHOT
        }
        Verdict::Redirect {
            ifindex,
            pop_tag,
            via,
        } => {
            let len = ctx.len();
            let popped = !pop_tag || strip_tags(ctx, skb);
            let ret = if popped {
                redirect_neigh(ifindex, via)
            } else {
                -1
            };
            if ret == i64::from(TC_ACT_REDIRECT) {
                maps::count(slot, Counter::Redirected, u64::from(len));
                TC_ACT_REDIRECT
            } else {
                maps::count(slot, Counter::RedirectFailed, 0);
                debug!(ctx, "redirect to {} failed: {}", ifindex, ret);
                // It would leave through the wrong device (or with a half-removed tag).
                TC_ACT_SHOT
            }
        }
    }
}

/// `bpf_redirect_neigh` to `ifindex`. Without `via` (IPv4, on-link IPv6, unknown gateway) the
/// next hop is NULL: the kernel routes the packet again with `oif = ifindex` and replaces its
/// route (see docs/DESIGN.md). With `via` (off-link IPv6) the kernel skips that lookup and resolves
/// the given gateway on `ifindex` directly, because the IPv6 lookup would have preferred another
/// uplink's default route in guard-only mode; `Verdict::Redirect` says why, and what it costs.
#[inline(always)]
fn redirect_neigh(ifindex: u32, via: Option<[u8; 16]>) -> i64 {
    let Some(gateway) = via else {
        // SAFETY: a NULL next hop with length 0 is the helper's documented "route it" form.
        return unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    };
    let word =
        |i: usize| u32::from_ne_bytes([gateway[i], gateway[i + 1], gateway[i + 2], gateway[i + 3]]);
    // 20 bytes on the stack; the address words keep network byte order in memory.
    let mut next_hop = bpf_redir_neigh {
        nh_family: AF_INET6,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv6_nh: [word(0), word(4), word(8), word(12)],
        },
    };
    // SAFETY: the helper copies the struct (of exactly the size given) before returning.
    unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut next_hop,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    }
}

/// Removes every VLAN tag, accelerated or in the packet. `bpf_skb_vlan_pop` removes one and then
/// moves the next in-packet tag (QinQ) into the accelerated slot, so pop until none is left; the
/// parser accepts at most two in-packet tags, plus one accelerated.
#[inline(always)]
fn strip_tags(ctx: &TcContext, skb: &Skb) -> bool {
    for _ in 0..3 {
        // SAFETY: the helper gets the program's own skb.
        if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
            return false;
        }
        if skb.accelerated_vlan().is_none() {
            return true;
        }
    }
    false
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
