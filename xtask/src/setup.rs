//! `cargo xtask setup`: observes the machine, installs what `requirements` says is missing, and
//! reports one line per required thing. Idempotent and quick when everything is present, so
//! `test` and `demo` run it first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::arch::Arch;
use crate::proc::{self, OperatorError};
use crate::requirements::{self, Check, Cmd, Linker, Observed, State};

pub(crate) fn run() -> Result<()> {
    let start = Instant::now();
    let debian = Path::new("/etc/debian_version").exists();
    let root = proc::is_root();
    let before = observe(debian)?;
    let plan = requirements::plan(&before);
    let needs_apt = plan.commands.iter().any(|c| c.argv[0] == "apt-get");

    if needs_apt && !(debian && root) {
        report(&plan.checks, None);
        let why = if debian { "not root" } else { "not Debian" };
        println!("setup: cannot install here ({why}); install with (Debian package names):");
        for cmd in &plan.commands {
            println!("    {cmd}");
        }
        finish(start);
        return Err(OperatorError(format!(
            "setup: missing requirements ({why}): run the commands above, then `cargo xtask setup`"
        ))
        .into());
    }

    for cmd in &plan.commands {
        println!("setup: $ {cmd}");
        proc::run(&mut command(cmd))?;
    }
    if plan.commands.is_empty() {
        report(&plan.checks, None);
    } else {
        let after = requirements::plan(&observe(debian)?);
        report(&after.checks, Some(&plan.checks));
        let still: Vec<&str> = after
            .checks
            .iter()
            .filter(|c| c.state != State::Present)
            .map(|c| c.what.as_str())
            .collect();
        if !still.is_empty() {
            finish(start);
            bail!(
                "setup: still missing after installing: {}",
                still.join(", ")
            );
        }
    }
    finish(start);
    Ok(())
}

/// Prints one line per check: "ok", "installed" (absent in `before`, present now), "missing" or
/// "unknown" (cannot be checked here).
fn report(checks: &[Check], before: Option<&[Check]>) {
    for (i, check) in checks.iter().enumerate() {
        let was_present = before.is_none_or(|b| b[i].state == State::Present);
        let word = match check.state {
            State::Present if was_present => "ok",
            State::Present => "installed",
            State::Missing => "missing",
            State::Unknown => "unknown",
        };
        let note = check
            .note
            .as_ref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        println!("setup: {word:<9} {}{note}", check.what);
    }
}

fn finish(start: Instant) {
    println!("setup: took {:.2} s", start.elapsed().as_secs_f64());
}

/// The machine's state, as far as `requirements` needs it.
fn observe(debian: bool) -> Result<Observed> {
    let rustc_vv =
        proc::stdout_of(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let Some(llvm) = requirements::parse_llvm_major(&rustc_vv) else {
        return Err(OperatorError(
            "setup: no nightly toolchain (the eBPF build needs it): \
             run `rustup toolchain install nightly --component rust-src`"
                .into(),
        )
        .into());
    };
    let packages = if debian {
        let mut dpkg = Command::new("dpkg-query");
        dpkg.args(["-W", "-f=${Package} ${Status}\\n"])
            .args(requirements::debian_packages(llvm, Arch::host()));
        Some(requirements::parse_dpkg_installed(&proc::stdout_of(
            &mut dpkg,
        )?))
    } else {
        None
    };
    let components = proc::stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    // Run by cargo through rustup, xtask has RUSTUP_TOOLCHAIN set: this lists (and `rustup
    // target add` extends) the workspace's toolchain.
    let targets = proc::stdout_of(Command::new("rustup").args(["target", "list", "--installed"]))?;
    Ok(Observed {
        host: Arch::host(),
        llvm,
        packages,
        rust_src: requirements::has_rust_src(&components),
        rust_targets: requirements::parse_rust_targets(&targets),
        linker: linker()?,
    })
}

/// Cargo's home: where `cargo install` puts binaries and records what it installed.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = std::env::var_os("HOME").context("setup: neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

fn linker() -> Result<Linker> {
    let home = cargo_home()?;
    if home.join("bin/bpf-linker").exists() {
        if let Ok(crates2) = std::fs::read_to_string(home.join(".crates2.json")) {
            if let Some(features) = requirements::parse_crates2_linker(&crates2) {
                return Ok(Linker::Cargo { features });
            }
        }
        return Ok(Linker::Unrecorded);
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("bpf-linker").exists()));
    Ok(if on_path {
        Linker::Unrecorded
    } else {
        Linker::Missing
    })
}

/// The process for a planned command; `cargo` is the cargo running xtask.
fn command(cmd: &Cmd) -> Command {
    let mut c = if cmd.argv[0] == "cargo" {
        Command::new(proc::cargo_path())
    } else {
        Command::new(&cmd.argv[0])
    };
    c.args(&cmd.argv[1..])
        .envs(cmd.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &cmd.path_prefix {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(
            std::iter::once(PathBuf::from(dir)).chain(std::env::split_paths(&path)),
        )
        .expect("PATH entries come from PATH itself");
        c.env("PATH", joined);
    }
    c
}
