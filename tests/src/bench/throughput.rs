//! Throughput: TCP with iperf3 over a veth uplink, the guard attached (its pass path, with an
//! entry for the sender's address) and detached, alternating within one long iperf3 run.
//!
//! The guard's own cost is a few tens of nanoseconds per (GSO-sized) packet, under 1% at these
//! rates, so what the figure has to fight is noise: other work on the shared CPUs moves a
//! single 2 s iperf3 run by far more than that (15 to 20 Gbit/s), and every new connection adds
//! its own ramp-up. One connection runs throughout instead, and the guard is attached and
//! detached every 220 ms; the rate of each segment is read from the receiver's device counter,
//! so that two adjacent segments, one attached and one detached, see nearly the same machine.
//! (Per-round ratios of separate 2 s runs spread from 0.73 to 1.03 in a trial where adjacent
//! segments had an interquartile range of 0.96 to 1.06.) Client and server are not pinned to
//! CPUs: a pinned process cannot move away from other work on a shared machine, and pinned runs
//! fell to 5-7 Gbit/s where unpinned ones kept 10-15 in the same trial.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use multihome::guard::{AttachMode, Guard};

use super::report::{median, percentile, ratio, Figure, Row, Section};
use crate::guard::egress;
use crate::netns::{veth, Netns};

/// Pairs of adjacent segments, one detached and one attached, in ABBA order.
const PAIRS: usize = 100;
/// A segment's measured part, after `SETTLE` left out past each change of the guard.
const SEGMENT: Duration = Duration::from_millis(200);
const SETTLE: Duration = Duration::from_millis(20);
/// Left out at the start: TCP's ramp-up.
const WARMUP: Duration = Duration::from_secs(1);

pub struct Results {
    /// Per pair, the rate of its attached and its detached segment.
    pub attached_gbps: Vec<f64>,
    pub detached_gbps: Vec<f64>,
    /// Packets the guard counted as passed while attached: it was on the path.
    pub passed: u64,
}

pub fn run() -> Result<Results> {
    let host = Netns::new("bt")?;
    let server = Netns::new("bs")?;
    veth(&host, "wan1", &server, "lan")?;
    host.sh("ip addr add 192.168.0.10/24 dev wan1")?;
    server.sh("ip addr add 192.168.0.1/24 dev lan")?;
    let wan1 = host.ifindex("wan1")?;
    let iperf_server = server.spawn(&[
        "iperf3",
        "-s",
        "-B",
        "192.168.0.1",
        "--logfile",
        "/dev/null",
    ])?;
    // The server's /proc/PID/net/dev shows its namespace's counters, read without entering it.
    let received = Received(format!("/proc/{}/net/dev", iperf_server.pid()));
    sleep(Duration::from_millis(300));
    let mut guard = Guard::load(&host.pin_dir(), AttachMode::Auto)?;
    guard.put_entry("192.168.0.10".parse()?, &egress(wan1, 1500))?;
    let measured = WARMUP + (SETTLE + SEGMENT) * (2 * PAIRS) as u32;
    // Whole seconds, with one to spare for the connection's set-up.
    let seconds = (measured.as_secs() + 2).to_string();
    let mut results = Results {
        attached_gbps: Vec::new(),
        detached_gbps: Vec::new(),
        passed: 0,
    };
    std::thread::scope(|s| -> Result<()> {
        let client = s.spawn(|| {
            host.run(&[
                "iperf3",
                "-c",
                "192.168.0.1",
                "-B",
                "192.168.0.10",
                "-t",
                &seconds,
            ])
        });
        received.wait_flowing()?;
        sleep(WARMUP);
        let mut attached = false;
        for pair in 0..PAIRS {
            // ABBA: a drift in the machine's load favours neither side.
            for on in [pair % 2 == 1, pair % 2 == 0] {
                if on != attached {
                    host.enter(|| {
                        if on {
                            guard.attach(wan1)
                        } else {
                            guard.detach(wan1)
                        }
                    })?;
                    attached = on;
                }
                sleep(SETTLE);
                let gbps = received.rate_over(SEGMENT)?;
                if on {
                    results.attached_gbps.push(gbps);
                } else {
                    results.detached_gbps.push(gbps);
                }
            }
        }
        if attached {
            host.enter(|| guard.detach(wan1))?;
        }
        if client.is_finished() {
            bail!("iperf3 ended before the last segment: {:?}", client.join());
        }
        client
            .join()
            .map_err(|_| anyhow::anyhow!("the iperf3 thread panicked"))?
            .map(drop)
    })?;
    results.passed = guard.counters()?.get(&wan1).map_or(0, |c| c.passed);
    if results.passed == 0 {
        bail!("the guard passed no packet while attached: it was not on the path");
    }
    host.enter(|| guard.remove_all())?;
    Ok(results)
}

