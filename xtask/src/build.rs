//! `cargo xtask build`: builds the workspace; multihome's build script builds the eBPF object
//! with nightly, so this one command yields a loadable `multihome`.

use anyhow::Result;

use crate::proc;

pub fn run(release: bool) -> Result<()> {
    let mut cmd = proc::cargo(["build", "--workspace"]);
    if release {
        cmd.arg("--release");
    }
    proc::run(&mut cmd)
}

/// Builds the release binary for this machine (`cargo xtask install`, the packages) and returns
/// its path.
pub fn release_binary() -> Result<std::path::PathBuf> {
    proc::run(&mut proc::cargo([
        "build",
        "--release",
        "--package",
        "multihome",
    ]))?;
    Ok(crate::run::target_dir()?.join("release/multihome"))
}
