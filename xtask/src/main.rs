//! multihome's development tasks: `cargo xtask <task>` (alias in `.cargo/config.toml`).

mod bench;
mod build;
mod demo;
mod proc;
mod requirements;
mod run;
mod setup;
mod summary;
mod test;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::proc::{OperatorError, Reported};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "multihome's development tasks"
)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Build the workspace (the eBPF object included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `multihome ARGS` (e.g. `cargo xtask run -- run wan1 wan2`).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Setup, build, fmt, clippy and every test tier (needs root).
    Test,
    /// Show multihome on the seed topology (planned).
    Demo,
    /// Build release and run the benchmarks (needs root), writing target/bench/report.{md,json}.
    Bench {
        /// Passed to mh-bench (e.g. `--only convergence,datapath`, `--renumberings 100`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let result = match Task::parse() {
        Task::Setup => setup::run(),
        Task::Build { release } => build::run(release),
        Task::Run { release, args } => run::run(release, &args),
        Task::Test => test::run(),
        Task::Demo => demo::run(),
        Task::Bench { args } => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<Reported>().is_some() => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            if err.downcast_ref::<OperatorError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
