//! Which capabilities the process has, so a missing one is named before anything is touched.

use std::fs;
use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    bit: u32,
    /// Why multihome needs it, for the error message.
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    why: "to change routes and rules and attach the guard",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "to mount bpffs when it is not mounted",
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    why: "to load the guard and use its maps",
};
/// Without it the verifier treats the loader as unprivileged for pointer arithmetic and refuses
/// the guard's variable offsets into its stack buffers ("pointer arithmetic ... prohibited for
/// !root"): measured on 6.18 with the bounding set cut to CAP_NET_ADMIN and CAP_BPF.
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    why: "for the verifier to accept the guard's pointer arithmetic",
};

/// What `multihome run` needs, and all the systemd unit grants it.
pub const DAEMON: [Capability; 3] = [CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON];

/// Narrows the calling thread's effective set to those of `keep` it has (capabilities are
/// per thread): `check`'s probe, once its namespaces exist, loads and attaches the guard with
/// no more than the daemon has, since CAP_SYS_ADMIN would stand in for CAP_BPF and CAP_PERFMON.
pub fn restrict_thread(keep: &[Capability]) -> io::Result<()> {
    // From the uapi capability.h.
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mask = keep.iter().fold(0u64, |mask, cap| mask | 1 << cap.bit);
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes the two data words version 3 has, for the calling thread (pid 0).
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for (word, d) in data.iter_mut().enumerate() {
        d.effective &= (mask >> (32 * word)) as u32;
    }
    // SAFETY: as above; capset only reads them, and only lowers this thread's effective set.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective capability set of this process.
pub fn effective() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The capabilities in `needed` that `effective` lacks.
pub fn missing(effective: u64, needed: &[Capability]) -> Vec<Capability> {
    needed
        .iter()
        .copied()
        .filter(|cap| effective & (1 << cap.bit) == 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n";
        assert_eq!(parse_cap_eff(status), Some(1 << 12));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let only_net_admin = 1 << 12;
        assert_eq!(
            missing(only_net_admin, &[CAP_NET_ADMIN, CAP_BPF]),
            vec![CAP_BPF]
        );
        assert!(missing(
            u64::MAX,
            &[CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN]
        )
        .is_empty());
    }
}
