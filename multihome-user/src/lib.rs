//! multihome: keeps source-based egress right on hosts with several uplinks.
//!
//! The pure core (`model`, `view`, `plan`, `diff`) decides; the edges (`netlink`, `guard`) talk
//! to the kernel; `reconcile` runs the loop between them, which `daemon` starts for `multihome
//! run`. The library's public face is what the binary and the privileged tests use: `main`, the
//! guard, the netlink edge and the types they speak.

mod check;
mod cleanup;
mod cli;
mod config;
mod daemon;
mod dbus;
mod defaults;
mod diff;
mod error;
mod exec;
#[cfg(test)]
mod fixtures;
mod generate;
pub mod guard;
mod idle;
mod instance;
mod logging;
pub mod model;
pub mod netlink;
mod notify;
mod ownership;
mod plan;
mod privileges;
mod probe;
mod reconcile;
mod reload;
mod report;
mod runtime;
mod signals;
mod status;
mod steer;
mod stop;
pub mod view;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
pub use config::DEFAULT_PRIORITY;
use error::Fatal;
pub use reconcile::LINGER;

/// The `multihome` command: parses the command line, runs the command, and turns its failure into
/// one line on standard error and the exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    logging::init(cli.log_level);
    let result = match cli.command {
        Command::Run(args) => daemon::main(args),
        Command::Status(args) => status::main(args),
        Command::Cleanup(args) => cleanup::main(args),
        Command::Reload(args) => reload::main(args),
        Command::Check(args) => check::main(args),
        Command::Exec(args) => exec::main(args),
        Command::Generate(args) => generate::main(args),
    };
    match result {
        Ok(code) => code,
        Err(Fatal { status, message }) => {
            eprintln!("multihome: {message}");
            ExitCode::from(status)
        }
    }
}

/// Help and version go to stdout as clap prints them; a usage error becomes one line (clap's
/// first) plus where to look, exit status 2.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind::{
        DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
    };
    if matches!(
        err.kind(),
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return if err.kind() == DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("multihome: {first} (see `multihome --help`)");
    ExitCode::from(2)
}
