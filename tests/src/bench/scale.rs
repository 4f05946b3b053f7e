//! Scale: many uplinks (veth pairs to one router namespace), each with an IPv6 address in its own
//! 2001:db8:N::/64 and a `proto ra` default route via 2001:db8:N::1 (IPv6, so that 256 uplinks
//! get distinct documentation addresses). Measured on the release daemon: cold start to every
//! `from ADDR` rule in place, peak RSS, the time to reconcile one address change with all the
//! uplinks present (against the same with 2 uplinks: it should not grow), and the CPU time and
//! context switches of 10 s of idleness.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::bed::{clock_ticks, proc_stat, Batch, Multihome};
use super::report::{ratio, Figure, Row, Section, Summary};
use super::watch::{Note, Watcher, PATIENCE};
use crate::netns::Netns;

pub const UPLINKS: usize = 256;
const CHANGES: usize = 50;
const IDLE: Duration = Duration::from_secs(10);

pub struct Results {
    pub uplinks: usize,
    pub cold_start_ms: Option<f64>,
    pub peak_rss_kib: u64,
    /// One address change on one uplink, with `uplinks` present.
    pub change_ms: Vec<f64>,
    /// The same with 2 uplinks.
    pub change_ms_2: Vec<f64>,
    pub idle_cpu_ms: Option<f64>,
    pub idle_switches: Option<u64>,
}

fn addr(i: usize, host: u16) -> IpAddr {
    format!("2001:db8:{:x}::{host:x}", i + 1).parse().unwrap()
}

/// A bed of `n` uplinks u0.. in a host namespace, each to the router namespace.
fn bed(n: usize) -> Result<(Netns, Netns)> {
    let host = Netns::new("bsh")?;
    let router = Netns::new("bsr")?;
    let mut h = String::new();
    let mut r = String::new();
    for i in 0..n {
        h += &format!(
            "link add u{i} type veth peer name p{i} netns {}\nlink set u{i} up\n\
             addr add {}/64 dev u{i} nodad\n\
             route add default via {} dev u{i} metric {} proto ra\n",
            router.name(),
            addr(i, 2),
            addr(i, 1),
            100 + i
        );
        r += &format!("link set p{i} up\n");
    }
    let script = |ns: &Netns, batch: String| -> Result<()> {
        let file = std::env::temp_dir().join(format!("{}.batch", ns.name()));
        std::fs::write(&file, batch)?;
        ns.run(&["ip", "-batch", file.to_str().unwrap()])?;
        std::fs::remove_file(file)?;
        Ok(())
    };
    host.sh("sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.default.accept_ra=0")?;
    script(&host, h)?;
    script(&router, r)?;
    Ok((host, router))
}

/// Starts the daemon on `n` uplinks; returns it with the time until every `from ADDR` rule was
/// announced.
fn start(
    host: &Netns,
    watcher: &Watcher,
    bin: &Path,
    n: usize,
) -> Result<(Multihome, Option<f64>)> {
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut pending: BTreeSet<IpAddr> = (0..n).map(|i| addr(i, 2)).collect();
    watcher.drain();
    let spawned = Instant::now();
    let daemon = Multihome::start(host, bin, &args)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while !pending.is_empty() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let Ok((at, note)) = watcher.notes.recv_timeout(left) else {
            break;
        };
        if let Note::Rule {
            added: true,
            src: Some(src),
            ..
        } = note
        {
            if pending.remove(&src) {
                last = Some(at);
            }
        }
    }
    let cold = pending
        .is_empty()
        .then(|| last.map(|t| t.duration_since(spawned).as_secs_f64() * 1e3))
        .flatten();
    Ok((daemon, cold))
}

