//! The steering hook's cost per socket: `socket(AF_INET, SOCK_DGRAM)` + `close` in a loop, timed
//! by a worker process (`mh-bench --socket-loop N`) started alternately in a cgroup without any
//! program and under `multihome exec wan2` (below the steering root, where the daemon's
//! `cgroup/sock_create` program walks the ancestors and marks each socket), in one run.
//!
//! The worker reports the mark its last socket got, so that a steered run that was not steered
//! (or an unsteered one that was) fails the bench instead of passing as a figure.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::bed::{two_uplinks, Multihome};
use super::report::{median, ratio, Figure, Row, Section};

/// Sockets per worker run, and runs per side (alternating which side goes first).
pub const SOCKETS: u32 = 200_000;
const TRIALS: usize = 8;
/// wan2's mark: 0x6d68 << 16 | its table (1002).
const WAN2_MARK: u32 = 0x6d68_03ea;

pub struct Results {
    pub plain_ns: Option<f64>,
    pub steered_ns: Option<f64>,
}

/// The worker: `n` sockets created and closed; the ns per socket and the last one's mark.
pub fn socket_loop(n: u32) -> Result<(f64, u32)> {
    let mut mark = 0;
    let start = Instant::now();
    for i in 0..n {
        // SAFETY: socket(2) with constant arguments; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        if i + 1 == n {
            mark = so_mark(fd)?;
        }
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(fd) };
    }
    Ok((start.elapsed().as_nanos() as f64 / f64::from(n), mark))
}

fn so_mark(fd: i32) -> Result<u32> {
    let mut mark: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt into a u32 of the length given, on an open socket.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mut mark as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("SO_MARK: {}", std::io::Error::last_os_error());
    }
    Ok(mark)
}

pub fn run(multihome: &Path) -> Result<Results> {
    let bed = two_uplinks()?;
    let daemon = Multihome::start(&bed.host, multihome, &["wan1", "wan2"])?;
    let worker = std::env::current_exe()?;
    let worker = worker.to_str().context("non-UTF-8 path")?;
    let n = SOCKETS.to_string();
    let pins = bed.host.pin_dir().display().to_string();
    let mh = multihome.to_str().context("non-UTF-8 path")?;
    let plain: Vec<&str> = vec![worker, "--socket-loop", &n];
    let steered: Vec<&str> = vec![
        mh,
        "exec",
        "--pin-dir",
        &pins,
        "wan2",
        "--",
        worker,
        "--socket-loop",
        &n,
    ];
    let measure = |argv: &[&str], want_mark: u32| -> Result<f64> {
        let out = bed.host.run(argv)?;
        let mut fields = out.split_whitespace();
        let ns: f64 = fields.next().context("no figure")?.parse()?;
        let mark: u32 = fields.next().context("no mark")?.parse()?;
        if mark != want_mark {
            bail!("{argv:?}: socket mark {mark:#x}, expected {want_mark:#x}");
        }
        Ok(ns)
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        if trial % 2 == 0 {
            a.push(measure(&plain, 0)?);
            b.push(measure(&steered, WAN2_MARK)?);
        } else {
            b.push(measure(&steered, WAN2_MARK)?);
            a.push(measure(&plain, 0)?);
        }
    }
    daemon.stop()?;
    Ok(Results {
        plain_ns: median(&a),
        steered_ns: median(&b),
    })
}

pub fn section(results: &Results) -> Section {
    Section {
        title: "Steering hook",
        method: format!(
            "A worker creates and closes {SOCKETS} UDP sockets (socket, close) and reports ns \
             per socket; {TRIALS} runs per side, alternating which goes first, median. Without: \
             the worker in the bench's own cgroup (no program). With: the same worker under \
             `multihome exec wan2` (the release daemon's steering program on its root; the \
             worker in root/multihome-wan2.slice/exec-PID.scope, so the program walks three \
             levels); each run checks its last socket's mark (wan2's with, none without)."
        ),
        rows: vec![
            Row::new(
                "socket + close, without the hook: ns/socket",
                Figure::Value(results.plain_ns, "ns"),
            ),
            Row::new(
                "socket + close, steered: ns/socket",
                Figure::Value(results.steered_ns, "ns"),
            ),
            Row::new(
                "steered / without",
                Figure::Value(ratio(results.steered_ns, results.plain_ns), "x"),
            ),
        ],
    }
}
