//! The benchmarks' stopwatch: a raw rtnetlink multicast socket in the measured namespace, read
//! by a thread of its own that timestamps each notification as soon as `recv` returns it.
//! Raw rather than `multihome::netlink::Events` so that no async runtime sits between the kernel
//! and the timestamp. The parser is pure and keeps only what the benchmarks compare.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::netns::Netns;

/// What a notification says, as far as the benchmarks care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    Addr {
        added: bool,
        ifindex: u32,
        addr: IpAddr,
    },
    Route {
        added: bool,
        table: u32,
        dst_len: u8,
        gateway: Option<IpAddr>,
        prefsrc: Option<IpAddr>,
    },
    Rule {
        added: bool,
        table: u32,
        src: Option<IpAddr>,
    },
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;

/// Splits a datagram into its notifications.
pub fn parse(buf: &[u8]) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
        if let Some(note) = message(kind, &rest[16..len]) {
            notes.push(note);
        }
        rest = &rest[align(len).min(rest.len())..];
    }
    notes
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn message(kind: u16, body: &[u8]) -> Option<Note> {
    match kind {
        RTM_NEWADDR | RTM_DELADDR if body.len() >= 8 => {
            let family = body[0];
            let ifindex = u32::from_ne_bytes(body[4..8].try_into().unwrap());
            let attrs = attributes(&body[8..]);
            // IFA_LOCAL is the address itself on point-to-point links; IFA_ADDRESS otherwise.
            let addr = find(&attrs, 2)
                .or_else(|| find(&attrs, 1))
                .and_then(|a| ip(family, a))?;
            Some(Note::Addr {
                added: kind == RTM_NEWADDR,
                ifindex,
                addr,
            })
        }
        RTM_NEWROUTE | RTM_DELROUTE if body.len() >= 12 => {
            let family = body[0];
            let attrs = attributes(&body[12..]);
            Some(Note::Route {
                added: kind == RTM_NEWROUTE,
                table: table(body[4], &attrs),
                dst_len: body[1],
                gateway: find(&attrs, 5).and_then(|a| ip(family, a)),
                prefsrc: find(&attrs, 7).and_then(|a| ip(family, a)),
            })
        }
        RTM_NEWRULE | RTM_DELRULE if body.len() >= 12 => {
            let family = body[0];
            let attrs = attributes(&body[12..]);
            Some(Note::Rule {
                added: kind == RTM_NEWRULE,
                table: table(body[4], &attrs),
                src: find(&attrs, 2).and_then(|a| ip(family, a)),
            })
        }
        _ => None,
    }
}

/// RTA_TABLE / FRA_TABLE (both 15) when present, else the header's 8-bit table.
fn table(header: u8, attrs: &[(u16, &[u8])]) -> u32 {
    find(attrs, 15)
        .and_then(|a| a.try_into().ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(u32::from(header))
}

fn attributes(mut rest: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            break;
        }
        out.push((kind, &rest[4..len]));
        rest = &rest[align(len).min(rest.len())..];
    }
    out
}

fn find<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn ip(family: u8, bytes: &[u8]) -> Option<IpAddr> {
    match (family as i32, bytes.len()) {
        (libc::AF_INET, 4) => Some(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).into()),
        (libc::AF_INET6, 16) => Some(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into()),
        _ => None,
    }
}

