//! `multihome run`: start-up (signals, privileges, the instance claim, the subscription, the
//! first dump, the guard), the event loop, which hands the kernel's notifications, the
//! watchdog's audit and the reconciler's own deadlines to the `Reconciler` and runs a pass after
//! each, reloads (SIGHUP, `multihome reload`), and the stop, which keeps or removes what it
//! installed as `stop` decides. Everything is driven by the kernel's notifications, signals and
//! the control socket. Its only timers run when there is
//! something to time: the retry pause after a failed operation, the linger of a released
//! address's guard entry, and the watchdog when systemd asks for one.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use futures::FutureExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cli::{AttachChoice, RunArgs};
use crate::config::{self, Config, ConfigError, GatewaySpec, Params};
use crate::guard::{self, AttachMode, Guard};
use crate::idle;
use crate::instance::{self, control::Control, control::Request, Left};
use crate::netlink::{Events, Netlink, Notice};
use crate::notify::{self, notify};
use crate::ownership;
use crate::plan::Scope;
use crate::privileges::{self, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON};
use crate::probe::Failure;
use crate::reconcile::{Kernel, Reconciler};
use crate::runtime;
use crate::signals::{self, Signal, Signals};
use crate::status;
use crate::steer::{Root, Steering};
use crate::stop::{self, Verdict};
use crate::Fatal;

