//! What a stopping `multihome run` leaves in the kernel. Keeping its rules and guard across a
//! restart or an upgrade is what makes the hand-over gapless: the next instance adopts them and
//! swaps in its own program in place. But kept objects go wrong once an address moves to
//! another uplink while no daemon watches, so a stop that no start follows removes them.
//!
//! systemd knows which is which: while a service stops, its unit's pending job says why
//! (`JobType` `restart` for `systemctl restart`, `try-restart`, a package upgrade's
//! `deb-systemd-invoke restart`; `stop` for `systemctl stop`, a package's removal and a
//! shutdown, where the manager's `SystemState` is `stopping`; no job for `systemctl kill` or a
//! plain kill). The rule, in order:
//!
//! 1. `--keep-on-exit`: keep;
//! 2. not under systemd (SIGTERM or Ctrl-C by hand): remove;
//! 3. a restart job: keep, for the next instance;
//! 4. a stop job while the system shuts down: keep (nothing runs after us to be misrouted, and
//!    shutdown is faster);
//! 5. anything else, or no answer within [`PATIENCE`]: remove. A wrong "remove" costs what
//!    every restart cost before (a gap of a few hundred packets); a wrong "keep" leaves rules
//!    that misroute later, which is worse.

use std::time::{Duration, Instant};

use crate::dbus::{self, Connection, Value};
use crate::instance::Left;

/// How long systemd gets to answer (connection, authentication and the calls together).
pub(crate) const PATIENCE: Duration = Duration::from_secs(2);

/// What systemd said about this service's stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Why {
    /// The unit's pending job's type (`restart`, `stop`, ...), `None` without a job.
    pub(crate) job: Option<String>,
    /// The manager's `SystemState` is `stopping` (shutdown, reboot, kexec).
    pub(crate) shutting_down: bool,
}

/// Keep or remove, and the log line saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep(Left, String),
    Remove(String),
}

/// The rule (see the module's documentation). `asked` is systemd's answer, `None` when not
/// under systemd.
pub(crate) fn verdict(keep_on_exit: bool, asked: Option<Result<Why, String>>) -> Verdict {
    let why = match (keep_on_exit, asked) {
        (true, _) => {
            return Verdict::Keep(
                Left::KeptOnPurpose,
                "leaving rules, routes and the guard in place (--keep-on-exit)".into(),
            )
        }
        (false, None) => {
            return Verdict::Remove(
                "stopped outside systemd: removing what multihome installed (run with \
                 --keep-on-exit to leave it for the next start)"
                    .into(),
            )
        }
        (false, Some(Err(err))) => {
            return Verdict::Remove(format!(
                "systemd did not say why it stops the service ({err}): removing what \
                 multihome installed"
            ))
        }
        (false, Some(Ok(why))) => why,
    };
    match why.job.as_deref() {
        Some("restart" | "try-restart") => Verdict::Keep(
            Left::Kept,
            "restart: leaving rules, routes and the guard for the next instance".into(),
        ),
        Some("stop") if why.shutting_down => Verdict::Keep(
            Left::Kept,
            "system shutdown: leaving rules, routes and the guard in place".into(),
        ),
        Some(job) => Verdict::Remove(format!(
            "{job}: removing what multihome installed (no start follows)"
        )),
        None => Verdict::Remove(
            "stopped without a systemd job (systemctl kill, or a signal by hand): removing \
             what multihome installed"
                .into(),
        ),
    }
}

/// Whether this process runs as a systemd service ($INVOCATION_ID, set for every unit).
pub(crate) fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

/// Asks systemd why this service stops: over PID 1's private socket, then the system bus.
pub(crate) fn ask() -> Result<Why, String> {
    let deadline = Instant::now() + PATIENCE;
    ask_at(dbus::SYSTEMD_PRIVATE, false, deadline).or_else(|private| {
        ask_at(dbus::SYSTEM_BUS, true, deadline).map_err(|bus| {
            format!(
                "{}: {private}; {}: {bus}",
                dbus::SYSTEMD_PRIVATE,
                dbus::SYSTEM_BUS
            )
        })
    })
}

fn ask_at(path: &str, bus: bool, deadline: Instant) -> Result<Why, String> {
    let mut conn = Connection::open(path, bus, deadline).map_err(|e| e.to_string())?;
    // `unit/self` is the caller's own unit (systemd finds it by our pid): no name needed.
    let job = match conn.property(
        "/org/freedesktop/systemd1/unit/self",
        "org.freedesktop.systemd1.Unit",
        "Job",
    ) {
        Ok(Value::Job(0, _)) => None,
        Ok(Value::Job(_, path)) => {
            match conn.property(&path, "org.freedesktop.systemd1.Job", "JobType") {
                Ok(Value::Str(kind)) => Some(kind),
                Ok(other) => return Err(format!("JobType: {other:?}")),
                // The job ended between the two calls: as good as none.
                Err(err) if err.to_string().contains("UnknownObject") => None,
                Err(err) => return Err(err.to_string()),
            }
        }
        Ok(other) => return Err(format!("Job: {other:?}")),
        Err(err) => return Err(err.to_string()),
    };
    let shutting_down = job.as_deref() == Some("stop")
        && matches!(
            conn.property(
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "SystemState",
            ),
            Ok(Value::Str(state)) if state == "stopping"
        );
    Ok(Why { job, shutting_down })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(job: Option<&str>, shutting_down: bool) -> Option<Result<Why, String>> {
        Some(Ok(Why {
            job: job.map(str::to_owned),
            shutting_down,
        }))
    }

    fn kept(verdict: Verdict) -> Option<Left> {
        match verdict {
            Verdict::Keep(left, _) => Some(left),
            Verdict::Remove(_) => None,
        }
    }

    #[test]
    fn a_restart_or_a_shutdown_keeps_everything_else_removes() {
        assert_eq!(
            kept(verdict(false, asked(Some("restart"), false))),
            Some(Left::Kept)
        );
        assert_eq!(
            kept(verdict(false, asked(Some("try-restart"), false))),
            Some(Left::Kept)
        );
        assert_eq!(
            kept(verdict(false, asked(Some("stop"), true))),
            Some(Left::Kept)
        );
        assert_eq!(kept(verdict(false, asked(Some("stop"), false))), None);
        assert_eq!(kept(verdict(false, asked(None, false))), None);
        assert_eq!(kept(verdict(false, asked(Some("reload"), false))), None);
        assert_eq!(kept(verdict(false, Some(Err("timed out".into())))), None);
        assert_eq!(kept(verdict(false, None)), None);
    }

    #[test]
    fn keep_on_exit_keeps_whatever_systemd_says() {
        for answer in [asked(Some("stop"), false), asked(None, false), None] {
            assert_eq!(kept(verdict(true, answer)), Some(Left::KeptOnPurpose));
        }
    }
}
