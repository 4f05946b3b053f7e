//! The signals `multihome run` acts on, installed before it claims, dumps or loads anything: a
//! signal's default action would otherwise end the daemon with whatever it had half set up (a
//! `systemctl stop` during the guard's verification, a SIGHUP during the first dump). A signal
//! that arrives before the event loop runs is kept and handled by its first turn.
//!
//! - SIGTERM, SIGINT: stop (what is then kept or removed is `exit`'s decision);
//! - SIGHUP: reload (dump the kernel's state again, audit the guard, reconcile, report);
//! - SIGUSR1, SIGUSR2: logged and otherwise ignored, rather than fatal (their default);
//! - SIGPIPE: ignored, so that a write to a closed socket (a `multihome reload` client that went
//!   away) is an error, not the end of the daemon. Rust's runtime ignores it already; this says
//!   so on purpose.
//!
//! The rest keep their defaults: nothing sends the others to a daemon, SIGQUIT and SIGABRT dump
//! core (SIGABRT is systemd's watchdog signal).

use std::io;

use tokio::signal::unix::{signal, Signal as Stream, SignalKind};

/// What a signal asks of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM or SIGINT (by name).
    Stop(&'static str),
    /// SIGHUP.
    Reload,
    /// SIGUSR1 or SIGUSR2 (by name): nothing to do.
    Ignored(&'static str),
}

/// The installed handlers. Once a handler is installed it stays for the life of the process
/// (tokio never restores the default), so dropping this ignores the signals rather than making
/// them fatal again.
pub(crate) struct Signals {
    term: Stream,
    int: Stream,
    hup: Stream,
    usr1: Stream,
    usr2: Stream,
}

impl Signals {
    /// Installs the handlers; call it first thing, on the runtime the daemon runs on.
    pub(crate) fn install() -> io::Result<Signals> {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
            _ = self.usr1.recv() => Signal::Ignored("SIGUSR1"),
            _ = self.usr2.recv() => Signal::Ignored("SIGUSR2"),
        }
    }
}

/// The log line for an ignored signal.
pub(crate) fn ignored(name: &str) {
    log::info!(
        "{name} ignored: SIGHUP (or `multihome reload`) dumps the kernel's state again and \
         reports; `multihome status` shows it"
    );
}