/// The receiver's `lan` byte counter, from a `/proc/PID/net/dev` of its namespace.
struct Received(String);

impl Received {
    fn bytes(&self) -> Result<u64> {
        let text =
            std::fs::read_to_string(&self.0).with_context(|| format!("reading {}", self.0))?;
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix("lan:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no lan receive bytes in {}", self.0))
    }

    /// Waits (up to 5 s) until bytes arrive: the connection is up.
    fn wait_flowing(&self) -> Result<()> {
        let start = (self.bytes()?, Instant::now());
        while self.bytes()? < start.0 + (1 << 20) {
            if start.1.elapsed() > Duration::from_secs(5) {
                bail!("iperf3 sent nothing within 5 s");
            }
            sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The receive rate over `segment`, in Gbit/s (timed by the clock, not by the sleep).
    fn rate_over(&self, segment: Duration) -> Result<f64> {
        let (b0, t0) = (self.bytes()?, Instant::now());
        sleep(segment);
        let (b1, t1) = (self.bytes()?, Instant::now());
        Ok((b1 - b0) as f64 * 8.0 / t1.duration_since(t0).as_secs_f64() / 1e9)
    }
}

pub fn section(results: &Results) -> Section {
    let on = median(&results.attached_gbps);
    let off = median(&results.detached_gbps);
    let mut paired: Vec<f64> = results
        .attached_gbps
        .iter()
        .zip(&results.detached_gbps)
        .filter_map(|(a, d)| ratio(Some(*a), Some(*d)))
        .collect();
    paired.sort_by(f64::total_cmp);
    let r = median(&paired);
    let spread = if paired.is_empty() {
        "not measured".to_owned()
    } else {
        format!(
            "{:.3} to {:.3} (min {:.3}, max {:.3})",
            percentile(&paired, 25.0),
            percentile(&paired, 75.0),
            paired[0],
            paired[paired.len() - 1]
        )
    };
    let ms = |d: Duration| d.as_millis();
    Section {
        title: "Throughput",
        method: format!(
            "iperf3 TCP, one stream, one run over a veth uplink between two namespaces; after \
             {warmup} ms of ramp-up the guard (TCX egress, entry for the sender's address: the \
             pass path) is attached and detached in turn, {PAIRS} pairs of adjacent segments in \
             ABBA order, each segment {seg} ms measured after {settle} ms left out, its rate \
             read from the receiver's device byte counter (headers included). The goal is \
             judged on the median of the per-pair ratios: the two segments of a pair are \
             milliseconds apart, so their ratio cancels most of the load that other work puts \
             on the shared CPUs, which moves single iperf3 runs by far more than the guard can \
             (its cost is tens of ns per GSO packet, under 1% here). The ratio of the medians, \
             which does not pair the segments, is given as a check; the interquartile range of \
             the per-pair ratios shows the noise left.",
            warmup = ms(WARMUP),
            seg = ms(SEGMENT),
            settle = ms(SETTLE),
        ),
        rows: vec![
            Row::new("guard detached (median)", Figure::Value(off, "Gbit/s")),
            Row::new("guard attached (median)", Figure::Value(on, "Gbit/s")),
            Row::new(
                "attached / detached (median of per-pair ratios)",
                Figure::Value(r, ""),
            )
            .goal(">= 0.97", r.map(|r| r >= 0.97)),
            Row::new("per-pair ratios, interquartile range", Figure::Text(spread)),
            Row::new(
                "attached / detached (ratio of medians)",
                Figure::Value(ratio(on, off), ""),
            ),
            Row::new(
                "segments, detached",
                Figure::Samples(results.detached_gbps.clone(), "Gbit/s"),
            ),
            Row::new(
                "segments, attached",
                Figure::Samples(results.attached_gbps.clone(), "Gbit/s"),
            ),
            Row::new(
                "packets the guard passed while attached",
                Figure::Count(results.passed),
            ),
        ],
    }
}
