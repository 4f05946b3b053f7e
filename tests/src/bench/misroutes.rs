//! Misroutes: a 10,000 packets/s UDP stream from a socket bound to wan2's address, towards the
//! "internet", on the end-to-end testbed (routers with dnsmasq and NAT, dhclient on the host),
//! while (a) wan2 is renumbered 100 times through DHCP, the sender moving to the new address
//! 5 ms after it appears, and (b) multihome's rules are flushed 100 times (`ip rule flush
//! protocol 77`), each time until the daemon has put them back. Datagrams router A forwarded
//! went out the wrong uplink. Run with the guard and with `--no-ebpf`, on the same testbed, one
//! after the other.
//!
//! dhclient rather than networkd: a renumbering here is router B reserving another address for
//! wan2 and the client asking again, refused its address (DHCPNAK) and offered the new one, as
//! when an ISP router's pool changes. networkd can only be made to ask again by
//! `networkctl reconfigure` (its renewal never hears the NAK, see the testbed's `renew`), which
//! is a lease dropped and taken anew rather than a renumbering.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::bed::Multihome;
use super::report::{Figure, Row, Section, Summary};
use super::watch::{Note, Watcher, PATIENCE};
use crate::netns::Netns;
use crate::testbed::probe::{echo_addr, ECHO_PORT};
use crate::testbed::{Client, Isp, Testbed, DHCP_TIMEOUT};

pub const RENUMBERINGS: usize = 100;
pub const FLUSHES: usize = 100;
const SWITCH_AFTER: Duration = Duration::from_millis(5);
/// The addresses router B reserves for wan2 in turn: outside both routers' pools, so each one
/// differs from the address wan2 holds.
const RENUMBER_TO: std::ops::RangeInclusive<u8> = 200..=249;

#[derive(Debug, Default, Clone)]
pub struct Mode {
    pub sent: u64,
    pub renumber_at_a: u64,
    pub flush_at_a: u64,
    pub at_b: u64,
    /// Renumberings in which multihome's rule for the new address was not announced by the time
    /// the sender switched to it.
    pub late: u64,
    /// From router B's new reservation to the new address on wan2, per renumbering: the pace of
    /// the DHCP side (dnsmasq re-reading its hosts, dhclient restarted, NAK, DISCOVER to ACK).
    pub renumber_ms: Vec<f64>,
    /// From the new address to the client's default route via wan2 in `main` (which multihome
    /// needs for wan2's table), per renumbering.
    pub route_ms: Vec<f64>,
    /// The guard's counters over the mode (redirected, redirect failed), when it ran.
    pub guard_counts: Option<(u64, u64)>,
}

pub struct Results {
    pub guard: Mode,
    pub no_ebpf: Mode,
}

