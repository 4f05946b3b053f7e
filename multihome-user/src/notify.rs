//! systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET. Written out here
//! rather than pulled in as a crate: it is a dozen lines and has no other dependency.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (e.g. "READY=1") to the service manager; a no-op outside systemd. Failures
/// are logged and otherwise ignored: readiness must never stop the daemon from working.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(path.as_ref()),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(err) = sent {
        log::warn!("could not notify systemd ({state}): {err}");
    }
}

/// Tells systemd a reload has begun (READY=1 ends it). The time is what `Type=notify-reload`
/// (systemd 253 and later) checks; 252 needs only the first line.
pub(crate) fn reloading() {
    // SAFETY: clock_gettime writes into the timespec we own.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// How often to send WATCHDOG=1: half of systemd's `WatchdogSec=` ($WATCHDOG_USEC), when the
/// watchdog is meant for this process ($WATCHDOG_PID unset or ours). The ping comes from the
/// event loop itself, so a loop stuck in a netlink call stops it and systemd restarts us.
fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    interval_for(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// The watchdog's ticks, at [`watchdog_interval`]; none when systemd asks for no watchdog.
pub(crate) struct Watchdog(Option<tokio::time::Interval>);

impl Watchdog {
    pub(crate) fn new() -> Watchdog {
        Watchdog(watchdog_interval().map(tokio::time::interval))
    }

    /// The next tick; never without a watchdog.
    pub(crate) async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

fn interval_for(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if pid.is_some_and(|pid| pid.parse() != Ok(me)) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_half_its_period_for_its_own_pid() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(interval_for(Some("30000000"), None, 7), half);
        assert_eq!(interval_for(Some("30000000"), Some("7"), 7), half);
        assert_eq!(interval_for(Some("30000000"), Some("8"), 7), None);
        assert_eq!(interval_for(None, None, 7), None);
        assert_eq!(interval_for(Some("0"), None, 7), None);
        assert_eq!(interval_for(Some("x"), None, 7), None);
    }

    #[test]
    fn sends_the_state_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("mh-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
