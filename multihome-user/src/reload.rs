//! `multihome reload`: asks the daemon of this network namespace to reload (dump the kernel's
//! state again, audit the guard, reconcile) over its control socket, prints its report and
//! exits when it is done: 0 when the reload went through, 1 when it did not or no daemon runs.
//! The unit's `ExecReload=` runs it, so `systemctl reload multihome` waits for the reload.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::cli::ReloadArgs;
use crate::instance::{self, control};
use crate::{config, Fatal};

/// Longer than any reload takes; systemd's own timeout for `ExecReload=` is shorter.
const PATIENCE: Duration = Duration::from_secs(300);

pub(crate) fn main(args: ReloadArgs) -> Result<ExitCode, Fatal> {
    let socket = find_socket(&args)?;
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "no multihome run answers at {} (is it running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(format!("{}\n", control::RELOAD).as_bytes())?;
    let mut ok = None;
    for line in BufReader::new(stream).lines() {
        let line = line.context("reading the daemon's answer")?;
        match line.strip_prefix(control::RESULT) {
            Some(result) => ok = Some(result == "ok"),
            None => println!("{line}"),
        }
    }
    match ok {
        Some(true) => Ok(ExitCode::SUCCESS),
        Some(false) => Ok(ExitCode::from(1)),
        None => Err(anyhow!("the daemon closed the connection before it answered").into()),
    }
}

/// The socket of the daemon to ask: the one of `--protocol`; else the only one of this network
/// namespace, or, with several, the one whose daemon is `$MAINPID` (systemd sets it for
/// `ExecReload=`).
fn find_socket(args: &ReloadArgs) -> Result<PathBuf, Fatal> {
    let dir = instance::runtime_dir();
    if let Some(protocol) = args.protocol {
        let protocol = config::protocol(protocol).map_err(Fatal::usage)?;
        return Ok(instance::Names::here(&dir, protocol)?.socket());
    }
    let sockets = instance::sockets_here(&dir).unwrap_or_default();
    let main_pid: Option<i32> = std::env::var("MAINPID").ok().and_then(|p| p.parse().ok());
    let by_pid = main_pid.and_then(|pid| {
        sockets.iter().find(|(_, path)| {
            UnixStream::connect(path)
                .ok()
                .and_then(|s| instance::peer_cred(&s))
                .is_some_and(|cred| cred.pid == pid)
        })
    });
    match (by_pid, sockets.as_slice()) {
        (Some((_, path)), _) | (None, [(_, path)]) => Ok(path.clone()),
        (None, []) => Err(anyhow!(
            "no multihome run is running in this network namespace (no control socket in {})",
            dir.display()
        )
        .into()),
        (None, several) => Err(Fatal::usage(format!(
            "several multihome runs are running in this network namespace (protocols {}): \
             say which with --protocol",
            several
                .iter()
                .map(|(p, _)| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
