//! The steering program: `cgroup/sock_create`, attached to the steering root. Every IPv4/IPv6
//! socket a process under the root creates (TCP, UDP, ping, raw: the hook runs in
//! `inet_create`, whatever the protocol) gets the mark of its deepest steered cgroup; one in no
//! steered cgroup is refused (EPERM), so that nothing under the root leaves unsteered.

use aya_ebpf::{
    helpers::generated::bpf_get_current_ancestor_cgroup_id, macros::cgroup_sock,
    programs::SockContext,
};
use multihome_ebpf::steer::deepest;

use crate::program::maps::{self, SteerCounter};

/// The verdicts of a `cgroup/sock` program.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// The program's name in the object and in the kernel.
#[cgroup_sock(sock_create)]
pub(crate) fn multihome_steer(ctx: SockContext) -> i32 {
    // SAFETY: the helper takes a level and reads the current task's cgroup.
    let ancestor = |level: i32| unsafe { bpf_get_current_ancestor_cgroup_id(level) };
    let Some(target) = deepest(ancestor, maps::steer_target) else {
        maps::count_steer(0, SteerCounter::SocketRefused);
        return REFUSE;
    };
    // SAFETY: this CPU's copy of the entry stays valid for the run and only this CPU writes
    // it; the socket is the program's context, whose mark the verifier lets `sock_create` write.
    unsafe {
        (*ctx.sock).mark = (*target).mark;
        (*target).sockets += 1;
    }
    ALLOW
}
