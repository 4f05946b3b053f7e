//! `multihome cleanup`: removes every object carrying multihome's protocol, the guard's and the
//! steering's attachments, the pins, and the steering root's empty cgroups, and says what it
//! removed. Running it twice removes nothing twice.
//!
//! `--orphaned` (the unit's `OnFailure=`, through multihome-cleanup.service) removes only what
//! a daemon of this network namespace left for a successor that never came: it reads each
//! claim's record in the runtime directory (`instance`) that no live daemon holds, and removes
//! what that daemon owned (its protocol and pin directory) when the record says it crashed or
//! handed over for a restart; a claim a daemon holds, one stopped cleanly or with
//! `--keep-on-exit` is left alone.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::CleanupArgs;
use crate::diff::diff;
use crate::instance::{self, Left};
use crate::model::State;
use crate::netlink::Netlink;
use crate::ownership::{owned, GuardState};
use crate::plan::Scope;
use crate::privileges::{self, CAP_NET_ADMIN};
use crate::runtime;
use crate::steer::{self, Root};
use crate::{guard, Fatal};

pub(crate) fn main(args: CleanupArgs) -> Result<ExitCode, Fatal> {
    let protocol = crate::config::protocol(args.owned.protocol).map_err(Fatal::usage)?;
    if let Some(cap) = privileges::missing(privileges::effective(), &[CAP_NET_ADMIN]).first() {
        return Err(Fatal::usage(format!(
            "missing capability {} ({}): run as root",
            cap.name, cap.why
        )));
    }
    if args.orphaned {
        return orphaned();
    }
    let mut removed = runtime::block_on(remove_everything(protocol, &args.owned.pin_dir))?;
    if let Ok(root) = Root::locate(&args.owned.cgroup_root) {
        removed.extend(
            steer::remove_tree(&root)
                .into_iter()
                .map(|dir| format!("cgroup {}", dir.display())),
        );
    }
    if removed.is_empty() {
        println!(
            "nothing to remove: no routes or rules with protocol {protocol}, no guard pinned at {}",
            args.owned.pin_dir.display()
        );
    }
    for line in removed {
        println!("removed {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `--orphaned` does: see the module's documentation.
fn orphaned() -> Result<ExitCode, Fatal> {
    let dir = instance::runtime_dir();
    let orphans = instance::orphans(&dir)
        .with_context(|| format!("reading the claims in {}", dir.display()))?;
    if orphans.is_empty() {
        println!(
            "nothing orphaned: no claim in {} left objects without a daemon",
            dir.display()
        );
    }
    for mut lock in orphans {
        let record = lock.record().clone();
        println!(
            "pid {} (protocol {}, pins {}) ended without removing what it owned and nobody took \
             it over: removing it",
            record.pid,
            record.protocol,
            record.pin_dir.display()
        );
        for line in runtime::block_on(remove_everything(record.protocol, &record.pin_dir))? {
            println!("removed {line}");
        }
        lock.set_left(Left::Removed);
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the steering, the rules and routes with `protocol` and the guard pinned under
/// `pin_dir`; one line per object removed. Steering first: once its program is detached no
/// socket is marked, then the rules go (the catch-all last) and the marks' uplinks with the
/// guard.
pub(crate) async fn remove_everything(protocol: u8, pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = guard::steering::detach_all(pin_dir)?;
    removed.extend(remove_routing(protocol).await?);
    removed.extend(guard::remove_all(pin_dir)?);
    Ok(removed)
}

/// Deletes owned rules, then owned routes (the order `diff` gives removals).
async fn remove_routing(protocol: u8) -> anyhow::Result<Vec<String>> {
    let netlink = Netlink::connect()?;
    let view = netlink.dump().await?;
    let mut removed = Vec::new();
    for op in diff(
        &State::default(),
        &owned(&view, protocol, &Scope::All, &GuardState::default()),
    ) {
        netlink.apply(&op).await.with_context(|| op.to_string())?;
        // "delete ipv4 rule ..." reads "removed ipv4 rule ..." in the list.
        let line = op.to_string();
        removed.push(line.strip_prefix("delete ").unwrap_or(&line).to_owned());
    }
    Ok(removed)
}