pub(crate) fn main(args: RunArgs) -> Result<ExitCode, Fatal> {
    runtime::block_on(async {
        // First thing: from here on a signal is handled, not fatal (see `signals`).
        let signals = Signals::install().context("installing the signal handlers")?;
        let config = match config_from(&args) {
            Err(ConfigError::NoUplinks) if args.idle_without_uplinks => {
                idle::run(signals, &args.owned).await?;
                return Ok(ExitCode::SUCCESS);
            }
            config => config.map_err(Fatal::usage)?,
        };
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
        run(config, &args, signals).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The configuration from the command line, or from $MULTIHOME_UPLINKS without uplinks there.
fn config_from(args: &RunArgs) -> Result<Config, ConfigError> {
    let uplinks = if args.uplinks.is_empty() {
        let list = std::env::var("MULTIHOME_UPLINKS").unwrap_or_default();
        config::parse_uplink_list(&list)?
    } else {
        args.uplinks
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    };
    Config::new(Params {
        uplinks,
        gateways: args
            .gateways
            .iter()
            .map(|s| s.parse::<GatewaySpec>())
            .collect::<Result<_, _>>()?,
        table_base: args.table_base,
        priority: args.priority,
        protocol: args.owned.protocol,
        rules: !args.no_rules,
        ebpf: !args.no_ebpf,
        steer: false,
    })
}

async fn run(mut config: Config, args: &RunArgs, mut signals: Signals) -> Result<(), Fatal> {
    let pin_dir = &args.owned.pin_dir;
    let mut instance = instance::claim(
        &instance::runtime_dir(),
        config.protocol,
        pin_dir,
        Left::Running,
    )
    .map_err(Fatal::usage)?;
    let control = Control::bind(instance.names())
        .with_context(|| format!("cannot listen at {}", instance.names().socket().display()))?;
    // Subscribe before the dump, so that nothing that changes in between is missed.
    let mut events = Events::subscribe(Some(args.netlink_receive_buffer))?;
    let netlink = Netlink::connect()?;
    let view = netlink.dump().await?;
    if let Some((table, route)) = ownership::foreign_routes(&config, &view, &Scope::All).first() {
        return Err(Fatal::usage(format!(
            "table {table} already holds a route multihome does not own ({}/{} protocol {}): \
             give the uplink another table (IFNAME=TABLE) or --table-base",
            route.dst, route.dst_len, route.protocol
        )));
    }
    let mut guard = if config.ebpf {
        load_guard(args)?
    } else {
        log::info!("rules only (--no-ebpf): the eBPF guard is not loaded");
        None
    };
    // A guard that could not load is said once (by `load_guard`); from then on the daemon runs
    // as with --no-ebpf, so no pass plans guard operations that would fail and be retried.
    config.ebpf = guard.is_some();
    let mut steering = match guard.as_mut() {
        Some(guard) if config.rules && !args.no_steer => start_steering(&config, args, guard),
        _ => None,
    };
    config.steer = steering.is_some();
    let mut guard_log = guard.as_mut().and_then(Guard::take_log);
    let guard_log_fd = match guard_log.as_ref().and_then(|log| log.fd().ok()) {
        // SAFETY: an OwnedFd stays open, on the same description, for as long as it lives,
        // and the AsyncFd owns it.
        Some(fd) => Some(
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .context("watching the guard's log")?,
        ),
        None => None,
    };
    let running = uplink_names(&config);
    let mut reconciler = Reconciler::new(config, Kernel::new(netlink, guard), view);
    reconciler.pass().await?;
    // The slices are mapped once their rules are there (`Steering::start`).
    refresh_steering(steering.as_mut(), &mut reconciler);
    notify("READY=1");
    log::info!("running: {running}");
    let mut watchdog = notify::Watchdog::new();
    let stopped_by = loop {
        let wake_at = reconciler.wake_at().map(tokio::time::Instant::from_std);
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop(name) => break name,
                Signal::Reload => {
                    reload(&mut reconciler, pin_dir, None).await?;
                    continue;
                }
                Signal::Ignored(name) => {
                    signals::ignored(name);
                    continue;
                }
            },
            request = control.next() => {
                reload(&mut reconciler, pin_dir, Some(request)).await?;
                continue;
            }
            _ = watchdog.tick() => {
                notify("WATCHDOG=1");
                // The watchdog's wake-up doubles as the guard's audit, where a timer of our
                // own would wake an idle daemon.
                reconciler.audit();
                refresh_steering(steering.as_mut(), &mut reconciler);
            }
            changed = steering_changed(steering.as_ref()) => {
                if let Err(err) = changed {
                    log::warn!("watching the steering root: {err}");
                }
                refresh_steering(steering.as_mut(), &mut reconciler);
                continue;
            }
            _ = sleep_until_or_never(wake_at) => reconciler.tick(),
            // The guard's moves from clsact to TCX, one per turn, between everything else.
            () = std::future::ready(()), if reconciler.background() => {
                reconciler.background_step();
                continue;
            }
            ready = readable_or_never(guard_log_fd.as_ref()) => {
                if let Some(log) = guard_log.as_mut() {
                    log.flush();
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
                    match next.context("netlink subscription failed")? {
                        Notice::Event(event) => reconciler.event(event),
                        Notice::SyncLost => reconciler.sync_lost(),
                    }
                    notice = events.next().now_or_never();
                }
            }
        }
        reconciler.pass().await?;
    };
    notify("STOPPING=1");
    let asked = stop::under_systemd().then(stop::ask);
    match stop::verdict(args.keep_on_exit, asked) {
        Verdict::Keep(left, why) => {
            log::info!("stopping ({stopped_by}): {why}");
            instance.set_left(left);
        }
        Verdict::Remove(why) => {
            log::info!("stopping ({stopped_by}): {why}");
            // Steering first: once the program is detached no socket gets a mark, then the
            // rules go (the catch-all last).
            if let Some(steering) = steering {
                steering.stop()?;
            }
            reconciler.teardown().await?;
            instance.set_left(Left::Removed);
        }
    }
    Ok(())
}

/// Dumps the kernel's state again, audits the guard, reconciles and reports, in the log and to
/// the client that asked, if any; systemd sees the reload begin and end.
async fn reload(
    reconciler: &mut Reconciler<Kernel>,
    pin_dir: &Path,
    client: Option<Request>,
) -> Result<(), Fatal> {
    notify::reloading();
    log::info!("reloading: dumping the kernel's state again and auditing the guard");
    reconciler.reload();
    let outcome = reconciler.pass().await?;
    let mut lines = vec![format!(
        "reloaded: {} operations applied, {} failed",
        outcome.applied, outcome.failed
    )];
    match status::health_lines(reconciler.config(), reconciler.view(), pin_dir) {
        Ok(health) => lines.extend(health),
        Err(err) => lines.push(format!("cannot read the guard's pins: {err:#}")),
    }
    for line in &lines {
        log::info!("{line}");
    }
    notify("READY=1");
    if let Some(client) = client {
        client.answer(&lines, outcome.failed == 0).await;
    }
    Ok(())
}

/// Starts steering programs onto the uplinks, or says once why it cannot (no cgroup2, a kernel
/// without the hook) and carries on without: `multihome exec` then refuses to run.
fn start_steering(config: &Config, args: &RunArgs, guard: &mut Guard) -> Option<Steering> {
    let started = Root::locate(&args.owned.cgroup_root)
        .and_then(|root| Steering::start(config, root, &args.owned.pin_dir, guard));
    match started {
        Ok(steering) => Some(steering),
        Err(err) => {
            log::debug!("steering cannot start: {err:#}");
            log::warn!(
                "steering programs onto uplinks is off (multihome exec will refuse): {} \
                 (--no-steer silences this)",
                one_line(&err)
            );
            None
        }
    }
}

/// An error on one line: its own message and the kernel's reason (for a refused program the
/// verifier's last word, not its whole log).
fn one_line(err: &anyhow::Error) -> String {
    if err.chain().count() == 1 {
        return err.to_string();
    }
    format!("{err}: {}", Failure::of(err).reason)
}

/// Looks at the steering root again after a change below it (or on the watchdog's audit).
fn refresh_steering(steering: Option<&mut Steering>, reconciler: &mut Reconciler<Kernel>) {
    let (Some(steering), Some(guard)) = (steering, reconciler.effects_mut().guard_mut()) else {
        return;
    };
    if let Err(err) = steering.refresh(guard) {
        log::warn!("steering: {err:#}");
    }
}

/// Waits for a change below the steering root; never without steering.
async fn steering_changed(steering: Option<&Steering>) -> std::io::Result<()> {
    match steering {
        Some(steering) => steering.changed().await,
        None => std::future::pending().await,
    }
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
        return Err(anyhow!(
            "the eBPF guard cannot load ({why}) and --no-rules leaves nothing else to do"
        )
        .into());
    }
    log::warn!(
        "the eBPF guard cannot load, running rules only: {why} (details at RUST_LOG=debug; \
         --no-ebpf silences this)"
    );
    Ok(None)
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
