//! The program proper: maps, the skb as a frame source, and the verdict's execution.
//! The decision itself lives in the library (`multihome_ebpf::decide`), unit-tested on the host.

mod maps;
mod skb;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::{bpf_redirect_neigh, bpf_skb_vlan_pop},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use multihome_ebpf::{decide, parse, Egress, Packet, Verdict};

use maps::Counter;
use skb::Skb;

/// The program's name (kernel program names have at most 15 characters); the loader finds
/// clsact filters left by an earlier run by it.
#[classifier]
pub fn multihome_guard(ctx: TcContext) -> i32 {
    guard(&ctx)
}

#[inline(always)]
fn guard(ctx: &TcContext) -> i32 {
    let skb = Skb(ctx);
    let Some(frame) = parse(&skb, skb.accelerated_vlan()) else {
        return TC_ACT_UNSPEC;
    };
    let Some(entry) = maps::lookup(&frame.src) else {
        return TC_ACT_UNSPEC;
    };
    let packet = Packet {
        ifindex: skb.ifindex(),
        vlan: frame.vlan,
        src_mac: frame.src_mac,
        l3_len: frame.l3_len,
        gso: skb.is_gso(),
    };
    execute(ctx, decide(&packet, Some(entry)), entry)
}

/// Carries out a verdict and counts it on the entry's uplink.
#[inline(always)]
fn execute(ctx: &TcContext, verdict: Verdict, entry: &Egress) -> i32 {
    let uplink = entry.uplink_ifindex;
    match verdict {
        Verdict::Pass => {
            maps::count(uplink, Counter::Passed, 0);
            // UNSPEC (TCX_NEXT) rather than OK: other programs on the device still run.
            TC_ACT_UNSPEC
        }
        Verdict::DropTooBig { .. } => {
            maps::count(uplink, Counter::DroppedTooBig, 0);
            TC_ACT_SHOT as i32
        }
        Verdict::Redirect { ifindex, pop_tag } => {
            let len = ctx.len();
            // SAFETY: the helpers get the program's own skb; a NULL next hop lets the kernel
            // route the packet again on the target device (see DESIGN.md).
            let popped = !pop_tag || unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } == 0;
            let ret = if popped {
                unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) }
            } else {
                -1
            };
            if ret == TC_ACT_REDIRECT as i64 {
                maps::count(uplink, Counter::Redirected, u64::from(len));
                TC_ACT_REDIRECT as i32
            } else {
                maps::count(uplink, Counter::RedirectFailed, 0);
                debug!(ctx, "redirect to {} failed: {}", ifindex, ret);
                // It would leave through the wrong device (or with a half-removed tag).
                TC_ACT_SHOT as i32
            }
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
