//! `multihome run --idle-without-uplinks` with no uplink configured: what the unit runs right
//! after the package is installed, before the operator has named the uplinks. Exiting 2, as a
//! run from a shell does, would leave a failed unit (and a degraded system) behind; this waits
//! for the stop instead, and says once why: in the journal, and as the unit's `Status:` line in
//! `systemctl status` (sd_notify STATUS=). It holds the claim and answers reloads and signals
//! as the daemon does.
//!
//! It owns nothing, so it removes what an earlier instance left with its protocol and pin
//! directory: a restart after the operator emptied `MULTIHOME_UPLINKS` hands the previous
//! instance's rules and guard over to this one (see `stop`), and nobody would watch them.

use crate::cleanup;
use crate::cli::Owned;
use crate::config;
use crate::defaults::DEFAULT_FILE;
use crate::instance::{self, control::Control, Left};
use crate::notify::{self, notify};
use crate::signals::{self, Signal, Signals};
use crate::Fatal;

/// Idles until SIGTERM or SIGINT, answering the watchdog if systemd asks for one.
pub(crate) async fn run(mut signals: Signals, owned: &Owned) -> Result<(), Fatal> {
    let protocol = config::protocol(owned.protocol).map_err(Fatal::usage)?;
    let instance = instance::claim(
        &instance::runtime_dir(),
        protocol,
        &owned.pin_dir,
        Left::Idle,
    )
    .map_err(Fatal::usage)?;
    let control = Control::bind(instance.names())?;
    match cleanup::remove_everything(protocol, &owned.pin_dir).await {
        Ok(removed) => {
            for line in removed {
                log::info!("removed {line} (an earlier instance's; nothing is configured now)");
            }
        }
        Err(err) => log::warn!("cannot remove what an earlier instance left: {err:#}"),
    }
    let why = format!(
        "no uplinks configured: set MULTIHOME_UPLINKS in {DEFAULT_FILE}, then run \
         `systemctl restart multihome`; idle until then"
    );
    log::warn!("{why}");
    let ready = format!("READY=1\nSTATUS={why}");
    notify(&ready);
    let mut watchdog = notify::Watchdog::new();
    let stopped_by = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop(name) => break name,
                Signal::Reload => {
                    notify::reloading();
                    log::info!("reloaded: {why}");
                    notify(&ready);
                }
                Signal::Ignored(name) => signals::ignored(name),
            },
            request = control.next() => {
                notify::reloading();
                log::info!("reloaded: {why}");
                notify(&ready);
                request.answer(&[format!("reloaded: {why}")], true).await;
            }
            _ = watchdog.tick() => notify("WATCHDOG=1"),
        }
    };
    notify("STOPPING=1");
    log::info!("stopping ({stopped_by}; idle: nothing was configured, nothing to remove)");
    Ok(())
}
