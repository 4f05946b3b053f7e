//! A steady UDP stream from one uplink's address and a packet counter at each router: what the
//! fault and life-cycle tests measure misroutes with. A packet counted at the other uplink's
//! router left through the wrong uplink.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bench::watch::{Note, Watcher};
use crate::netns::Netns;

/// The bed's wan2 address (`bed::bed`), the stream's usual source.
pub const SOURCE: &str = "192.168.0.20";
/// An "internet" destination: reached through the uplink's gateway.
pub const DESTINATION: &str = "203.0.113.1:9999";

/// Counts, at the bed's router's LAN side (`lan`), the packets from `SOURCE` to `DESTINATION`.
pub fn count_arrivals(router: &Netns) {
    count_arrivals_at(router, "lan", SOURCE);
}

/// Counts, on `device` of `router` (ingress), the UDP packets from `source` to port 9999.
pub fn count_arrivals_at(router: &Netns, device: &str, source: &str) {
    router
        .sh(&format!(
            "nft -f - <<'EOF'
table netdev arrivals {{
    counter from_source {{}}
    chain lan_in {{
        type filter hook ingress device \"{device}\" priority 0;
        ip saddr {source} udp dport 9999 counter name \"from_source\"
    }}
}}
EOF"
        ))
        .unwrap();
}

/// Forgets the counter (before counting again on a new device of the same name).
pub fn stop_counting(router: &Netns) {
    router
        .run(&["nft", "delete", "table", "netdev", "arrivals"])
        .unwrap();
}

/// The packets counted so far at `router`.
pub fn arrivals(router: &Netns) -> u64 {
    let out = router
        .run(&[
            "nft",
            "list",
            "counter",
            "netdev",
            "arrivals",
            "from_source",
        ])
        .unwrap();
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out:?}"))
}

/// A steady UDP sender bound to a source address (about 2,000 packets/s), from a socket opened
/// in the host namespace. Sends fail while the address is absent; they are not counted.
pub struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// From `SOURCE` to `DESTINATION`.
    pub fn start(host: &Netns) -> Sender {
        Sender::start_from(host, SOURCE, DESTINATION)
    }

    /// From `source` (which must exist in `host`) to `destination`.
    pub fn start_from(host: &Netns, source: &str, destination: &str) -> Sender {
        let socket = host.enter(|| UdpSocket::bind((source, 0)).unwrap());
        let destination = destination.to_owned();
        Sender::spawn(move |stop, sent| stream(&socket, &destination, stop, sent))
    }

    /// From the first address of `host` that `watcher` (subscribed there) sees added and
    /// `accept` takes, `after` it appeared, as a program does once its address exists: what a
    /// stream across a boot starts from. Nothing is sent until then.
    pub fn follow(
        host: &Netns,
        watcher: Watcher,
        accept: impl Fn(IpAddr) -> bool + Send + 'static,
        destination: SocketAddr,
        after: Duration,
    ) -> Sender {
        let netns = std::fs::File::open(host.path()).expect("opening the namespace file");
        Sender::spawn(move |stop, sent| {
            // SAFETY: setns on a namespace fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let source = loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match watcher.notes.recv_timeout(Duration::from_millis(100)) {
                    Ok((
                        _,
                        Note::Addr {
                            added: true, addr, ..
                        },
                    )) if accept(addr) => break addr,
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            std::thread::sleep(after);
            let socket = UdpSocket::bind((source, 0)).expect("binding the new address");
            stream(&socket, &destination.to_string(), stop, sent);
        })
    }

    fn spawn(body: impl FnOnce(&AtomicBool, &AtomicU64) + Send + 'static) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || body(&stop, &sent))
        };
        Sender {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// About 2,000 datagrams/s from `socket` until `stop`, counting those the stack took.
fn stream(socket: &UdpSocket, destination: &str, stop: &AtomicBool, sent: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        if socket.send_to(b"multihome", destination).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
