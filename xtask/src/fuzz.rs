//! `cargo xtask fuzz [--seconds N]`: runs the cargo-fuzz target on the guard's frame parser and
//! decision (host build, nightly) for a bounded time. Not part of `test`: fuzzing finds new
//! inputs for as long as it is given, CI wants a fixed time. cargo-fuzz is installed on demand.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::proc;

/// The one target, in `fuzz/fuzz_targets/`.
const TARGET: &str = "guard_decision";

pub(crate) fn run(seconds: u32) -> Result<()> {
    if !has_cargo_fuzz() {
        println!("fuzz: cargo-fuzz is missing; installing it: cargo install cargo-fuzz --locked");
        proc::run(&mut rustup_cargo(&["install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = proc::workspace_root().join("fuzz/corpus").join(TARGET);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    let time = format!("-max_total_time={seconds}");
    let mut cmd = rustup_cargo(&[
        "+nightly",
        "fuzz",
        "run",
        "--fuzz-dir",
        "fuzz",
        TARGET,
        "--",
        &time,
        "-max_len=512",
        "-print_final_stats=1",
    ]);
    println!("fuzz: {} ({seconds} s)", proc::show(&cmd));
    proc::run(&mut cmd)?;
    println!(
        "fuzz: {TARGET}: no failure in {seconds} s; corpus in {}",
        corpus.display()
    );
    Ok(())
}

fn has_cargo_fuzz() -> bool {
    rustup_cargo(&["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `cargo` through rustup's proxy (so that `+nightly` works), in the workspace root, without
/// the stable toolchain that `cargo xtask` pinned through the environment.
fn rustup_cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args)
        .current_dir(proc::workspace_root())
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    cmd
}
