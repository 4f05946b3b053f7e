//! `multihome cleanup`: removes every object carrying multihome's protocol, the guard's
//! attachments and its pins, and says what it removed. Running it twice removes nothing twice.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::Owned;
use crate::diff::diff;
use crate::netlink::Netlink;
use crate::privileges::{self, CAP_NET_ADMIN};
use crate::state::State;
use crate::{guard, plan, Fatal};

pub fn main(args: Owned) -> Result<ExitCode, Fatal> {
    let protocol = crate::config::protocol(args.protocol).map_err(Fatal::usage)?;
    if let Some(cap) = privileges::missing(privileges::effective(), &[CAP_NET_ADMIN]).first() {
        return Err(Fatal::usage(format!(
            "missing capability {} ({}): run as root",
            cap.name, cap.why
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Fatal::failure(format!("starting the runtime: {err}")))?;
    let mut removed = runtime.block_on(remove_routing(protocol))?;
    removed.extend(remove_guard(&args.pin_dir)?);
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

/// Detaches the guard everywhere and removes its pins, naming each.
fn remove_guard(pin_dir: &Path) -> Result<Vec<String>, Fatal> {
    let attachments = guard::attachments(pin_dir);
    let pinned = pin_dir.exists();
    guard::remove_all(pin_dir).map_err(Fatal::from)?;
    let mut removed: Vec<String> = attachments
        .into_iter()
        .map(|(ifindex, kind)| format!("guard attachment ({kind}) on ifindex {ifindex}"))
        .collect();
    if pinned {
        removed.push(format!("guard maps pinned at {}", pin_dir.display()));
    }
    Ok(removed)
}

/// Deletes owned rules, then owned routes (the order `diff` gives removals).
async fn remove_routing(protocol: u8) -> Result<Vec<String>, Fatal> {
    let netlink = Netlink::connect().map_err(anyhow::Error::from)?;
    let view = netlink.dump().await.map_err(anyhow::Error::from)?;
    let mut removed = Vec::new();
    for op in diff(&State::default(), &plan::owned(&view, protocol)) {
        netlink
            .apply(&op)
            .await
            .map_err(|err| Fatal::failure(format!("{op}: {err}")))?;
        removed.push(op.to_string());
    }
    Ok(removed)
}
