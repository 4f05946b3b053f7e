//! `cargo xtask bench [-- MH-BENCH-ARGS]`: builds the release binaries and runs `mh-bench` (the
//! tests crate's benchmark runner) against the release `multihome`, writing
//! `target/bench/report.md` and `report.json`. Needs root; never run by CI.

use std::ffi::OsString;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::proc::{self, OperatorError};
use crate::{build, run};

pub(crate) fn run(args: &[OsString]) -> Result<()> {
    if !proc::is_root() {
        return Err(OperatorError(
            "bench needs root (network namespaces, BPF): run `sudo cargo xtask bench`".into(),
        )
        .into());
    }
    let started = Instant::now();
    build::run(true, None)?;
    let target = run::target_dir()?;
    let release = target.join("release");
    let out = target.join("bench");
    let mut cmd = Command::new(release.join("mh-bench"));
    cmd.arg("--multihome")
        .arg(release.join("multihome"))
        .arg("--out")
        .arg(&out)
        .args(args)
        .current_dir(proc::workspace_root());
    proc::run(&mut cmd)?;
    eprintln!(
        "bench: wrote {} and report.json in {:.0} s (build included)",
        out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