/// `CHANGES` renumberings of the middle uplink: address event to its `from NEW` rule.
fn changes(host: &Netns, watcher: &Watcher, n: usize) -> Result<Vec<f64>> {
    let i = n / 2;
    let mut batch = Batch::start(host)?;
    let mut times = Vec::new();
    let mut old = addr(i, 2);
    for k in 0..CHANGES {
        let new = addr(i, 3 + (k % 2) as u16 * 0x10);
        watcher.drain();
        batch.send(&format!("addr add {new}/64 dev u{i} nodad"))?;
        let deadline = Instant::now() + PATIENCE;
        let t0 = watcher.wait(
            deadline,
            |n| matches!(n, Note::Addr { added: true, addr, .. } if *addr == new),
        );
        let rule = watcher.wait(
            deadline,
            |n| matches!(n, Note::Rule { added: true, src: Some(s), .. } if *s == new),
        );
        if let (Some(t0), Some(rule)) = (t0, rule) {
            times.push(rule.saturating_duration_since(t0).as_secs_f64() * 1e3);
        }
        batch.send(&format!("addr del {old}/64 dev u{i}"))?;
        watcher.wait(
            Instant::now() + PATIENCE,
            |n| matches!(n, Note::Rule { added: false, src: Some(s), .. } if *s == old),
        );
        old = new;
    }
    Ok(times)
}

pub fn run(bin: &Path) -> Result<Results> {
    let change_ms_2 = {
        let (host, _router) = bed(2)?;
        let watcher = Watcher::start(&host)?;
        let (_daemon, cold) = start(&host, &watcher, bin, 2)?;
        if cold.is_none() {
            bail!("multihome did not converge on 2 uplinks");
        }
        changes(&host, &watcher, 2)?
    };
    let (host, _router) = bed(UPLINKS)?;
    let watcher = Watcher::start(&host)?;
    let (daemon, cold_start_ms) = start(&host, &watcher, bin, UPLINKS)?;
    let change_ms = changes(&host, &watcher, UPLINKS)?;
    // The renumberings released addresses whose guard entries linger a moment (deferred work
    // the changes caused, not idleness): let that run out before the idle window.
    std::thread::sleep(multihome::linger::LINGER + Duration::from_secs(1));
    let before = proc_stat(daemon.pid())?;
    std::thread::sleep(IDLE);
    let after = proc_stat(daemon.pid())?;
    Ok(Results {
        uplinks: UPLINKS,
        cold_start_ms,
        peak_rss_kib: after.peak_rss_kib,
        change_ms,
        change_ms_2,
        idle_cpu_ms: Some((after.cpu_ticks - before.cpu_ticks) as f64 * 1e3 / clock_ticks() as f64),
        idle_switches: Some(
            (after.voluntary_switches + after.involuntary_switches)
                - (before.voluntary_switches + before.involuntary_switches),
        ),
    })
}

pub fn section(r: &Results) -> Section {
    let big = Summary::of(&r.change_ms);
    let small = Summary::of(&r.change_ms_2);
    let growth = ratio(big.map(|s| s.p50), small.map(|s| s.p50));
    Section {
        title: "Scale",
        method: format!(
            "{} veth uplinks, each with 2001:db8:N::2/64 and a `proto ra` default route; the \
             release daemon with the guard. Cold start: from spawning the daemon to the last \
             `from ADDR` rule announced. One change: {CHANGES} renumberings of the middle \
             uplink, RTM_NEWADDR to RTM_NEWRULE, with {} and with 2 uplinks present. Idle, once released addresses' \
             lingering guard entries ran out: utime+stime and context switches (all threads) over {} s with nothing changing.",
            r.uplinks,
            r.uplinks,
            IDLE.as_secs()
        ),
        rows: vec![
            Row::new(
                format!("cold start to converged, {} uplinks", r.uplinks),
                Figure::Value(r.cold_start_ms, "ms"),
            ),
            Row::new(
                "peak RSS (VmHWM)",
                Figure::Value(Some(r.peak_rss_kib as f64 / 1024.0), "MiB"),
            ),
            Row::new(
                format!("one address change, {} uplinks", r.uplinks),
                Figure::Dist(big, "ms"),
            ),
            Row::new("one address change, 2 uplinks", Figure::Dist(small, "ms")),
            Row::new(
                format!("p50 with {} / p50 with 2", r.uplinks),
                Figure::Value(growth, "x"),
            )
            .goal("does not grow (<= 2x)", growth.map(|g| g <= 2.0)),
            Row::new(
                "CPU time while idle 10 s",
                Figure::Value(r.idle_cpu_ms, "ms"),
            ),
            Row::new(
                "context switches while idle 10 s",
                Figure::Value(r.idle_switches.map(|n| n as f64), ""),
            )
            .goal("0 wake-ups", r.idle_switches.map(|n| n == 0)),
        ],
    }
}