/// A running watcher: timestamped notes arrive on `notes` until it is dropped.
pub struct Watcher {
    pub notes: Receiver<(Instant, Note)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

// RTMGRP_* bits: IPv4 addresses, routes, rules; IPv6 addresses, routes; IPv6 rules (group 19).
const GROUPS: u32 = 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | (1 << 18);

impl Watcher {
    /// Subscribes in `ns` (a netlink socket stays in the namespace it was opened in).
    pub fn start(ns: &Netns) -> Result<Watcher> {
        let fd = ns.enter(open_socket)?;
        let (tx, notes) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !stopping.load(Ordering::Relaxed) {
                // SAFETY: recv into a buffer we own, of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let now = Instant::now();
                if n <= 0 {
                    continue; // timeout (checks `stop`) or ENOBUFS (a lost note shows as a timeout)
                }
                for note in parse(&buf[..n as usize]) {
                    if tx.send((now, note)).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Watcher {
            notes,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for a note matching `want`, skipping others, until `deadline`.
    pub fn wait(&self, deadline: Instant, want: impl Fn(&Note) -> bool) -> Option<Instant> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.notes.recv_timeout(left) {
                Ok((at, note)) if want(&note) => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits until no note has arrived for `gap` (or `deadline` passed): whatever reacts to the
    /// last change is done.
    pub fn quiet(&self, gap: Duration, deadline: Instant) {
        while Instant::now() < deadline && self.notes.recv_timeout(gap).is_ok() {}
    }

    /// Forgets what arrived so far.
    pub fn drain(&self) {
        while self.notes.try_recv().is_ok() {}
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw rtnetlink socket in the calling thread's network namespace.
pub(super) fn netlink_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        bail!("netlink socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn open_socket() -> Result<OwnedFd> {
    let fd = netlink_socket()?;
    let raw = fd.as_raw_fd();
    let size: libc::c_int = 16 << 20;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: option values of the sizes given, on our socket.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            4,
        );
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    // SAFETY: a zeroed sockaddr_nl with the family and groups set.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = GROUPS;
    // SAFETY: bind with a sockaddr_nl of its size.
    let rc = unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        bail!("netlink bind: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// How long to wait for something that should take milliseconds before calling it missing.
pub const PATIENCE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while !a.len().is_multiple_of(4) {
            a.push(0);
        }
        a
    }

    #[test]
    fn parses_addresses_routes_and_rules_in_one_datagram() {
        let mut addr = vec![libc::AF_INET as u8, 24, 0, 0];
        addr.extend_from_slice(&7u32.to_ne_bytes());
        addr.extend(attr(1, &[192, 168, 0, 21]));
        let mut route = vec![libc::AF_INET as u8, 24, 0, 0, 252, 77, 253, 1, 0, 0, 0, 0];
        route.extend(attr(15, &1002u32.to_ne_bytes()));
        route.extend(attr(7, &[192, 168, 0, 21]));
        let mut rule = vec![libc::AF_INET6 as u8, 0, 128, 0, 100, 0, 0, 1, 0, 0, 0, 0];
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        rule.extend(attr(2, &v6.octets()));
        let mut buf = nlmsg(RTM_NEWADDR, &addr);
        buf.extend(nlmsg(RTM_DELROUTE, &route));
        buf.extend(nlmsg(RTM_NEWRULE, &rule));
        buf.extend(nlmsg(3, &[])); // NLMSG_DONE: ignored
        let a: IpAddr = "192.168.0.21".parse().unwrap();
        assert_eq!(
            parse(&buf),
            vec![
                Note::Addr {
                    added: true,
                    ifindex: 7,
                    addr: a
                },
                Note::Route {
                    added: false,
                    table: 1002,
                    dst_len: 24,
                    gateway: None,
                    prefsrc: Some(a)
                },
                Note::Rule {
                    added: true,
                    table: 100,
                    src: Some(v6.into())
                },
            ]
        );
    }

    #[test]
    fn truncated_input_yields_what_is_whole() {
        let mut addr = vec![libc::AF_INET as u8, 24, 0, 0];
        addr.extend_from_slice(&7u32.to_ne_bytes());
        addr.extend(attr(2, &[192, 168, 0, 21]));
        let buf = nlmsg(RTM_DELADDR, &addr);
        assert_eq!(parse(&buf).len(), 1);
        assert_eq!(parse(&buf[..buf.len() - 1]), vec![]);
        assert_eq!(parse(&[1, 2, 3]), vec![]);
    }
}
