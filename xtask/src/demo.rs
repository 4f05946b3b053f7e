//! `cargo xtask demo`: the operator's showcase. Runs setup so the machine is ready, builds the
//! workspace, then runs the demo program (`mh-demo`, in the tests crate: the seed topology in
//! network namespaces, before and after multihome, a live renumbering, `multihome status`),
//! which removes everything it made.

use std::process::Command;

use anyhow::Result;

use crate::proc::{self, OperatorError};
use crate::{build, run, setup};

pub(crate) fn run() -> Result<()> {
    if !proc::is_root() {
        return Err(OperatorError(
            "demo: needs root (network namespaces, eBPF): run `sudo cargo xtask demo`".into(),
        )
        .into());
    }
    setup::run()?;
    build::run(false, None)?;
    let demo = run::target_dir()?.join("debug").join("mh-demo");
    proc::run(&mut Command::new(demo))
}
