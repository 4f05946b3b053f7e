//! Boots the guest under qemu and reads its console: every line is shown and kept in the
//! console log; the scenarios' verdict is the `VM-RESULT:` line. A guest that does not power off
//! within the timeout is killed and the run fails.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How the guest is accelerated: TCG everywhere by default (nested KVM crashes guests on the
/// build machines); KVM only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accel {
    Tcg,
    Kvm,
}

/// What one boot produced.
pub(super) struct Boot {
    /// The scenarios' `VM-RESULT:` counts, if the guest got that far.
    pub result: Option<Verdict>,
    /// `VM-CHECK FAIL` lines (also from before the scenarios' summary).
    pub failures: Vec<String>,
    pub timed_out: bool,
}

impl Boot {
    /// Passed and failed checks; a guest that hung or ended without its summary counts as one
    /// more failure, so the run's total never reads as clean.
    pub(super) fn tally(&self) -> (u32, u32) {
        let (passed, failed) = self.result.map_or((0, 0), |v| (v.passed, v.failed));
        let failed = failed.max(u32::try_from(self.failures.len()).unwrap_or(u32::MAX));
        let incomplete = self.result.is_none() || self.timed_out;
        (passed, failed + u32::from(incomplete))
    }
}

/// The guest's own count of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    pub passed: u32,
    pub failed: u32,
}

/// Boots `vmlinuz` with `initrd`, streaming the console to stdout and to `log`.
pub(super) fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    accel: Accel,
    timeout: Duration,
    log: &Path,
) -> Result<Boot> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(args(accel))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().context("qemu has no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let deadline = Instant::now() + timeout;
    let mut boot = Boot {
        result: None,
        failures: Vec::new(),
        timed_out: false,
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                println!("vm| {line}");
                writeln!(log, "{line}")?;
                if let Some(verdict) = parse_result(&line) {
                    boot.result = Some(verdict);
                }
                if line.contains("VM-CHECK FAIL") {
                    boot.failures.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            boot.timed_out = true;
            child.kill().ok();
            break;
        }
    }
    child.wait()?;
    reader.join().ok();
    Ok(boot)
}

/// qemu's arguments besides the kernel and initramfs: no NIC (traffic stays inside the guest),
/// the serial console on stdout, and no reboot, so a panic ends qemu at once.
fn args(accel: Accel) -> Vec<&'static str> {
    let mut args = vec![
        "-m",
        "1024",
        "-smp",
        "1",
        "-nic",
        "none",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-append",
        "console=ttyS0 panic=-1 loglevel=4 rdinit=/init",
    ];
    args.extend(match accel {
        Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
    });
    args
}

/// The counts of the guest's summary line, `VM-RESULT: 12 passed, 0 failed`.
pub(super) fn parse_result(line: &str) -> Option<Verdict> {
    let rest = line.split_once("VM-RESULT:")?.1;
    let (passed, failed) = rest.split_once(',')?;
    Some(Verdict {
        passed: passed.trim().strip_suffix("passed")?.trim().parse().ok()?,
        failed: failed.trim().strip_suffix("failed")?.trim().parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_is_parsed_wherever_the_console_puts_it() {
        assert_eq!(
            parse_result("[  12.3] VM-RESULT: 12 passed, 1 failed"),
            Some(Verdict {
                passed: 12,
                failed: 1
            })
        );
        assert_eq!(parse_result("VM-RESULT: twelve passed, 0 failed"), None);
        assert_eq!(parse_result("VM-CHECK ok vlan102"), None);
    }

    #[test]
    fn a_hung_or_silent_guest_counts_as_a_failure() {
        let mut boot = Boot {
            result: Some(Verdict {
                passed: 5,
                failed: 0,
            }),
            failures: Vec::new(),
            timed_out: false,
        };
        assert_eq!(boot.tally(), (5, 0));
        boot.failures.push("VM-CHECK FAIL boot: insmod x".into());
        assert_eq!(boot.tally(), (5, 1));
        boot.timed_out = true;
        assert_eq!(boot.tally(), (5, 2));
        boot.result = None;
        boot.timed_out = false;
        assert_eq!(boot.tally(), (0, 2));
    }

    #[test]
    fn tcg_is_the_default_and_no_nic_is_given() {
        let tcg = args(Accel::Tcg);
        assert!(tcg.windows(2).any(|w| w == ["-accel", "tcg"]));
        assert!(tcg.windows(2).any(|w| w == ["-nic", "none"]));
        assert!(args(Accel::Kvm).windows(2).any(|w| w == ["-accel", "kvm"]));
    }
}
