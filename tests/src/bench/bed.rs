//! What the measurements run against: the two-uplink bed of the reconciler tests (static
//! addresses and `proto dhcp` default routes standing in for DHCP clients), the release daemon
//! started quietly (debug logging would be part of what is measured), and a persistent
//! `ip -batch` so that changing an address costs a write, not a fork.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{veth, Netns, Process};

/// The host with uplinks wan1 (metric 10) and wan2 (metric 20) to routers A and B, both
/// 192.168.0.1 on 192.168.0.0/24; B also answers on 192.168.0.254, the gateway a renewed lease
/// may switch to.
pub struct TwoUplinks {
    pub host: Netns,
    pub a: Netns,
    pub b: Netns,
}

pub const WAN1_ADDR: &str = "192.168.0.10";
pub const WAN2_ADDR: &str = "192.168.0.20";
pub const GATEWAY: &str = "192.168.0.1";
pub const OTHER_GATEWAY: &str = "192.168.0.254";

pub fn two_uplinks() -> Result<TwoUplinks> {
    let host = Netns::new("bh")?;
    let a = Netns::new("ba")?;
    let b = Netns::new("bb")?;
    veth(&host, "wan1", &a, "lan")?;
    veth(&host, "wan2", &b, "lan")?;
    a.sh("ip addr add 192.168.0.1/24 dev lan")?;
    b.sh("ip addr add 192.168.0.1/24 dev lan && ip addr add 192.168.0.254/24 dev lan")?;
    // A renumbering adds the new address before the old one goes: keep it when the old,
    // primary one is deleted.
    host.sh(&format!(
        "sysctl -qw net.ipv4.conf.wan1.promote_secondaries=1 net.ipv4.conf.wan2.promote_secondaries=1 &&
         ip addr add {WAN1_ADDR}/24 dev wan1 && ip addr add {WAN2_ADDR}/24 dev wan2 &&
         ip route add default via {GATEWAY} dev wan1 metric 10 proto dhcp &&
         ip route add default via {GATEWAY} dev wan2 metric 20 proto dhcp"
    ))?;
    Ok(TwoUplinks { host, a, b })
}

/// A `multihome run` of the release build, logging at info level.
pub struct Multihome {
    process: Process,
    log: PathBuf,
}

impl Multihome {
    /// Starts `BIN run --pin-dir PIN ARGS` in `ns` and waits until it has reconciled once.
    pub fn start(ns: &Netns, bin: &Path, args: &[&str]) -> Result<Multihome> {
        let log = std::env::temp_dir().join(format!("{}-bench.log", ns.name()));
        let _ = std::fs::remove_file(&log);
        let pin = ns.pin_dir().display().to_string();
        let bin = bin.to_str().context("non-UTF-8 binary path")?;
        let mut argv = vec![bin, "--log-level", "info", "run", "--pin-dir", &pin];
        argv.extend_from_slice(args);
        let process = ns.spawn_logged(&argv, &log)?;
        let mut daemon = Multihome { process, log };
        let start = Instant::now();
        while !daemon.log().contains("running:") {
            if !daemon.process.running() {
                bail!("multihome exited at start:\n{}", daemon.log());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("multihome not ready within 60 s:\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM: it removes what it installed.
    pub fn stop(self) -> Result<()> {
        let status = self.process.stop(libc::SIGTERM)?;
        if !status.success() {
            bail!("multihome exited with {status} on SIGTERM");
        }
        Ok(())
    }
}

/// `ip -force -batch -` kept running in a namespace: each line written is one `ip` command.
pub struct Batch {
    child: Child,
    stdin: ChildStdin,
}

impl Batch {
    pub fn start(ns: &Netns) -> Result<Batch> {
        let mut child = ns
            .command("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ip -batch")?;
        let stdin = child.stdin.take().context("ip -batch stdin")?;
        Ok(Batch { child, stdin })
    }

    /// Sends commands (one per line, without the leading `ip`).
    pub fn send(&mut self, commands: &str) -> Result<()> {
        self.stdin.write_all(commands.as_bytes())?;
        if !commands.ends_with('\n') {
            self.stdin.write_all(b"\n")?;
        }
        self.stdin.flush()?;
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per-process figures from /proc.
pub struct ProcStat {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

pub fn proc_stat(pid: u32) -> Result<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // (14, 15) cover every thread.
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .context("malformed stat")
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    // Context switches are counted per thread: sum them over the tasks.
    let mut voluntary = 0;
    let mut involuntary = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("status"))?;
        voluntary += status_field(&text, "voluntary_ctxt_switches:")?;
        involuntary += status_field(&text, "nonvoluntary_ctxt_switches:")?;
    }
    Ok(ProcStat {
        cpu_ticks: ticks(14)? + ticks(15)?,
        voluntary_switches: voluntary,
        involuntary_switches: involuntary,
        peak_rss_kib: status_field(&status, "VmHWM:")?,
    })
}

fn status_field(status: &str, name: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in a /proc status"))
}

/// Clock ticks per second (utime and stime are in these).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}
