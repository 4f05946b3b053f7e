//! The command line. Parsing errors become one line and exit status 2 (see `main`).

use std::path::PathBuf;

use crate::netlink::DEFAULT_RECEIVE_BUFFER;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/multihome";

#[derive(Debug, Parser)]
#[command(
    name = "multihome",
    version,
    about = "Keeps source-based egress right on hosts with several DHCP uplinks",
    long_about = "Keeps source-based egress right on hosts with several DHCP uplinks: a packet \
                  whose source address belongs to an uplink leaves through that uplink. Kernel \
                  policy routing (one table and from/oif rules per uplink) is kept in line with \
                  the kernel's own events; an eBPF TC egress guard redirects what still leaves \
                  through the wrong device."
)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: keep tables, rules and the guard in line with the uplinks.
    Run(RunArgs),
    /// Show uplinks, addresses, gateways, tables, rules, attachments and counters.
    Status(StatusArgs),
    /// Remove everything multihome owns: rules, routes, guard attachments and pins.
    Cleanup(Owned),
    /// Check the kernel, privileges and the host's settings, with the fix for each finding.
    Check(CheckArgs),
    /// Write the man pages or shell completions (used by `cargo xtask install`).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// What identifies multihome's objects on this host.
#[derive(Debug, Args, Clone)]
pub struct Owned {
    /// Routing protocol number marking multihome's routes and rules.
    #[arg(long, default_value_t = 77, value_name = "N")]
    pub protocol: u32,
    /// Where the guard's maps and attachments are pinned (bpffs).
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Table of the first uplink is N+1, of the second N+2, and so on.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub table_base: u32,
    /// Priority of the `from ADDR` rules; the `oif` rules take P+1.
    #[arg(long, default_value_t = 1000, value_name = "P")]
    pub priority: u32,
    /// A gateway to use for an uplink instead of the one its DHCP client installs.
    #[arg(long = "gateway", value_name = "IFNAME=ADDR")]
    pub gateways: Vec<String>,
    /// Rules only: do not load the eBPF guard.
    #[arg(long)]
    pub no_ebpf: bool,
    /// Guard only: do not install tables and rules.
    #[arg(long)]
    pub no_rules: bool,
    /// Leave rules, routes and the guard in place on SIGTERM/SIGINT.
    #[arg(long)]
    pub keep_on_exit: bool,
    /// How the guard attaches to devices.
    #[arg(long, value_enum, default_value_t = AttachChoice::Auto)]
    pub attach: AttachChoice,
    /// SO_RCVBUF of the netlink subscription (tests shrink it to provoke lost notifications).
    #[arg(long, hide = true, default_value_t = DEFAULT_RECEIVE_BUFFER, value_name = "BYTES")]
    pub netlink_receive_buffer: usize,
    #[command(flatten)]
    pub owned: Owned,
    /// Uplinks as IFNAME or IFNAME=TABLE; default: $MULTIHOME_UPLINKS.
    #[arg(value_name = "UPLINK")]
    pub uplinks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Uplinks to report on; default: $MULTIHOME_UPLINKS, else MULTIHOME_UPLINKS in
    /// /etc/default/multihome ($MULTIHOME_DEFAULTS), else every uplink with owned objects.
    #[arg(value_name = "UPLINK")]
    pub uplinks: Vec<String>,
    #[command(flatten)]
    pub owned: Owned,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Machine-readable output (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Priority the daemon will use (to find conflicting rules).
    #[arg(long, default_value_t = 1000, value_name = "P")]
    pub priority: u32,
    /// Uplinks to check; default: $MULTIHOME_UPLINKS, else MULTIHOME_UPLINKS in
    /// /etc/default/multihome ($MULTIHOME_DEFAULTS), else every uplink with owned objects;
    /// with none, the host alone is checked.
    #[arg(value_name = "UPLINK")]
    pub uplinks: Vec<String>,
    #[command(flatten)]
    pub owned: Owned,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generated,
}

#[derive(Debug, Subcommand)]
pub enum Generated {
    /// Man pages (multihome.1 and one per command) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The completion script for SHELL, on standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachChoice {
    /// TCX where the kernel has it, clsact otherwise.
    Auto,
    Tcx,
    Clsact,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_takes_the_documented_options() {
        let cli = Cli::try_parse_from([
            "multihome",
            "run",
            "--table-base",
            "2000",
            "--priority",
            "300",
            "--protocol",
            "99",
            "--pin-dir",
            "/tmp/x",
            "--gateway",
            "wan2=192.168.0.254",
            "--no-ebpf",
            "--keep-on-exit",
            "wan1",
            "wan2=1102",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.table_base, 2000);
        assert_eq!(run.priority, 300);
        assert_eq!(run.owned.protocol, 99);
        assert_eq!(run.owned.pin_dir, PathBuf::from("/tmp/x"));
        assert_eq!(run.gateways, ["wan2=192.168.0.254"]);
        assert!(run.no_ebpf && run.keep_on_exit && !run.no_rules);
        assert_eq!(run.uplinks, ["wan1", "wan2=1102"]);
    }
}