/// Sends 10 datagrams every millisecond from the current source until stopped.
struct Sender {
    source: Arc<Mutex<Ipv4Addr>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    fn start(host: &Netns, source: Ipv4Addr) -> Result<Sender> {
        let file = std::fs::File::open(host.path())?;
        let shared = Arc::new(Mutex::new(source));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, st, n) = (shared.clone(), stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let to = SocketAddr::new(echo_addr(false), ECHO_PORT);
            let mut bound = None::<(Ipv4Addr, UdpSocket)>;
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                let want = *s.lock().unwrap();
                if bound.as_ref().is_none_or(|(a, _)| *a != want) {
                    bound = UdpSocket::bind((want, 0)).ok().map(|sock| (want, sock));
                }
                if let Some((_, sock)) = &bound {
                    for _ in 0..10 {
                        if sock.send_to(b"multihome bench", to).is_ok() {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                next += Duration::from_millis(1);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Ok(Sender {
            source: shared,
            stop,
            sent,
            thread: Some(thread),
        })
    }

    fn switch(&self, to: Ipv4Addr) {
        *self.source.lock().unwrap() = to;
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(bin: &Path) -> Result<Results> {
    let mut bed = Testbed::up(Client::Dhclient)?;
    let watcher = Watcher::start(&bed.host)?;
    let mut current = v4(bed.v4(Isp::B))?;
    let mut next = RENUMBER_TO.cycle();
    let mut modes = Vec::new();
    for args in [&["wan1", "wan2"][..], &["--no-ebpf", "wan1", "wan2"]] {
        let daemon = Multihome::start(&bed.host, bin, args)?;
        let sender = Sender::start(&bed.host, current)?;
        std::thread::sleep(Duration::from_millis(200)); // ARP for the gateway
        let sent0 = sender.sent.load(Ordering::Relaxed);
        let (a0, b0) = (bed.a.forwarded_udp()?, bed.b.forwarded_udp()?);
        let mut late = 0;
        let mut renumber_ms = Vec::new();
        let mut route_ms = Vec::new();
        for _ in 0..RENUMBERINGS {
            let new = Ipv4Addr::new(192, 168, 0, next.next().unwrap());
            watcher.drain();
            let asked = Instant::now();
            bed.renumber(Isp::B, new)?;
            let t0 = watcher
                .wait(
                    Instant::now() + DHCP_TIMEOUT,
                    |n| matches!(n, Note::Addr { added: true, addr, .. } if *addr == new),
                )
                .with_context(|| {
                    format!("wan2 was not renumbered to {new}:\n{}", bed.describe())
                })?;
            renumber_ms.push(t0.duration_since(asked).as_secs_f64() * 1e3);
            sleep_until(t0 + SWITCH_AFTER);
            sender.switch(new);
            let (ruled, routed) = rule_and_route(&watcher, new, t0 + PATIENCE);
            late += u64::from(ruled.is_none_or(|at| at > t0 + SWITCH_AFTER));
            let routed = routed.with_context(|| {
                format!(
                    "dhclient did not put wan2's default route back:\n{}",
                    bed.describe()
                )
            })?;
            route_ms.push(routed.duration_since(t0).as_secs_f64() * 1e3);
            current = new;
        }
        if bed.addresses(Isp::B, false) != [IpAddr::V4(current)] {
            bail!("wan2 should hold only {current} now:\n{}", bed.describe());
        }
        let a1 = bed.a.forwarded_udp()?;
        flushes(&bed.host, &watcher, current)?;
        let total = sender.sent.clone();
        drop(sender); // joins the sending thread: the count is final
        let sent = total.load(Ordering::Relaxed) - sent0;
        std::thread::sleep(Duration::from_millis(20)); // in flight
        let (a2, b2) = (bed.a.forwarded_udp()?, bed.b.forwarded_udp()?);
        let guard_counts = multihome::guard::PinnedMaps::open(&bed.host.pin_dir())
            .and_then(|maps| maps.counters())
            .ok()
            .map(|all| {
                all.values().fold((0, 0), |(r, f), c| {
                    (r + c.redirected, f + c.redirect_failed)
                })
            });
        modes.push(Mode {
            sent,
            renumber_at_a: a1 - a0,
            flush_at_a: a2 - a1,
            at_b: b2 - b0,
            late,
            renumber_ms,
            route_ms,
            guard_counts,
        });
        daemon.stop()?;
    }
    Ok(Results {
        no_ebpf: modes.pop().unwrap(),
        guard: modes.pop().unwrap(),
    })
}

fn v4(addr: IpAddr) -> Result<Ipv4Addr> {
    match addr {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => bail!("{a} is not an IPv4 address"),
    }
}

/// When, after a renumbering to `new`, multihome's rule for it and the client's IPv4 default
/// route in `main` were announced (`None`: not by `deadline`). Only wan2 changes, so a default
/// route in `main` is wan2's.
fn rule_and_route(
    watcher: &Watcher,
    new: Ipv4Addr,
    deadline: Instant,
) -> (Option<Instant>, Option<Instant>) {
    let (mut ruled, mut routed) = (None, None);
    while ruled.is_none() || routed.is_none() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let Ok((at, note)) = watcher.notes.recv_timeout(left) else {
            break;
        };
        match note {
            Note::Rule {
                added: true,
                src: Some(src),
                ..
            } if src == IpAddr::V4(new) => ruled = ruled.or(Some(at)),
            Note::Route {
                added: true,
                table: MAIN,
                dst_len: 0,
                gateway: Some(IpAddr::V4(_)),
                ..
            } => routed = routed.or(Some(at)),
            _ => {}
        }
    }
    (ruled, routed)
}

/// The kernel's `main` routing table.
const MAIN: u32 = 254;

fn flushes(host: &Netns, watcher: &Watcher, current: Ipv4Addr) -> Result<()> {
    let src = IpAddr::V4(current);
    for _ in 0..FLUSHES {
        watcher.drain();
        host.sh("ip -4 rule flush protocol 77")?;
        watcher
            .wait(
                Instant::now() + PATIENCE,
                |n| matches!(n, Note::Rule { added: true, src: Some(s), .. } if *s == src),
            )
            .context("multihome did not restore its rule after a flush")?;
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

pub fn section(r: &Results) -> Section {
    let rows: Vec<Row> = [("guard", &r.guard), ("--no-ebpf", &r.no_ebpf)]
        .into_iter()
        .flat_map(|(name, m)| {
            let renumber = Row::new(
                format!("{name}: packets at ISP A during {RENUMBERINGS} renumberings"),
                Figure::Count(m.renumber_at_a),
            );
            let flush = Row::new(
                format!("{name}: packets at ISP A during {FLUSHES} rule flushes"),
                Figure::Count(m.flush_at_a),
            );
            let (renumber, flush) = if name == "guard" {
                (
                    renumber.goal("0", Some(m.renumber_at_a == 0)),
                    flush.goal("0", Some(m.flush_at_a == 0)),
                )
            } else {
                (renumber, flush)
            };
            let counts = Row::new(
                format!("{name}: guard's redirects / failed redirects"),
                Figure::Text(
                    m.guard_counts
                        .map_or("no guard".into(), |(r, f)| format!("{r} / {f}")),
                ),
            );
            [
                renumber,
                Row::new(
                    format!("{name}: renumberings with the rule not yet there at the switch"),
                    Figure::Count(m.late),
                ),
                Row::new(
                    format!("{name}: one renumbering, reservation to new address on wan2"),
                    Figure::Dist(Summary::of(&m.renumber_ms), "ms"),
                ),
                Row::new(
                    format!("{name}: new address to the client's default route via wan2"),
                    Figure::Dist(Summary::of(&m.route_ms), "ms"),
                ),
                flush,
                Row::new(
                    format!("{name}: packets sent / at ISP B / at neither (lost)"),
                    Figure::Text(format!(
                        "{} / {} / {}",
                        m.sent,
                        m.at_b,
                        m.sent
                            .saturating_sub(m.at_b + m.renumber_at_a + m.flush_at_a)
                    )),
                ),
                counts,
            ]
        })
        .collect();
    Section {
        title: "Misroutes",
        method: format!(
            "10,000 UDP packets/s (10 every ms) from a socket bound to wan2's address to the \
             echo service (203.0.113.10 port 7) on the end-to-end testbed: routers A and B \
             hand out 192.168.0.0/24 with gateway 192.168.0.1 by dnsmasq and masquerade to the \
             \"internet\"; dhclient on the host (wan1 metric 10 is main's default). (a) \
             {RENUMBERINGS} DHCP renumberings of wan2: router B reserves the next address of \
             192.168.0.200-249 for wan2 (dhcp-host, SIGHUP) and dhclient asks again (restarted \
             on its lease file); refused its address (DHCPNAK), it drops the address and its \
             default route, and binds the address offered, adding the route back a few ms after \
             the address. The sender switches to the new address 5 ms after its RTM_NEWADDR. \
             Without the guard, what leaks here leaks in that gap: multihome's rule for the new \
             address is in place before the switch (\"rule not yet there\" counts the \
             exceptions), but wan2's table has no default route until the client's returns, so \
             the lookup falls through to main, i.e. wan1; how much leaks depends on how often \
             the client takes longer than the sender's 5 ms (dhclient's script forks `ip` for \
             each step, slower on a loaded machine). (b) \
             {FLUSHES} `ip -4 rule flush protocol 77`, each until multihome has restored its \
             rule. Packets counted by nftables in each router's forward hook (lost: forwarded by \
             neither, such as the guard's redirects to wan2 while it has no route). Same \
             testbed, guard first, then `--no-ebpf`."
        ),
        rows,
    }
}
