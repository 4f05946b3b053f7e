//! `multihome run --idle-without-uplinks` with no uplink configured: what the unit runs right
//! after the package is installed, before the operator has named the uplinks. Exiting 2, as a
//! run from a shell does, would leave a failed unit (and a degraded system) behind; this waits
//! for the stop instead, touching nothing, and says once why: in the journal, and as the unit's
//! `Status:` line in `systemctl status` (sd_notify STATUS=).

use tokio::signal::unix::{signal, SignalKind};

use crate::defaults::DEFAULT_FILE;
use crate::notify::{self, notify};
use crate::Fatal;

/// Idles until SIGTERM or SIGINT, answering the watchdog if systemd asks for one.
pub(crate) async fn wait() -> Result<(), Fatal> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let why = format!(
        "no uplinks configured: set MULTIHOME_UPLINKS in {DEFAULT_FILE}, then run \
         `systemctl restart multihome`; idle until then"
    );
    log::warn!("{why}");
    notify(&format!("READY=1\nSTATUS={why}"));
    let watchdog = async {
        match notify::watchdog_interval() {
            Some(period) => {
                let mut ticks = tokio::time::interval(period);
                loop {
                    ticks.tick().await;
                    notify("WATCHDOG=1");
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
        () = watchdog => {}
    }
    notify("STOPPING=1");
    log::info!("stopping (idle: nothing was configured, nothing to remove)");
    Ok(())
}
