use std::process::ExitCode;

use clap::Parser;
use multihome::cli::{Cli, Command};
use multihome::{logging, Fatal};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    logging::init(cli.log_level);
    let result = match cli.command {
        Command::Run(args) => multihome::daemon::main(args),
        Command::Status(args) => multihome::status::main(args),
        Command::Cleanup(args) => multihome::cleanup::main(args),
        Command::Check(args) => multihome::check::main(args),
        Command::Generate(args) => multihome::generate::main(args),
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
