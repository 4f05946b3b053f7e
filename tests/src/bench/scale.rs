//! Scale: many uplinks (veth pairs to one router namespace), each with an IPv6 address in its own
//! 2001:db8:N::/64 and a `proto ra` default route via 2001:db8:N::1 (IPv6, so that 256 uplinks
//! get distinct documentation addresses). Measured on the release daemon: cold start to every
//! `from ADDR` rule in place, peak RSS, the time to reconcile one address change with all the
//! uplinks present (against the same with 2 uplinks: it should not grow), beside the kernel's own
//! time to add a rule with as many rules in place, and the CPU time and context switches of 10 s
//! of idleness.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use multihome::DEFAULT_PRIORITY;

use super::bed::{clock_ticks, proc_stat, Batch, Multihome};
use super::report::{median, ratio, Figure, Row, Section, Summary};
use super::watch::{netlink_socket, Note, Watcher, PATIENCE};
use crate::netns::Netns;

pub const UPLINKS: usize = 256;
const CHANGES: usize = 50;
const IDLE: Duration = Duration::from_secs(10);

pub struct Results {
    pub uplinks: usize,
    /// Cold start of the default (`--attach auto`): clsact on every device first.
    pub cold_start_ms: Option<f64>,
    /// From the same spawn until every device's guard had moved to TCX in the background.
    pub all_tcx_ms: Option<f64>,
    /// Cold start with `--attach tcx`: one TCX link after another, as every release before
    /// auto hooked by clsact first (the old figure), on the same devices.
    pub cold_start_tcx_ms: Option<f64>,
    pub peak_rss_kib: u64,
    /// Address changes on one uplink, with `uplinks` present.
    pub changes: Changes,
    /// The same with 2 uplinks.
    pub changes_2: Changes,
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

/// Starts the daemon on `n` uplinks (after `options`); returns it with the time until every
/// `from ADDR` rule was announced (the diff writes the guard's entries and attachments before
/// the rules, so the guard is in place by then too), and the instant it was spawned.
fn start(
    host: &Netns,
    watcher: &Watcher,
    bin: &Path,
    n: usize,
    options: &[&str],
) -> Result<(Multihome, Option<f64>, Instant)> {
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let mut args: Vec<&str> = options.to_vec();
    args.extend(names.iter().map(String::as_str));
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
    Ok((daemon, cold, spawned))
}

/// Time from `spawned` until every one of `n` devices is hooked by TCX alone (auto mode's
/// background moves done), polled every 5 ms.
fn all_on_tcx(host: &Netns, n: usize, spawned: Instant) -> Option<f64> {
    let pin_dir = host.pin_dir();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let kinds = multihome::guard::attachments(&pin_dir);
        if kinds.len() == n
            && kinds
                .values()
                .all(|k| *k == multihome::guard::AttachKind::Tcx)
        {
            return Some(ms(spawned.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Each size's renumberings, and the kernel's own cost of a rule beside each.
pub struct Changes {
    /// RTM_NEWADDR of the new address to RTM_NEWRULE `from NEW`, per change.
    pub daemon_ms: Vec<f64>,
    /// The bench's own rule of another protocol, added right after each change: request sent
    /// to its RTM_NEWRULE.
    pub kernel_ms: Vec<f64>,
    /// Waits for a quiet daemon (before each change and each foreign rule) that ran out of
    /// `PATIENCE` before it was quiet for `SETTLE`.
    pub unsettled: u64,
}

/// How long the daemon must use no CPU before the next change (or foreign rule) starts.
const SETTLE: Duration = Duration::from_millis(50);

/// `CHANGES` renumberings of the middle uplink: address event to its `from NEW` rule, each
/// followed by a foreign rule added and deleted by the bench. Every change and every foreign
/// rule starts from a quiet daemon, so that the aftermath of the previous one (its own echo
/// events, the re-dump after an address removal) stays out of the measured window.
fn changes(host: &Netns, watcher: &Watcher, daemon: &Multihome, n: usize) -> Result<Changes> {
    let i = n / 2;
    let mut batch = Batch::start(host)?;
    let mut foreign = ForeignRules::open(host)?;
    let mut out = Changes {
        daemon_ms: Vec::new(),
        kernel_ms: Vec::new(),
        unsettled: 0,
    };
    let mut old = addr(i, 2);
    for k in 0..CHANGES {
        let new = addr(i, 3 + (k % 2) as u16 * 0x10);
        out.unsettled += u64::from(!settled(daemon.pid())?);
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
        let change = t0
            .zip(rule)
            .map(|(t0, rule)| ms(rule.saturating_duration_since(t0)));
        batch.send(&format!("addr del {old}/64 dev u{i}"))?;
        watcher.wait(
            Instant::now() + PATIENCE,
            |n| matches!(n, Note::Rule { added: false, src: Some(s), .. } if *s == old),
        );
        old = new;
        out.unsettled += u64::from(!settled(daemon.pid())?);
        let kernel = foreign.time(watcher, format!("{FOREIGN_NET}{:x}", k + 1).parse()?)?;
        out.daemon_ms.extend(change);
        out.kernel_ms.extend(kernel);
    }
    // It ignores rules of other protocols: not a word about them.
    let log = daemon.log();
    if log.contains(FOREIGN_NET) {
        bail!("multihome logged about the foreign rules:\n{log}");
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Waits until the daemon has used no CPU for `SETTLE`, for at most `PATIENCE`; false if it
/// never was quiet that long.
fn settled(pid: u32) -> Result<bool> {
    let deadline = Instant::now() + PATIENCE;
    let mut last = cpu_ns(pid)?;
    loop {
        std::thread::sleep(SETTLE);
        let now = cpu_ns(pid)?;
        if now == last {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        last = now;
    }
}

/// The run time of all the process's threads, in ns, from /proc/PID/task/*/schedstat: utime
/// and stime count clock ticks (10 ms), coarser than the millisecond bursts waited out here.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut sum = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread that ended since the listing no longer counts.
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        sum += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .context("malformed schedstat")?;
    }
    Ok(sum)
}

/// The bench's own rules: `from 2001:db8:ffff::N lookup FOREIGN_TABLE`, protocol static, at
/// the daemon's priority (so that the kernel walks the same rules to insert it), added and
/// deleted over a raw rtnetlink socket of the bench. Raw rather than `ip`, so that the time
/// from the request to its notification is the kernel's alone: no fork, no parsing.
struct ForeignRules {
    fd: OwnedFd,
    seq: u32,
}

const FOREIGN_NET: &str = "2001:db8:ffff::";
const FOREIGN_TABLE: u32 = 9999;
const RTPROT_STATIC: u8 = 4;

impl ForeignRules {
    fn open(ns: &Netns) -> Result<ForeignRules> {
        let fd = ns.enter(netlink_socket)?;
        Ok(ForeignRules { fd, seq: 0 })
    }

    /// Adds the rule from `src`, times its request to the watcher's RTM_NEWRULE, and deletes
    /// it again (waiting for the deletion's notification, so that it is gone before the next
    /// change). `None` when the notification did not come.
    fn time(&mut self, watcher: &Watcher, src: Ipv6Addr) -> Result<Option<f64>> {
        watcher.drain();
        let sent = Instant::now();
        self.request(RTM_NEWRULE, libc::NLM_F_CREATE | libc::NLM_F_EXCL, src)?;
        let deadline = Instant::now() + PATIENCE;
        let seen = watcher.wait(
            deadline,
            |n| matches!(n, Note::Rule { added: true, src: Some(s), .. } if *s == src),
        );
        self.request(RTM_DELRULE, 0, src)?;
        watcher.wait(
            deadline,
            |n| matches!(n, Note::Rule { added: false, src: Some(s), .. } if *s == src),
        );
        Ok(seen.map(|at| ms(at.saturating_duration_since(sent))))
    }

    /// Sends one rule request and reads its acknowledgement.
    fn request(&mut self, kind: u16, flags: libc::c_int, src: Ipv6Addr) -> Result<()> {
        self.seq += 1;
        // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
        let mut body = vec![libc::AF_INET6 as u8, 0, 128, 0, 0, 0, 0, FR_ACT_TO_TBL];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, FRA_SRC, &src.octets());
        attr(&mut body, FRA_PRIORITY, &DEFAULT_PRIORITY.to_ne_bytes());
        attr(&mut body, FRA_TABLE, &FOREIGN_TABLE.to_ne_bytes());
        attr(&mut body, FRA_PROTOCOL, &[RTPROT_STATIC]);
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        // SAFETY: send of a buffer we own, of its length, on our socket (to the kernel).
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent != msg.len() as isize {
            bail!("netlink send: {}", std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 1024];
        // SAFETY: recv into a buffer we own, of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        // The acknowledgement: NLMSG_ERROR, its error code (0 for success) after the header.
        if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != libc::NLMSG_ERROR as u16 {
            bail!("no acknowledgement of a rule request ({n} bytes)");
        }
        let errno = -i32::from_ne_bytes(buf[16..20].try_into().unwrap());
        if errno != 0 {
            bail!(
                "rule request {kind} from {src}: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
        Ok(())
    }
}

const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FRA_PROTOCOL: u16 = 21;

/// Appends a netlink attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

pub fn run(bin: &Path) -> Result<Results> {
    let changes_2 = {
        let (host, _router) = bed(2)?;
        let watcher = Watcher::start(&host)?;
        let (daemon, cold, _) = start(&host, &watcher, bin, 2, &[])?;
        if cold.is_none() {
            bail!("multihome did not converge on 2 uplinks");
        }
        changes(&host, &watcher, &daemon, 2)?
    };
    let (host, _router) = bed(UPLINKS)?;
    let watcher = Watcher::start(&host)?;
    // The old way first, on the same devices; its stop removes everything (256 detaches).
    let (old, cold_start_tcx_ms, _) = start(&host, &watcher, bin, UPLINKS, &["--attach", "tcx"])?;
    old.stop()?;
    let (daemon, cold_start_ms, spawned) = start(&host, &watcher, bin, UPLINKS, &[])?;
    let all_tcx_ms = all_on_tcx(&host, UPLINKS, spawned);
    let changes = changes(&host, &watcher, &daemon, UPLINKS)?;
    // The renumberings released addresses whose guard entries linger a moment (deferred work
    // the changes caused, not idleness): let that run out before the idle window.
    std::thread::sleep(multihome::LINGER + Duration::from_secs(1));
    let before = proc_stat(daemon.pid())?;
    std::thread::sleep(IDLE);
    let after = proc_stat(daemon.pid())?;
    Ok(Results {
        uplinks: UPLINKS,
        cold_start_ms,
        all_tcx_ms,
        cold_start_tcx_ms,
        peak_rss_kib: after.peak_rss_kib,
        changes,
        changes_2,
        idle_cpu_ms: Some((after.cpu_ticks - before.cpu_ticks) as f64 * 1e3 / clock_ticks() as f64),
        idle_switches: Some(
            (after.voluntary_switches + after.involuntary_switches)
                - (before.voluntary_switches + before.involuntary_switches),
        ),
    })
}

pub fn section(r: &Results) -> Section {
    let (big, small) = (&r.changes, &r.changes_2);
    let dist = |samples: &[f64]| Figure::Dist(Summary::of(samples), "ms");
    let growth = ratio(median(&big.daemon_ms), median(&small.daemon_ms));
    let n = r.uplinks;
    let waits = 2 * CHANGES;
    Section {
        title: "Scale",
        method: format!(
            "{n} veth uplinks, each with 2001:db8:N::2/64 and a `proto ra` default route; the \
             release daemon with the guard. Cold start: from spawning the daemon to the last \
             `from ADDR` rule announced (the guard's entries and attachments come before the \
             rules in each pass), first with `--attach tcx` (one TCX link after another, each \
             waiting for an RCU grace period under the RTNL lock: how every device was hooked \
             before), stopped, then with the default `--attach auto` on the same devices \
             (clsact filters first, no grace period; each device moved to TCX in the background \
             afterwards, timed from the same spawn until every device runs on TCX alone). \
             One change: {CHANGES} renumberings of the middle \
             uplink, RTM_NEWADDR to RTM_NEWRULE `from NEW`, with {n} and with 2 uplinks \
             present; each starts from a quiet daemon (its threads' run time, \
             /proc/PID/task/*/schedstat, unchanged for {settle} ms, waited for up to {patience} s) \
             so that the aftermath of the previous change (its own echo events, the re-dump \
             after the old address's removal) is not measured with the next one. The kernel's \
             own cost: after each change, once the daemon is quiet again, the bench adds a rule \
             of another protocol (`from 2001:db8:ffff::K lookup {FOREIGN_TABLE} proto static`, \
             at the daemon's priority) over its own rtnetlink socket and times the request to \
             its RTM_NEWRULE (the watcher's wake-up included, as in a change); the daemon ignores \
             it (and is checked not to log about it). The kernel walks every rule to insert one, \
             so this part of a change grows with the number of uplinks whatever the daemon does. \
             The goal is judged on the end-to-end change; the kernel's own add beside it shows \
             how much of the change, and of its growth, is the kernel's (their per-change \
             difference, tens of microseconds, is too noisy to judge on). Idle, once released addresses' lingering guard entries ran out: \
             utime+stime and context switches (all threads) over {idle} s with nothing changing.",
            settle = SETTLE.as_millis(),
            patience = PATIENCE.as_secs(),
            idle = IDLE.as_secs()
        ),
        rows: vec![
            Row::new(
                format!("cold start to converged, {n} uplinks (auto: clsact first)"),
                Figure::Value(r.cold_start_ms, "ms"),
            )
            .goal("< 1 s", r.cold_start_ms.map(|c| c < 1000.0)),
            Row::new(
                format!("cold start to converged, {n} uplinks, --attach tcx (the old way)"),
                Figure::Value(r.cold_start_tcx_ms, "ms"),
            ),
            Row::new(
                "cold start: --attach tcx / auto",
                Figure::Value(ratio(r.cold_start_tcx_ms, r.cold_start_ms), "x"),
            ),
            Row::new(
                format!("auto: spawn to all {n} devices moved to TCX (in the background)"),
                Figure::Value(r.all_tcx_ms, "ms"),
            ),
            Row::new(
                "peak RSS (VmHWM)",
                Figure::Value(Some(r.peak_rss_kib as f64 / 1024.0), "MiB"),
            ),
            Row::new(
                format!("one address change, {n} uplinks"),
                dist(&big.daemon_ms),
            ),
            Row::new("one address change, 2 uplinks", dist(&small.daemon_ms)),
            Row::new(
                format!("kernel's own rule add, {n} uplinks"),
                dist(&big.kernel_ms),
            ),
            Row::new("kernel's own rule add, 2 uplinks", dist(&small.kernel_ms)),
            Row::new(
                format!("one address change, end to end: p50 with {n} / with 2"),
                Figure::Value(growth, "x"),
            )
            .goal("does not grow (<= 2x)", growth.map(|g| g <= 2.0)),
            Row::new(
                "waits for a quiet daemon that timed out",
                Figure::Text(format!(
                    "{} of {waits} with {n}, {} of {waits} with 2",
                    big.unsettled, small.unsettled
                )),
            ),
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
