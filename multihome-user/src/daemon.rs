//! `multihome run`: the event loop. Everything it does is driven by the kernel's own
//! notifications and signals. Its only timers run when there is something to time: the retry
//! pause after a failed operation, the linger of a released address's guard entry, and the
//! watchdog when systemd asks for one (which also audits the guard's pins).

use std::process::ExitCode;
use std::time::Duration;

use std::os::fd::OwnedFd;

use futures::FutureExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{AttachChoice, RunArgs};
use crate::config::{self, Config, GatewaySpec, Params};
use crate::guard::{self, AttachMode, Guard};
use crate::instance;
use crate::netlink::{Events, Netlink, Notice};
use crate::notify::{self, notify};
use crate::plan::{self, Scope};
use crate::privileges::{self, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON};
use crate::probe::Failure;
use crate::reconcile::Reconciler;
use crate::view::{Redump, Touched};
use crate::Fatal;

/// Pauses between attempts after an operation failed (doubling up to the last).
const RETRY_PAUSES: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

pub fn main(args: RunArgs) -> Result<ExitCode, Fatal> {
    let config = config_from(&args)?;
    let mut needed = vec![CAP_NET_ADMIN];
    if config.ebpf {
        needed.extend([CAP_BPF, CAP_PERFMON]);
    }
    if let Some(cap) = privileges::missing(privileges::effective(), &needed).first() {
        return Err(Fatal::usage(format!(
            "missing capability {} ({}): run as root or grant it (AmbientCapabilities= in the unit)",
            cap.name, cap.why
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Fatal::failure(format!("starting the runtime: {err}")))?;
    runtime.block_on(run(config, &args))?;
    Ok(ExitCode::SUCCESS)
}

/// The configuration from the command line, or from $MULTIHOME_UPLINKS without uplinks there.
fn config_from(args: &RunArgs) -> Result<Config, Fatal> {
    let uplinks = if args.uplinks.is_empty() {
        let list = std::env::var("MULTIHOME_UPLINKS").unwrap_or_default();
        config::parse_uplink_list(&list).map_err(Fatal::usage)?
    } else {
        args.uplinks
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(Fatal::usage)?
    };
    Config::new(Params {
        uplinks,
        gateways: args
            .gateways
            .iter()
            .map(|s| s.parse::<GatewaySpec>())
            .collect::<Result<_, _>>()
            .map_err(Fatal::usage)?,
        table_base: args.table_base,
        priority: args.priority,
        protocol: args.owned.protocol,
        rules: !args.no_rules,
        ebpf: !args.no_ebpf,
    })
    .map_err(Fatal::usage)
}

async fn run(mut config: Config, args: &RunArgs) -> Result<(), Fatal> {
    let _instance = instance::claim(config.protocol).map_err(Fatal::usage)?;
    // Subscribe before the dump, so that nothing that changes in between is missed.
    let mut events =
        Events::subscribe(Some(args.netlink_receive_buffer)).map_err(anyhow::Error::from)?;
    let netlink = Netlink::connect().map_err(anyhow::Error::from)?;
    let view = netlink.dump().await.map_err(anyhow::Error::from)?;
    if let Some((table, route)) = plan::foreign_routes_in_tables(&config, &view).first() {
        return Err(Fatal::usage(format!(
            "table {table} already holds a route multihome does not own ({}/{} protocol {}): \
             give the uplink another table (IFNAME=TABLE) or --table-base",
            route.dst, route.dst_len, route.protocol
        )));
    }
    let guard = if config.ebpf {
        load_guard(args)?
    } else {
        log::info!("rules only (--no-ebpf): the eBPF guard is not loaded");
        None
    };
    // A guard that could not load is said once (by `load_guard`); from then on the daemon runs
    // as with --no-ebpf, so no pass plans guard operations that would fail and be retried.
    config.ebpf = guard.is_some();
    let mut sigterm = signal(SignalKind::terminate()).map_err(anyhow::Error::from)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(anyhow::Error::from)?;
    let guard_log = match guard.as_ref().and_then(Guard::log_fd) {
        // SAFETY: an OwnedFd stays open, on the same description, for as long as it lives,
        // and the AsyncFd owns it.
        Some(fd) => Some(
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|err| Fatal::failure(format!("watching the guard's log: {err}")))?,
        ),
        None => None,
    };
    let mut reconciler = Reconciler::new(config, netlink, guard, view);
    let failures = reconciler.reconcile(&Scope::All).await.failed;
    notify("READY=1");
    log::info!("running: {}", uplink_names(&reconciler.config));
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut attempt = 0;
    // A deadline, not a pause re-armed on every pass: watchdog ticks come more often than the
    // longest pause and would otherwise postpone the retry for ever.
    let mut retry_at = retry_deadline(failures, attempt);
    loop {
        let mut resync = Resync::default();
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick_or_never(watchdog.as_mut()) => {
                notify("WATCHDOG=1");
                // The watchdog's wake-up doubles as the guard's audit: removing a pin or
                // detaching a TCX link by hand sends no notification, and a timer of our own
                // would wake an idle daemon. The reconcile below re-attaches what was detached.
                if let Some(Err(err)) = reconciler.guard.as_ref().map(Guard::restore_pins) {
                    log::warn!("restoring the guard's pins: {err:#}");
                }
                reconciler.reread_guard();
                resync.touched = Touched::all();
            }
            _ = sleep_until_or_never(retry_at) => { resync.all = true; attempt += 1; }
            _ = sleep_until_or_never(reconciler.deadline().map(Into::into)) => {
                resync.touched = Touched::all();
            }
            ready = readable_or_never(guard_log.as_ref()) => {
                if let Some(guard) = reconciler.guard.as_mut() {
                    guard.flush_log();
                }
                if let Ok(mut ready) = ready {
                    ready.clear_ready();
                }
                continue;
            }
            notice = events.next() => {
                let mut notice = Some(notice);
                // Take every notice already queued, so that a burst makes one pass.
                while let Some(next) = notice {
                    absorb(&mut reconciler, next, &mut resync)?;
                    notice = events.next().now_or_never();
                }
            }
        }
        let netlink = &reconciler.netlink;
        if resync.all {
            reconciler.view = netlink.dump().await.map_err(anyhow::Error::from)?;
            reconciler.reread_guard();
            resync.touched = Touched::all();
        } else if resync.routes != Redump::Nothing {
            let routes =
                (netlink.dump_routes_of(&resync.routes).await).map_err(anyhow::Error::from)?;
            let changed = reconciler.view.replace_routes(&resync.routes, routes);
            resync.touched.merge(changed);
        }
        let scope = Scope::of(&reconciler.config, &reconciler.view, &resync.touched);
        let failures = reconciler.reconcile(&scope).await.failed;
        if failures > 0 {
            retry_at = retry_deadline(failures, attempt);
        } else if scope == Scope::All {
            // A pass over a few uplinks says nothing of a failure elsewhere: only a full pass
            // that went through ends the retries.
            attempt = 0;
            retry_at = None;
        }
    }
    notify("STOPPING=1");
    if args.keep_on_exit {
        log::info!("stopping, leaving rules, routes and the guard in place (--keep-on-exit)");
    } else {
        log::info!("stopping, removing what multihome installed");
        reconciler.teardown().await;
        if let Some(guard) = reconciler.guard.take() {
            for line in guard.remove_all().map_err(Fatal::from)? {
                log::debug!("removed {line}");
            }
        }
    }
    Ok(())
}

/// Loads the guard, or explains once why it cannot and carries on with rules only.
fn load_guard(args: &RunArgs) -> Result<Option<Guard>, Fatal> {
    let mode = match args.attach {
        AttachChoice::Auto => AttachMode::Auto,
        AttachChoice::Tcx => AttachMode::Tcx,
        AttachChoice::Clsact => AttachMode::Clsact,
    };
    // A pin directory that cannot work is the operator's input to fix, not a missing kernel
    // feature: refuse it rather than fall back to rules only.
    guard::prepare_pin_dir(&args.owned.pin_dir).map_err(|err| Fatal::usage(format!("{err:#}")))?;
    let err = match Guard::load(&args.owned.pin_dir, mode) {
        Ok(guard) => return Ok(Some(guard)),
        Err(err) => err,
    };
    // One line: the kernel's errno and, for a refused program, the verifier's reason (its
    // whole log is for the debug level).
    log::debug!("the eBPF guard cannot load: {err:#}");
    let why = Failure::of(&err).reason;
    if args.no_rules {
        return Err(Fatal::failure(format!(
            "the eBPF guard cannot load ({why}) and --no-rules leaves nothing else to do"
        )));
    }
    log::warn!(
        "the eBPF guard cannot load, running rules only: {why} (details at RUST_LOG=debug; \
         --no-ebpf silences this)"
    );
    Ok(None)
}

/// What must be dumped again before the view can be trusted, and what the pass looks at.
#[derive(Debug, Default)]
struct Resync {
    /// Notifications were lost, or an operation failed.
    all: bool,
    /// Routes the kernel may have changed without a word.
    routes: Redump,
    /// What the notifications changed, or everything.
    touched: Touched,
}

/// Folds one notice into the view.
fn absorb(
    reconciler: &mut Reconciler,
    notice: Result<Notice, crate::netlink::Error>,
    resync: &mut Resync,
) -> Result<(), Fatal> {
    match notice {
        Ok(Notice::Event(event)) => {
            let effect = reconciler.view.apply(event);
            resync.routes.merge(effect.redump);
            resync.touched.merge(effect.touched);
        }
        Ok(Notice::SyncLost) => {
            log::warn!("netlink notifications were lost, dumping the kernel's state again");
            resync.all = true;
        }
        Err(err) => {
            return Err(Fatal::failure(format!(
                "netlink subscription failed: {err}"
            )))
        }
    }
    Ok(())
}

/// Waits until the guard's log has records; never when there is no log to read.
async fn readable_or_never(
    fd: Option<&AsyncFd<OwnedFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// The next watchdog tick; never without a watchdog.
async fn tick_or_never(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// When to retry after `failures` failed operations on attempt `attempt`; never without any.
fn retry_deadline(failures: usize, attempt: usize) -> Option<tokio::time::Instant> {
    (failures > 0)
        .then(|| tokio::time::Instant::now() + RETRY_PAUSES[attempt.min(RETRY_PAUSES.len() - 1)])
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn uplink_names(config: &Config) -> String {
    config
        .uplinks
        .iter()
        .map(|u| format!("{} (table {})", u.name, u.table))
        .collect::<Vec<_>>()
        .join(", ")
}
