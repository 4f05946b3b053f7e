//! What the guard's tests and the bench share: a private pin directory, `__sk_buff` contexts,
//! frame and entry builders.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use multihome_ebpf::Egress;

/// A pin directory of the test's own under /sys/fs/bpf, never the daemon's: tests run in
/// parallel and beside a running daemon. Its pins are removed on drop (attachments go with the
/// test's namespaces).
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/mht{}x{n}{tag}",
            std::process::id()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::read_dir(&self.0) {
            for entry in dir.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// An `__sk_buff` for BPF_PROG_TEST_RUN's `ctx_in` (the uapi layout; the kernel takes ifindex,
/// mark, priority, cb, tstamp, wire_len and the gso fields from it, and wants the rest zero).
pub struct SkbCtx {
    pub ifindex: u32,
    pub gso_segs: u32,
    pub gso_size: u32,
}

impl SkbCtx {
    pub fn on(ifindex: u32) -> SkbCtx {
        SkbCtx {
            ifindex,
            gso_segs: 0,
            gso_size: 0,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut ctx = vec![0u8; 192];
        ctx[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        ctx[164..168].copy_from_slice(&self.gso_segs.to_ne_bytes());
        ctx[176..180].copy_from_slice(&self.gso_size.to_ne_bytes());
        ctx
    }
}

/// An Ethernet frame from `src_mac` with the given 802.1Q tags, carrying `l3`.
pub fn frame(src_mac: [u8; 6], tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0xfe];
    f.extend_from_slice(&src_mac);
    for tag in tags {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tag.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An IPv4 UDP packet of `len` bytes (at least 28) from `src`.
pub fn ipv4(src: Ipv4Addr, len: usize) -> Vec<u8> {
    let len = len.max(28);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&[203, 0, 113, 10]);
    p
}

/// An IPv6 UDP packet of `len` bytes (at least 48) from `src`.
pub fn ipv6(src: Ipv6Addr, len: usize) -> Vec<u8> {
    let len = len.max(48);
    let mut p = vec![0u8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&"2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap().octets());
    p
}

/// An entry for a plain uplink (no parent).
pub fn egress(uplink: u32, mtu: u32) -> Egress {
    Egress {
        uplink_ifindex: uplink,
        lower_ifindex: 0,
        mtu,
        vlan_id: 0,
        match_mac: 0,
        prefix_len: 24,
        mac: [0; 6],
        counter_slot: 0,
        gateway: [192, 168, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    }
}

/// Router B's link-local address, the usual IPv6 gateway (learned from its router
/// advertisement).
pub const ROUTER_B_LL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];

/// An entry for an IPv6 address of a plain uplink, in a `/prefix_len` with `gateway`.
pub fn egress_v6(uplink: u32, prefix_len: u8, gateway: [u8; 16]) -> Egress {
    Egress {
        prefix_len,
        gateway,
        ..egress(uplink, 1500)
    }
}
