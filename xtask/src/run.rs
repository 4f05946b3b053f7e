//! `cargo xtask run -- ARGS`: build, then replace this process with `multihome ARGS`
//! (build-and-load: `multihome run` loads and attaches the guard).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::arch::Arch;
use crate::{build, proc};

pub(crate) fn run(release: bool, args: &[OsString]) -> Result<()> {
    let binary = build::binary(Arch::host(), release)?;
    let mut cmd = Command::new(&binary);
    cmd.args(args);
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    eprintln!("run: exec {} {}", binary.display(), shown.join(" "));
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run {}", binary.display()))
}

/// The workspace's target directory as cargo resolves it (`CARGO_TARGET_DIR`, config, default).
pub(crate) fn target_dir() -> Result<PathBuf> {
    let out = proc::stdout_of(&mut proc::cargo([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let json: serde_json::Value =
        serde_json::from_str(&out).context("`cargo metadata` printed no JSON")?;
    json["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` gave no target_directory")
}
