//! Throughput: TCP with iperf3 over a veth uplink, the guard attached (its pass path, with an
//! entry for the sender's address) and detached, alternating in one run; the median of each.

use std::time::Duration;

use anyhow::{Context, Result};
use multihome::guard::{AttachMode, Guard};

use super::frames::egress;
use super::report::{median, ratio, Figure, Row, Section};
use crate::netns::{veth, Netns};

const ROUNDS: usize = 8;
const SECONDS: u32 = 2;

pub struct Results {
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
    let _iperf = server.spawn(&["iperf3", "-s", "-B", "192.168.0.1"])?;
    std::thread::sleep(Duration::from_millis(300));
    let mut guard = Guard::load(&host.pin_dir(), AttachMode::Auto)?;
    guard.put_entry("192.168.0.10".parse()?, &egress(wan1, 1500))?;
    let mut results = Results {
        attached_gbps: Vec::new(),
        detached_gbps: Vec::new(),
        passed: 0,
    };
    // Alternate which goes first, so that a drift in the machine's load favours neither.
    for round in 0..ROUNDS {
        for attached in [round % 2 == 1, round % 2 == 0] {
            if attached {
                host.enter(|| guard.attach(wan1))?;
                results.attached_gbps.push(iperf(&host)?);
                host.enter(|| guard.detach(wan1))?;
            } else {
                results.detached_gbps.push(iperf(&host)?);
            }
        }
    }
    results.passed = guard.counters()?.get(&wan1).map_or(0, |c| c.passed);
    host.enter(|| guard.remove_all())?;
    Ok(results)
}

/// One iperf3 run, receiver's rate in Gbit/s.
fn iperf(host: &Netns) -> Result<f64> {
    let out = host.run(&[
        "iperf3",
        "-c",
        "192.168.0.1",
        "-B",
        "192.168.0.10",
        "-t",
        &SECONDS.to_string(),
        "-J",
    ])?;
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3's JSON")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .with_context(|| format!("no end.sum_received.bits_per_second in iperf3's output: {out}"))
}

pub fn section(results: &Results) -> Section {
    let on = median(&results.attached_gbps);
    let off = median(&results.detached_gbps);
    // Each round's two runs are adjacent in time: their ratio cancels most of the machine's
    // drifting load, so the figure is the median of those ratios.
    let paired: Vec<f64> = results
        .attached_gbps
        .iter()
        .zip(&results.detached_gbps)
        .filter_map(|(a, d)| ratio(Some(*a), Some(*d)))
        .collect();
    let r = median(&paired);
    Section {
        title: "Throughput",
        method: format!(
            "iperf3 TCP, one stream, {SECONDS} s per run, over a veth uplink between two \
             namespaces; {ROUNDS} rounds alternating guard detached / attached (ABBA order) (TCX egress, entry \
             for the sender's address: the pass path); medians."
        ),
        rows: vec![
            Row::new("guard detached", Figure::Value(off, "Gbit/s")),
            Row::new("guard attached", Figure::Value(on, "Gbit/s")),
            Row::new(
                "runs, detached; attached (Gbit/s)",
                Figure::Text(format!(
                    "{}; {}",
                    list(&results.detached_gbps),
                    list(&results.attached_gbps)
                )),
            ),
            Row::new("attached / detached (median of per-round ratios)", Figure::Value(r, ""))
                .goal(">= 0.97", r.map(|r| r >= 0.97)),
            Row::new(
                "packets the guard passed while attached",
                Figure::Count(results.passed),
            ),
        ],
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}
