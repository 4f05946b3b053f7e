//! `cargo xtask build`: builds the workspace; multihome's build script builds the eBPF object
//! with nightly, so this one command yields a loadable `multihome`. With `--arch`/`--target` it
//! builds `multihome` alone for that architecture, cross-compiling when it is not the host's.

use std::path::PathBuf;

use anyhow::Result;

use crate::arch::Arch;
use crate::{proc, run, setup};

pub(crate) fn run(release: bool, arch: Option<Arch>) -> Result<()> {
    let Some(arch) = arch else {
        let mut cmd = proc::cargo(["build", "--workspace"]);
        if release {
            cmd.arg("--release");
        }
        return proc::run(&mut cmd);
    };
    let binary = binary(arch, release)?;
    println!("build: {arch} multihome: {}", binary.display());
    Ok(())
}

/// Builds the `multihome` binary (the guard's eBPF object inside) for `arch` and returns its
/// path. Another architecture than the host's is cross-compiled with Debian's cross gcc as the
/// linker, after `setup` made sure the Rust target and the cross toolchain are installed.
pub(crate) fn binary(arch: Arch, release: bool) -> Result<PathBuf> {
    let mut cmd = proc::cargo(["build", "--package", "multihome"]);
    if release {
        cmd.arg("--release");
    }
    let mut dir = run::target_dir()?;
    if arch != Arch::host() {
        setup::run()?;
        let (variable, linker) = arch.linker_env();
        cmd.args(["--target", arch.triple()]).env(variable, linker);
        dir.push(arch.triple());
    }
    proc::run(&mut cmd)?;
    Ok(dir
        .join(if release { "release" } else { "debug" })
        .join("multihome"))
}
