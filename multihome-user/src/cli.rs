//! The command line. Parsing errors become one line and exit status 2 (see `main`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{DEFAULT_PIN_DIR, DEFAULT_PRIORITY, DEFAULT_PROTOCOL, DEFAULT_TABLE_BASE};
use crate::netlink::DEFAULT_RECEIVE_BUFFER;
use crate::steer::DEFAULT_ROOT;

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
pub(crate) struct Cli {
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    pub(crate) log_level: log::LevelFilter,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: keep tables, rules and the guard in line with the uplinks.
    #[command(long_about = RUN_LONG_ABOUT)]
    Run(RunArgs),
    /// Show uplinks, addresses, gateways, tables, rules, attachments and counters.
    Status(StatusArgs),
    /// Remove everything multihome owns: rules, routes, guard attachments and pins.
    Cleanup(CleanupArgs),
    /// Ask the running daemon to reload: dump the kernel's state again, audit the guard,
    /// reconcile, report (the unit's ExecReload=; SIGHUP does the same without waiting).
    Reload(ReloadArgs),
    /// Check the kernel, privileges and the host's settings, with the fix for each finding.
    Check(CheckArgs),
    /// Run a command (and all it starts) with its traffic steered onto one uplink.
    Exec(ExecArgs),
    /// Write the man pages or shell completions (used by `cargo xtask install`).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// `multihome run --help` and the DESCRIPTION of multihome-run(1): what the daemon's life
/// cycle does to the kernel's state (docs/DESIGN.md, "Life cycle", has the why).
const RUN_LONG_ABOUT: &str = "Run the daemon: keep tables, rules and the guard in line with the \
uplinks. It starts before networking and covers each uplink when its device and addresses \
appear; what an earlier instance left (rules, routes, pinned maps, attachments) is adopted and \
its program replaced on every device in place (a TCX link updated, a clsact filter replaced at \
its priority and handle), never unhooked first.

Signals: SIGHUP reloads (dumps the kernel's state again, repairs what went missing, logs one \
health line per uplink; `multihome reload` does the same and prints them). SIGUSR1 and SIGUSR2 \
are logged and ignored, SIGPIPE is ignored. SIGTERM and SIGINT stop it.

What a stop leaves: with --keep-on-exit, everything, for the next start. Outside systemd \
($INVOCATION_ID unset: Ctrl-C, kill), nothing: it removes every rule, route, attachment and pin \
it owns, since nobody would watch them when an address moves. Under systemd it asks PID 1 for \
its unit's pending job: a restart (systemctl restart, try-restart, a package upgrade) keeps \
everything for the next instance, a stop during shutdown keeps it, any other stop \
(systemctl stop, a package's removal), systemctl kill, or no answer within 2 s removes it. \
`multihome cleanup --orphaned` (the unit's OnFailure=) removes what a crashed instance, or one \
whose successor never started, left behind.

One daemon runs per network namespace and protocol: the claim is a lock file in \
$RUNTIME_DIRECTORY (/run/multihome) that only root can open; a second daemon is refused with \
the first one's pid. Exit status: 0 after a stop, 2 on bad input (nothing changed), 1 on any \
other error.";

/// What identifies multihome's objects on this host.
#[derive(Debug, Args, Clone)]
pub(crate) struct Owned {
    /// Routing protocol number marking multihome's routes and rules.
    #[arg(long, default_value_t = DEFAULT_PROTOCOL.into(), value_name = "N")]
    pub(crate) protocol: u32,
    /// Where the guard's maps and attachments are pinned (bpffs).
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub(crate) pin_dir: PathBuf,
    /// The steering root: the cgroup holding a slice per uplink (multihome-UPLINK.slice);
    /// relative to the cgroup2 mount point unless absolute.
    #[arg(long, default_value = DEFAULT_ROOT, value_name = "CGROUP", env = "MULTIHOME_CGROUP_ROOT")]
    pub(crate) cgroup_root: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Table of the first uplink is N+1, of the second N+2, and so on.
    #[arg(long, default_value_t = DEFAULT_TABLE_BASE, value_name = "N")]
    pub(crate) table_base: u32,
    /// Priority of the `from ADDR` rules; the `oif` rules take P+1.
    #[arg(long, default_value_t = DEFAULT_PRIORITY, value_name = "P")]
    pub(crate) priority: u32,
    /// A gateway to use for an uplink instead of the one its DHCP client installs.
    #[arg(long = "gateway", value_name = "IFNAME=ADDR")]
    pub(crate) gateways: Vec<String>,
    /// Rules only: do not load the eBPF guard.
    #[arg(long)]
    pub(crate) no_ebpf: bool,
    /// Guard only: do not install tables and rules.
    #[arg(long)]
    pub(crate) no_rules: bool,
    /// Do not steer programs onto uplinks (no cgroup hook, no fwmark rules): `multihome exec`
    /// and the uplink slices then refuse to run.
    #[arg(long)]
    pub(crate) no_steer: bool,
    /// Leave rules, routes and the guard in place on SIGTERM/SIGINT, whatever stops it (the
    /// next start adopts them; `multihome cleanup` removes them).
    #[arg(long)]
    pub(crate) keep_on_exit: bool,
    /// With no uplink configured (no UPLINK given, MULTIHOME_UPLINKS empty or unset): stay
    /// idle and say so (in the log, and to systemd as the unit's status) instead of exiting 2.
    /// The unit uses it, so that an installed package waits for /etc/default/multihome.
    #[arg(long)]
    pub(crate) idle_without_uplinks: bool,
    /// How the guard attaches to devices.
    #[arg(long, value_enum, default_value_t = AttachChoice::Auto)]
    pub(crate) attach: AttachChoice,
    /// Receive buffer of the netlink subscription: a burst of changes larger than this loses
    /// notifications, which costs a full re-dump of the kernel's state.
    #[arg(long, default_value_t = DEFAULT_RECEIVE_BUFFER, value_name = "BYTES")]
    pub(crate) netlink_receive_buffer: usize,
    #[command(flatten)]
    pub(crate) owned: Owned,
    /// Uplinks as IFNAME or IFNAME=TABLE; default: $MULTIHOME_UPLINKS.
    #[arg(value_name = "UPLINK")]
    pub(crate) uplinks: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Only what a daemon of this network namespace left behind for a successor that never
    /// came (it crashed, or stopped for a restart that failed), as its record under
    /// /run/multihome says, with that daemon's protocol and pin directory (the options below
    /// are ignored). The unit's OnFailure= runs it.
    #[arg(long)]
    pub(crate) orphaned: bool,
    #[command(flatten)]
    pub(crate) owned: Owned,
}

#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    /// The protocol of the daemon to ask; default: the only daemon of this network namespace
    /// (with several, the one systemd names in $MAINPID).
    #[arg(long, value_name = "N")]
    pub(crate) protocol: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Machine-readable output (schema in docs/operations.md).
    #[arg(long)]
    pub(crate) json: bool,
    /// Uplinks to report on; default: $MULTIHOME_UPLINKS, else MULTIHOME_UPLINKS in
    /// /etc/default/multihome ($MULTIHOME_DEFAULTS), else every uplink with owned objects.
    #[arg(value_name = "UPLINK")]
    pub(crate) uplinks: Vec<String>,
    #[command(flatten)]
    pub(crate) owned: Owned,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Machine-readable output (schema in docs/operations.md).
    #[arg(long)]
    pub(crate) json: bool,
    /// Priority the daemon will use (to find conflicting rules).
    #[arg(long, default_value_t = DEFAULT_PRIORITY, value_name = "P")]
    pub(crate) priority: u32,
    /// Uplinks to check; default: $MULTIHOME_UPLINKS, else MULTIHOME_UPLINKS in
    /// /etc/default/multihome ($MULTIHOME_DEFAULTS), else every uplink with owned objects;
    /// with none, the host alone is checked.
    #[arg(value_name = "UPLINK")]
    pub(crate) uplinks: Vec<String>,
    #[command(flatten)]
    pub(crate) owned: Owned,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The uplink to steer the command onto (one `multihome run` was given).
    #[arg(value_name = "UPLINK")]
    pub(crate) uplink: String,
    /// The command and its arguments.
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub(crate) command: Vec<std::ffi::OsString>,
    #[command(flatten)]
    pub(crate) owned: Owned,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    #[command(subcommand)]
    pub(crate) what: Generated,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Generated {
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
pub(crate) enum AttachChoice {
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

    #[test]
    fn exec_passes_the_command_on_untouched() {
        for argv in [
            &["multihome", "exec", "wan2", "--", "curl", "-v", "--", "x"][..],
            &["multihome", "exec", "wan2", "curl", "-v", "--", "x"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Exec(exec) = cli.command else {
                panic!("not exec")
            };
            assert_eq!(exec.uplink, "wan2");
            assert_eq!(exec.command, ["curl", "-v", "--", "x"], "{argv:?}");
            assert_eq!(exec.owned.cgroup_root, PathBuf::from("multihome.slice"));
        }
        assert!(Cli::try_parse_from(["multihome", "exec", "wan2"]).is_err());
    }
}
