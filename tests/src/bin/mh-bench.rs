//! `mh-bench [--multihome BIN] [--out DIR] [--renumberings N] [--only NAME,...]`: runs the
//! benchmarks (as root) and writes DIR/report.md and DIR/report.json. `cargo xtask bench` builds
//! the release binaries and runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use multihome_tests::bench::{
    convergence, datapath, misroutes, report::Report, scale, steering, throughput,
};

struct Args {
    multihome: PathBuf,
    out: PathBuf,
    renumberings: usize,
    only: Option<Vec<String>>,
}

/// The measurements, in the order they run.
const MEASUREMENTS: [&str; 6] = [
    "convergence",
    "datapath",
    "steering",
    "throughput",
    "scale",
    "misroutes",
];

const USAGE: &str =
    "usage: mh-bench [--multihome BIN] [--out DIR] [--renumberings N] [--only NAME,...]";

fn args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let mut args = Args {
        multihome: exe.with_file_name("multihome"),
        out: PathBuf::from("target/bench"),
        renumberings: 1000,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--multihome" => args.multihome = value()?.into(),
            "--out" => args.out = value()?.into(),
            "--renumberings" => {
                args.renumberings = value()?
                    .parse()
                    .with_context(|| format!("--renumberings takes a count; {USAGE}"))?
            }
            "--only" => {
                let names: Vec<String> = value()?.split(',').map(str::to_owned).collect();
                if let Some(bad) = names.iter().find(|n| !MEASUREMENTS.contains(&n.as_str())) {
                    bail!(
                        "--only: no measurement {bad}; choose from {}",
                        MEASUREMENTS.join(",")
                    );
                }
                args.only = Some(names);
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if !args.multihome.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release) or pass --multihome",
            args.multihome.display()
        );
    }
    Ok(args)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Raises this process's priority before any thread or child exists, so that everything measured
/// (the daemon, the baseline's hook and its `ip` commands, the watcher) inherits the same nice
/// value and other work on the machine (compilers) disturbs both sides less.
fn raise_priority() {
    // SAFETY: setpriority on the calling thread; failure leaves the priority as it was.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
}

const NICE: libc::c_int = -10;

fn priority() -> String {
    // SAFETY: getpriority has no preconditions.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    format!("nice {nice} for the bench and everything it starts (daemon and baseline alike)")
}

fn run(args: &Args) -> Result<Report> {
    let wanted = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    };
    let started = Instant::now();
    let mut report = Report::default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    report.context.push(("kernel".into(), kernel.trim().into()));
    report.context.push((
        "cpus".into(),
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    ));
    report
        .context
        .push(("load average at start".into(), loadavg()));
    report.context.push(("priority".into(), priority()));
    if wanted("convergence") {
        eprintln!(
            "mh-bench: convergence ({} renumberings each)",
            args.renumberings
        );
        let results = convergence::run(&args.multihome, args.renumberings)?;
        report
            .sections
            .push(convergence::section(&results, args.renumberings));
    }
    if wanted("datapath") {
        eprintln!("mh-bench: datapath cost");
        report.sections.push(datapath::section(&datapath::run()?));
    }
    if wanted("steering") {
        eprintln!(
            "mh-bench: steering hook ({} sockets a run)",
            steering::SOCKETS
        );
        report
            .sections
            .push(steering::section(&steering::run(&args.multihome)?));
    }
    if wanted("throughput") {
        eprintln!("mh-bench: throughput");
        report
            .sections
            .push(throughput::section(&throughput::run()?));
    }
    if wanted("scale") {
        eprintln!("mh-bench: scale ({} uplinks)", scale::UPLINKS);
        report
            .sections
            .push(scale::section(&scale::run(&args.multihome)?));
    }
    if wanted("misroutes") {
        eprintln!("mh-bench: misroutes");
        report
            .sections
            .push(misroutes::section(&misroutes::run(&args.multihome)?));
    }
    report
        .context
        .push(("load average at end".into(), loadavg()));
    report.context.push((
        "duration".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    Ok(report)
}

/// `mh-bench --socket-loop N`: the steering measurement's worker (run by the bench itself, in
/// and out of a steered cgroup): prints ns per socket and the last socket's mark.
fn socket_loop(n: &str) -> ExitCode {
    match n
        .parse()
        .map_err(anyhow::Error::from)
        .and_then(steering::socket_loop)
    {
        Ok((ns, mark)) => {
            println!("{ns:.1} {mark}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mh-bench --socket-loop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let [_, flag, n] = argv.as_slice() {
        if flag == "--socket-loop" {
            return socket_loop(n);
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("mh-bench: needs root (namespaces, BPF): run `sudo cargo xtask bench`");
        return ExitCode::from(2);
    }
    raise_priority();
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("mh-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = run(&args).and_then(|report| {
        std::fs::create_dir_all(&args.out)?;
        let md = report.markdown();
        std::fs::write(args.out.join("report.md"), &md)?;
        std::fs::write(
            args.out.join("report.json"),
            serde_json::to_string_pretty(&report.json())? + "\n",
        )?;
        print!("{md}");
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
