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

/// Makes the guard pinned under `pin_dir` look like an older release's whose `SRC_V4` held
/// `capacity` entries, as an upgrade from such a release finds it: `SRC_V4` pinned again with
/// that capacity and the same entries, and every TCX link pinned there running the embedded
/// program loaded against it (replaced in place, as that release would have attached it). Call
/// it in the devices' network namespace, with no daemon running. Returns the program's id.
pub fn pose_as_an_older_layout(pin_dir: &Path, capacity: u32) -> anyhow::Result<u32> {
    use aya::maps::{HashMap, Map, MapData};
    use aya::programs::links::{FdLink, PinnedLink};
    use aya::programs::tc::SchedClassifierLink;
    use aya::programs::SchedClassifier;
    use multihome_ebpf::maps::{
        MAP_COUNTERS, MAP_OWN_SOURCES, MAP_SOURCE_FILTER, MAP_SRC_V4, MAP_SRC_V6,
    };

    const VALUE: usize = size_of::<Egress>();
    let current = pin_dir.join(MAP_SRC_V4);
    let kept = pin_dir.join("SRC_V4-today");
    std::fs::rename(&current, &kept)?;
    let mut loader = aya::EbpfLoader::new();
    loader.map_max_entries(MAP_SRC_V4, capacity);
    for name in [
        MAP_SRC_V4,
        MAP_SRC_V6,
        MAP_COUNTERS,
        MAP_OWN_SOURCES,
        MAP_SOURCE_FILTER,
    ] {
        loader.map_pin_path(name, pin_dir.join(name));
    }
    let mut ebpf = loader.load(multihome::guard::object())?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(multihome::guard::PROGRAM_NAME)
        .ok_or_else(|| anyhow::anyhow!("no guard program in the object"))?
        .try_into()?;
    program.load()?;
    let id = program.info()?.id();
    let today: HashMap<MapData, [u8; 4], [u8; VALUE]> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&kept)?))?;
    let entries: Vec<([u8; 4], [u8; VALUE])> = today.iter().collect::<Result<_, _>>()?;
    drop(today);
    std::fs::remove_file(&kept)?;
    let mut older: HashMap<&mut MapData, [u8; 4], [u8; VALUE]> =
        HashMap::try_from(ebpf.map_mut(MAP_SRC_V4).unwrap())?;
    for (key, value) in entries {
        older.insert(key, value, 0)?;
    }
    for entry in std::fs::read_dir(pin_dir)? {
        let path = entry?.path();
        let is_link = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"));
        if is_link {
            let link = SchedClassifierLink::try_from(FdLink::from(PinnedLink::from_pin(&path)?))?;
            let program: &mut SchedClassifier = ebpf
                .program_mut(multihome::guard::PROGRAM_NAME)
                .unwrap()
                .try_into()?;
            let replaced = program.attach_to_link(link)?;
            // The link stays with its pin when this process closes its descriptor.
            let _: FdLink = program.take_link(replaced)?.try_into()?;
        }
    }
    Ok(id)
}

/// Loads a TC program that does nothing but return `verdict` (e.g. `TC_ACT_SHOT`), named
/// `name`, and pins it at `path`: a stand-in for someone else's filter. Raw bpf(2), since it
/// has no object file.
pub fn pin_verdict_program(path: &Path, name: &str, verdict: i32) -> anyhow::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    // mov64 r0, verdict; exit
    let insns: [u64; 2] = [0xb7 | ((verdict as u32 as u64) << 32), 0x95];
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        rest: [u8; 64],
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let license = CString::new("GPL")?;
    let mut prog_name = [0u8; 16];
    prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        rest: [0; 64],
    };
    // SAFETY: the attribute struct is valid for the call and sized as passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoad,
            size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: BPF_PROG_LOAD returned a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        file_flags: 0,
    };
    // SAFETY: as above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            size_of::<ObjPin>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
