//! Misroutes: a 10,000 packets/s UDP stream from a socket bound to wan2's address, towards an
//! "internet" address, while (a) wan2 is renumbered 100 times, the sender moving to the new
//! address 5 ms after it appears and the old one going 5 ms later, and (b) multihome's rules are
//! flushed 100 times (`ip rule flush protocol 77`), each time until the daemon has put them back.
//! Packets that reach router A (nftables counter at its prerouting hook) went out the wrong
//! uplink. Run with the guard and with `--no-ebpf`, on the same bed, one after the other.
//!
//! The bed is the static two-uplink bed (the DHCP testbed is another branch's): what matters
//! here is the window between a change and its repair, which a DHCP client does not alter.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::bed::{two_uplinks, Batch, Multihome, TwoUplinks, WAN2_ADDR};
use super::report::{Figure, Row, Section};
use super::watch::{Note, Watcher, PATIENCE};
use crate::netns::Netns;

pub const RENUMBERINGS: usize = 100;
pub const FLUSHES: usize = 100;
const PORT: u16 = 9999;
const SWITCH_AFTER: Duration = Duration::from_millis(5);

#[derive(Debug, Default, Clone)]
pub struct Mode {
    pub sent: u64,
    pub renumber_at_a: u64,
    pub flush_at_a: u64,
    pub at_b: u64,
    /// Renumberings in which multihome's rule for the new address was not announced by the time
    /// the sender switched to it.
    pub late: u64,
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
            let to: SocketAddr = (Ipv4Addr::new(203, 0, 113, 10), PORT).into();
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

fn counter(router: &Netns) -> Result<u64> {
    let out = router.sh("nft list chain inet bench pre")?;
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no counter in {out}"))
}

fn count_udp(router: &Netns) -> Result<()> {
    router.sh(&format!(
        "nft add table inet bench && \
         nft add chain inet bench pre '{{ type filter hook prerouting priority -300; }}' && \
         nft add rule inet bench pre udp dport {PORT} counter"
    ))?;
    Ok(())
}

pub fn run(bin: &Path) -> Result<Results> {
    let bed = two_uplinks()?;
    count_udp(&bed.a)?;
    count_udp(&bed.b)?;
    let watcher = Watcher::start(&bed.host)?;
    let mut batch = Batch::start(&bed.host)?;
    let mut current: Ipv4Addr = WAN2_ADDR.parse()?;
    let mut next_host = 30u8;
    let mut modes = Vec::new();
    for args in [&["wan1", "wan2"][..], &["--no-ebpf", "wan1", "wan2"]] {
        let daemon = Multihome::start(&bed.host, bin, args)?;
        let sender = Sender::start(&bed.host, current)?;
        std::thread::sleep(Duration::from_millis(200)); // ARP for the gateway
        let sent0 = sender.sent.load(Ordering::Relaxed);
        let (a0, b0) = (counter(&bed.a)?, counter(&bed.b)?);
        let mut late = 0;
        for _ in 0..RENUMBERINGS {
            let new = Ipv4Addr::new(192, 168, 0, next_host);
            next_host = if next_host >= 229 { 30 } else { next_host + 1 };
            watcher.drain();
            batch.send(&format!("addr add {new}/24 dev wan2"))?;
            let t0 = watcher
                .wait(
                    Instant::now() + PATIENCE,
                    |n| matches!(n, Note::Addr { added: true, addr, .. } if *addr == new),
                )
                .context("the new address was not announced")?;
            sleep_until(t0 + SWITCH_AFTER);
            sender.switch(new);
            let src = std::net::IpAddr::V4(new);
            let ruled = watcher
                .seen(|n| matches!(n, Note::Rule { added: true, src: Some(s), .. } if *s == src));
            late += u64::from(ruled.is_none_or(|at| at > t0 + SWITCH_AFTER));
            sleep_until(t0 + 2 * SWITCH_AFTER);
            batch.send(&format!("addr del {current}/24 dev wan2"))?;
            current = new;
            std::thread::sleep(Duration::from_millis(10));
        }
        let a1 = counter(&bed.a)?;
        flushes(&bed, &watcher, current)?;
        let total = sender.sent.clone();
        drop(sender); // joins the sending thread: the count is final
        let sent = total.load(Ordering::Relaxed) - sent0;
        std::thread::sleep(Duration::from_millis(20)); // in flight
        let (a2, b2) = (counter(&bed.a)?, counter(&bed.b)?);
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
            guard_counts,
        });
        daemon.stop()?;
    }
    Ok(Results {
        no_ebpf: modes.pop().unwrap(),
        guard: modes.pop().unwrap(),
    })
}

fn flushes(bed: &TwoUplinks, watcher: &Watcher, current: Ipv4Addr) -> Result<()> {
    let src = std::net::IpAddr::V4(current);
    for _ in 0..FLUSHES {
        watcher.drain();
        bed.host.sh("ip -4 rule flush protocol 77")?;
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
            "10,000 UDP packets/s (10 every ms) from a socket bound to wan2's address to \
             203.0.113.10, on the static two-uplink bed (wan1 metric 10 is the main default). \
             (a) {RENUMBERINGS} renumberings of wan2: new address added, the sender switches to \
             it 5 ms after its RTM_NEWADDR, the old one is deleted 5 ms later. (b) {FLUSHES} \
             `ip -4 rule flush protocol 77`, each until multihome has restored its rule. Packets \
             counted by nftables at router A's prerouting hook. Same bed, guard first, then \
             `--no-ebpf`."
        ),
        rows,
    }
}
