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
            // The package tier's target is left out of --all-targets (test = false): by name.
            "--test",
            "package",
            "--",
            "-D",
            "warnings",
        ],
    },
    // Tier 1: the unit tests of the default members, as a plain `cargo test` runs them.
    Step {
        name: "unit",
        args: &["test", "--no-fail-fast"],
    },
    // Tiers 2-3: eBPF under BPF_PROG_TEST_RUN and network namespaces, which need root; not a
    // default member, so named here.
    Step {
        name: "privileged",
        args: &["test", "--package", "multihome-tests", "--no-fail-fast"],
    },
    // The packages: built, then lintian, file lists, control fields, and dpkg install, upgrade,
    // remove and purge of this machine's package (tests/tests/package.rs).
    Step {
        name: "package",
        args: &["xtask", "package", "--arch", "all", "--test"],
    },
    // Tier 4: the seed's 802.1Q topology in every cell of the VM matrix (Debian kernels from
    // 5.10 to 6.12, amd64 and arm64) under qemu.
    Step {
        name: "vm",
        args: &["xtask", "vm"],
    },
];

pub(crate) fn run() -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in the TOML array `key = [...]` of the workspace manifest's `[workspace]`.
    fn array(manifest: &str, key: &str) -> Vec<String> {
        let line = manifest
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in the workspace manifest"));
        let inside = line.split_once('[').and_then(|(_, r)| r.split_once(']'));
        let (inside, _) = inside.unwrap_or_else(|| panic!("{key} is not a one-line array"));
        inside
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// `unit` tests the default members and `privileged` the rest: no member's tests are
    /// left out of `cargo xtask test`.
    #[test]
    fn the_test_steps_cover_every_member() {
        let manifest = include_str!("../../Cargo.toml");
        let mut covered = array(manifest, "default-members");
        let privileged = STEPS.iter().find(|s| s.name == "privileged").unwrap();
        let package = privileged
            .args
            .iter()
            .position(|a| *a == "--package")
            .unwrap();
        let package = privileged.args[package + 1];
        // The members are directories, the step names a package: the tests crate's.
        assert_eq!(package, "multihome-tests");
        covered.push("tests".to_owned());
        covered.sort();
        let mut members = array(manifest, "members");
        members.sort();
        assert_eq!(covered, members);
        let unit = STEPS.iter().find(|s| s.name == "unit").unwrap();
        assert!(!unit.args.contains(&"--workspace") && !unit.args.contains(&"--package"));
    }
}
