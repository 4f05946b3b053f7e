//! `cargo xtask build`: builds the workspace; multihome's build script builds the eBPF object
//! with nightly, so this one command yields a loadable `multihome`. With `--arch`/`--target` it
//! builds `multihome` alone for that architecture as the package ships it (static, musl), the
//! host's or another one alike.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::arch::Arch;
use crate::{proc, requirements, run, setup};

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
/// path: for the architecture's musl target, statically linked by rust-lld (`Arch::triple`,
/// `Arch::linker_env`), the host's as well as another one, after `setup` made sure the Rust
/// target (and for another architecture its binutils) is installed. The package ships this
/// binary and the VM matrix boots it.
pub(crate) fn binary(arch: Arch, release: bool) -> Result<PathBuf> {
    // Another architecture also needs its binutils (the package strips with them); the host's
    // only its Rust target, looked up quietly.
    let installed =
        proc::stdout_of(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if arch != Arch::host() || !requirements::parse_rust_targets(&installed).contains(arch.triple())
    {
        setup::run()?;
    }
    let mut cmd = proc::cargo(["build", "--package", "multihome", "--target", arch.triple()]);
    if release {
        cmd.arg("--release");
    }
    let (variable, linker) = arch.linker_env();
    proc::run(cmd.env(variable, linker))?;
    Ok(run::target_dir()?
        .join(arch.triple())
        .join(if release { "release" } else { "debug" })
        .join("multihome"))
}
