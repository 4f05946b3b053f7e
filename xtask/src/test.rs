//! `cargo xtask test`: every tier, in order, stopping at the first failing step and naming it.
//! The output closes with the summed test count, so CI reads one plain line.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::proc::{self, OperatorError, Reported};
use crate::setup;
use crate::summary::Tally;

/// One step: a cargo invocation in the workspace root. A later tier is one more entry (e.g.
/// `["xtask", "vm"]` through the workspace's `cargo xtask` alias); any `test result:` lines it
/// prints are counted.
struct Step {
    name: &'static str,
    args: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        name: "build",
        args: &["build", "--workspace"],
    },
    Step {
        name: "fmt",
        args: &["fmt", "--all", "--", "--check"],
    },
    Step {
        name: "clippy",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    // Tiers 1-3 (unit; eBPF under BPF_PROG_TEST_RUN and namespaces, which need root).
    Step {
        name: "test",
        args: &["test", "--workspace", "--no-fail-fast"],
    },
    // Tier 4: the seed's 802.1Q topology in every cell of the VM matrix (Debian kernels from
    // 5.10 to 6.12, amd64 and arm64) under qemu.
    Step {
        name: "vm",
        args: &["xtask", "vm"],
    },
];

pub fn run() -> Result<()> {
    setup::run()?;
    if !proc::is_root() {
        return Err(OperatorError(
            "test: the privileged tiers (eBPF test-run, network namespaces) need root: \
             run `cargo xtask test` as root"
                .into(),
        )
        .into());
    }
    let start = Instant::now();
    let mut total = Tally::default();
    for step in STEPS {
        let outcome = run_step(step, &mut total);
        if let Err(err) = outcome {
            println!("test: step `{}` failed: {err:#}", step.name);
            println!("{total}");
            return Err(Reported.into());
        }
    }
    println!(
        "test: all steps passed ({}) in {:.0} s",
        STEPS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        start.elapsed().as_secs_f64()
    );
    println!("{total}");
    Ok(())
}

/// Runs `step` with its standard output streamed through, adding its test counts to `total`.
fn run_step(step: &Step, total: &mut Tally) -> Result<()> {
    let mut cmd = proc::cargo(step.args);
    println!("test: == {}: {}", step.name, proc::show(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", proc::show(&cmd)))?;
    let stdout = child.stdout.take().context("child has no stdout pipe")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the step's output")?;
        println!("{line}");
        if let Some(tally) = Tally::parse(&line) {
            *total += tally;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` exited with {status}", proc::show(&cmd));
    }
    Ok(())
}
