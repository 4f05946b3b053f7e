//! `multihome cleanup`: removes every object carrying multihome's protocol, the guard's and the
//! steering's attachments, the pins, and the steering root's empty cgroups, and says what it
//! removed. Running it twice removes nothing twice.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::Owned;
use crate::diff::diff;
use crate::model::State;
use crate::netlink::Netlink;
use crate::ownership::{owned, GuardState};
use crate::plan::Scope;
use crate::privileges::{self, CAP_NET_ADMIN};
use crate::runtime;
use crate::steer::{self, Root};
use crate::{guard, Fatal};

pub(crate) fn main(args: Owned) -> Result<ExitCode, Fatal> {
    let protocol = crate::config::protocol(args.protocol).map_err(Fatal::usage)?;
    if let Some(cap) = privileges::missing(privileges::effective(), &[CAP_NET_ADMIN]).first() {
        return Err(Fatal::usage(format!(
            "missing capability {} ({}): run as root",
            cap.name, cap.why
        )));
    }
    // Steering first: once its program is detached no socket is marked, then the rules go
    // (the catch-all last) and the marks' uplinks with the guard.
    let mut removed = guard::steering::detach_all(&args.pin_dir)?;
    removed.extend(runtime::block_on(remove_routing(protocol))?);
    removed.extend(guard::remove_all(&args.pin_dir)?);
    if let Ok(root) = Root::locate(&args.cgroup_root) {
        removed.extend(
            steer::remove_tree(&root)
                .into_iter()
                .map(|dir| format!("cgroup {}", dir.display())),
        );
    }
    if removed.is_empty() {
        println!(
            "nothing to remove: no routes or rules with protocol {protocol}, no guard pinned at {}",
            args.pin_dir.display()
        );
    }
    for line in removed {
        println!("removed {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes owned rules, then owned routes (the order `diff` gives removals).
async fn remove_routing(protocol: u8) -> Result<Vec<String>, Fatal> {
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
