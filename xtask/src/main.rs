//! multihome's development tasks: `cargo xtask <task>` (alias in `.cargo/config.toml`).

mod arch;
mod bench;
mod build;
mod demo;
mod fuzz;
mod install;
mod package;
mod proc;
mod requirements;
mod run;
mod setup;
mod summary;
mod test;
mod vm;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::arch::Arch;
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
    /// Build the workspace (the eBPF object included), or with --arch/--target the multihome
    /// binary alone for that architecture, static (musl) as the package ships it, installing the
    /// Rust target it needs.
    Build {
        #[arg(long)]
        release: bool,
        /// Build multihome for this architecture (Debian's name).
        #[arg(long, value_enum, conflicts_with = "target")]
        arch: Option<Arch>,
        /// Build multihome for this Rust target triple (aarch64-unknown-linux-musl or
        /// x86_64-unknown-linux-musl).
        #[arg(long, value_name = "TRIPLE", value_parser = parse_triple)]
        target: Option<Arch>,
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
    /// Show multihome on the seed topology: the problem, the fix, a live renumbering (root).
    Demo,
    /// Build release and install the binary, unit, protocol name, example config, man pages
    /// and completions.
    Install(InstallArgs),
    /// Remove what install wrote (a modified /etc/default/multihome stays).
    Uninstall(InstallArgs),
    /// Build release and write target/package/multihome_VERSION_ARCH.deb for each arch.
    Package {
        /// Default: this machine's.
        #[arg(long, value_enum)]
        arch: Option<package::ArchChoice>,
        /// Build as this Debian version instead of dist/debian/changelog's (e.g. an older one).
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        /// Where the packages go (default target/package).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
        /// Also unpack each package into DIR/ARCH (what it installs, e.g. for a VM).
        #[arg(long, value_name = "DIR")]
        extract: Option<std::path::PathBuf>,
        /// Then run the package tier: lintian, file lists, control fields, and dpkg install,
        /// upgrade, remove and purge of this machine's package (needs root).
        #[arg(long)]
        test: bool,
    },
    /// Fuzz the guard's frame parser and decision for a bounded time (nightly, cargo-fuzz).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Tier 4: the seed's VLAN topology in Debian kernels under qemu (needs root): the whole
    /// matrix, or with --kernel/--arch one cell.
    Vm {
        /// The kernel line: 5.10-early (Debian 11's 5.10.0-30), 5.10, 6.1, 6.12 (default 6.1
        /// when --arch is given).
        #[arg(long, value_name = "LINE")]
        kernel: Option<String>,
        /// The architecture (default the host's when --kernel is given).
        #[arg(long, value_enum)]
        arch: Option<Arch>,
        /// Use KVM instead of TCG (nested KVM crashes guests on the build machines).
        #[arg(long)]
        kvm: bool,
        /// Kill a guest and fail its cell after this many seconds (default 900).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// Guests booted at the same time.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Instead of the matrix: the cell with Debian's systemd as PID 1, where the package
        /// is installed, restarted, reloaded, upgraded and removed with dpkg and systemctl.
        #[arg(long, conflicts_with_all = ["kernel", "arch", "jobs"])]
        systemd: bool,
    },
    /// Build release and run the benchmarks (needs root), writing target/bench/report.{md,json}.
    Bench {
        /// Passed to mh-bench (e.g. `--only convergence,datapath`, `--renumberings 100`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(clap::Args)]
struct InstallArgs {
    /// Where the binary, unit, man pages and completions go (configuration goes to /etc).
    #[arg(long, default_value = "/usr/local")]
    prefix: std::path::PathBuf,
    /// Stage the whole tree under this directory instead of / (packaging).
    #[arg(long)]
    destdir: Option<std::path::PathBuf>,
}

/// A `--target` triple that names one of the supported architectures.
fn parse_triple(triple: &str) -> Result<Arch, String> {
    Arch::from_triple(triple).ok_or_else(|| {
        let known: Vec<&str> = Arch::ALL.iter().map(|a| a.triple()).collect();
        format!("not a supported target; supported: {}", known.join(", "))
    })
}

fn main() -> ExitCode {
    let result = match Task::parse() {
        Task::Setup => setup::run(),
        Task::Build {
            release,
            arch,
            target,
        } => build::run(release, arch.or(target)),
        Task::Run { release, args } => run::run(release, &args),
        Task::Test => test::run(),
        Task::Demo => demo::run(),
        Task::Install(a) => install::install(&a.prefix, a.destdir.as_deref()),
        Task::Uninstall(a) => install::uninstall(&a.prefix, a.destdir.as_deref()),
        Task::Package {
            arch,
            version,
            out_dir,
            extract,
            test,
        } => package::run(&package::Request {
            arch,
            version,
            out_dir,
            extract,
            test,
        }),
        Task::Fuzz { seconds } => fuzz::run(seconds),
        Task::Vm {
            kvm,
            timeout,
            systemd: true,
            ..
        } => vm::run_systemd(
            if kvm { vm::Accel::Kvm } else { vm::Accel::Tcg },
            timeout.map(std::time::Duration::from_secs),
        ),
        Task::Vm {
            kernel,
            arch,
            kvm,
            timeout,
            jobs,
            systemd: false,
        } => vm::run(&vm::Options {
            kernel,
            arch,
            accel: if kvm { vm::Accel::Kvm } else { vm::Accel::Tcg },
            timeout_s: timeout,
            jobs,
        }),
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
