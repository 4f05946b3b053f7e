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
