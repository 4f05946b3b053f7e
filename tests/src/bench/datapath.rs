//! Datapath cost: ns per packet under BPF_PROG_TEST_RUN (1,000,000 repeats, median of trials)
//! for an empty TC program and for the guard's paths, on devices of a namespace of its own.
//!
//! The empty program (`r0 = TC_ACT_UNSPEC; exit`) is loaded here with a raw BPF_PROG_LOAD, so
//! that the guard's object carries nothing for the benchmark. Both programs are then run the
//! same way: from a pin, through aya's `test_run`. The guard is attached with clsact so that it
//! is pinned as a program (see `multihome::guard`'s pin layout).

use std::ffi::CString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use multihome::guard::{AttachMode, Guard};
use multihome_ebpf::Egress;

use super::report::{median, ratio, Figure, Row, Section};
use crate::guard::{egress, frame, ipv4, ipv6, SkbCtx, TC_ACT_REDIRECT, TC_ACT_UNSPEC};
use crate::netns::{veth, Netns};

pub const REPEAT: u32 = 1_000_000;
const TRIALS: usize = 5;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xe];

/// Loads `r0 = -1; exit` as a SCHED_CLS program and pins it at `path`.
fn pin_empty_program(path: &Path) -> Result<()> {
    // mov64 r0, -1 (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT)
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..56].copy_from_slice(b"mh_bench_noop\0\0\0"[..8].try_into().unwrap());
    attr[56..64].copy_from_slice(b"mh_bench_noop\0\0\0"[8..].try_into().unwrap());
    let fd = bpf(5, &mut attr).context("BPF_PROG_LOAD of the empty program")?; // BPF_PROG_LOAD
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    let mut pin = [0u8; 128];
    pin[0..8].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    let pinned = bpf(6, &mut pin); // BPF_OBJ_PIN
                                   // SAFETY: closing the fd BPF_PROG_LOAD gave us; the pin holds the program.
    unsafe { libc::close(fd) };
    pinned.context("BPF_OBJ_PIN of the empty program")?;
    Ok(())
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> Result<i32> {
    // SAFETY: bpf(2) with an attribute buffer of the size passed; pointers in it outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// One case: a frame, the device it leaves through, and the verdict it must get.
struct Case {
    name: &'static str,
    guard: bool,
    /// Whether the goal (within 2x of the empty program) applies.
    goal: bool,
    frame: Vec<u8>,
    ctx: Vec<u8>,
    verdict: i32,
}

pub struct Results {
    /// (case, whether the goal applies, median ns per packet)
    pub ns: Vec<(&'static str, bool, Option<f64>)>,
}

pub fn run() -> Result<Results> {
    let ns = Netns::new("bd")?;
    for (a, b) in [("eth0", "eth0p"), ("wan1", "wan1p"), ("wan2", "wan2p")] {
        veth(&ns, a, &ns, b)?;
    }
    let (eth0, wan1, wan2) = (
        ns.ifindex("eth0")?,
        ns.ifindex("wan1")?,
        ns.ifindex("wan2")?,
    );
    let pin_dir = ns.pin_dir();
    let mut guard = Guard::load(&pin_dir, AttachMode::Clsact)?;
    ns.enter(|| guard.attach(wan2))?;
    let plain: Ipv4Addr = "192.168.0.20".parse()?;
    let tagged: Ipv4Addr = "192.168.0.102".parse()?;
    let v6: Ipv6Addr = "2001:db8:b::20".parse()?;
    let mac_child: Ipv4Addr = "192.168.0.77".parse()?;
    guard.put_entry(plain.into(), &egress(wan2, 1500))?;
    guard.put_entry(v6.into(), &egress(wan2, 1500))?;
    guard.put_entry(
        tagged.into(),
        &Egress {
            lower_ifindex: eth0,
            vlan_id: 102,
            ..egress(wan2, 1500)
        },
    )?;
    guard.put_entry(
        mac_child.into(),
        &Egress {
            lower_ifindex: eth0,
            match_mac: 1,
            mac: MAC,
            ..egress(wan2, 1500)
        },
    )?;
    let guard_prog = SchedClassifier::from_pin(pin_dir.join(format!("clsact_{wan2}")))
        .context("opening the pinned guard")?;
    let empty_pin = pin_dir.join("bench_empty");
    pin_empty_program(&empty_pin)?;
    let empty_prog = SchedClassifier::from_pin(&empty_pin).context("opening the empty program")?;
    std::fs::remove_file(&empty_pin)?;

    let v4 = |src| frame(MAC, &[], ETH_P_IP, &ipv4(src, 60));
    let on = |ifindex| SkbCtx::on(ifindex).bytes();
    let cases = [
        Case {
            name: "empty TC program",
            guard: false,
            goal: false,
            frame: v4(plain),
            ctx: on(wan2),
            verdict: TC_ACT_UNSPEC,
        },
        Case {
            name: "guard, pass, IPv4",
            guard: true,
            goal: true,
            frame: v4(plain),
            ctx: on(wan2),
            verdict: TC_ACT_UNSPEC,
        },
        Case {
            name: "guard, pass, IPv6",
            guard: true,
            goal: true,
            frame: frame(MAC, &[], ETH_P_IPV6, &ipv6(v6, 80)),
            ctx: on(wan2),
            verdict: TC_ACT_UNSPEC,
        },
        Case {
            name: "guard, pass, 802.1Q-tagged on the parent",
            guard: true,
            goal: true,
            frame: frame(MAC, &[102], ETH_P_IP, &ipv4(tagged, 60)),
            ctx: on(eth0),
            verdict: TC_ACT_UNSPEC,
        },
        Case {
            name: "guard, pass, source without entry",
            guard: true,
            goal: true,
            frame: v4("198.51.100.7".parse()?),
            ctx: on(wan1),
            verdict: TC_ACT_UNSPEC,
        },
        Case {
            name: "guard, pass, MAC-based child on the parent (hash lookup)",
            guard: true,
            goal: false,
            frame: v4(mac_child),
            ctx: on(eth0),
            verdict: TC_ACT_UNSPEC,
        },
        Case {
            name: "guard, redirect, IPv4",
            guard: true,
            goal: false,
            frame: v4(plain),
            ctx: on(wan1),
            verdict: TC_ACT_REDIRECT,
        },
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..TRIALS {
        for (case, samples) in cases.iter().zip(samples.iter_mut()) {
            let prog = if case.guard { &guard_prog } else { &empty_prog };
            let mut out = vec![0u8; case.frame.len() + 64];
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&case.frame);
            opts.data_out = Some(&mut out);
            opts.ctx_in = Some(&case.ctx);
            opts.repeat = REPEAT;
            let result = ns.enter(|| prog.test_run(opts)).context(case.name)?;
            if result.return_value as i32 != case.verdict {
                bail!(
                    "{}: verdict {} instead of {}",
                    case.name,
                    result.return_value as i32,
                    case.verdict
                );
            }
            samples.push(result.duration.as_nanos() as f64);
        }
    }
    drop(guard_prog);
    guard.remove_all()?;
    Ok(Results {
        ns: cases
            .iter()
            .zip(samples)
            .map(|(case, s)| (case.name, case.goal, median(&s)))
            .collect(),
    })
}

pub fn section(results: &Results) -> Section {
    let empty = results.ns.first().and_then(|(_, _, ns)| *ns);
    let mut rows = Vec::new();
    for (name, goal, ns) in &results.ns {
        rows.push(Row::new(
            format!("{name}: ns/packet"),
            Figure::Value(*ns, "ns"),
        ));
        if empty.is_some() && *ns != empty {
            let r = ratio(*ns, empty);
            let row = Row::new(format!("{name}: / empty"), Figure::Value(r, "x"));
            rows.push(if *goal {
                row.goal("<= 2x", r.map(|r| r <= 2.0))
            } else {
                row
            });
        }
    }
    Section {
        title: "Datapath cost",
        method: format!(
            "BPF_PROG_TEST_RUN, repeat {REPEAT}, kernel-reported average ns per run, median of \
             {TRIALS} trials (interleaved), 74-byte IPv4 / 94-byte IPv6 UDP frames. The empty \
             program is `return TC_ACT_UNSPEC` loaded by the bench; the guard is the daemon's \
             object with four map entries. A source listed for the device it leaves through \
             passes after an array lookup, a source without entry after a filter bit; the \
             MAC-based child's source (never listed) and the redirect take the source's hash \
             lookup. The goal applies to the pass paths the issue names, and to the source \
             without entry."
        ),
        rows,
    }
}
