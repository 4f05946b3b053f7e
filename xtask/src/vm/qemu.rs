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

use anyhow::{bail, Context, Result};

use crate::arch::Arch;

/// How the guest is accelerated: TCG everywhere by default (nested KVM crashes guests on the
/// build machines); KVM only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accel {
    Tcg,
    Kvm,
}

/// What one boot produced.
pub(crate) struct Boot {
    /// The scenarios' `VM-RESULT:` counts, if the guest got that far.
    pub(crate) result: Option<Verdict>,
    /// `VM-CHECK FAIL` lines (also from before the scenarios' summary).
    pub(crate) failures: Vec<String>,
    pub(crate) timed_out: bool,
}

impl Boot {
    /// Passed and failed checks; a guest that hung or ended without its summary counts as one
    /// more failure, so the run's total never reads as clean.
    pub(crate) fn tally(&self) -> (u32, u32) {
        let (passed, failed) = self.result.map_or((0, 0), |v| (v.passed, v.failed));
        let failed = failed.max(u32::try_from(self.failures.len()).unwrap_or(u32::MAX));
        let incomplete = self.result.is_none() || self.timed_out;
        (passed, failed + u32::from(incomplete))
    }
}

/// The guest's own count of its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) passed: u32,
    pub(crate) failed: u32,
}

/// Boots `vmlinuz` with `initrd` on `arch`'s emulator, streaming the console to stdout (each
/// line after `prefix`) and to `log`.
pub(crate) fn boot(
    arch: Arch,
    vmlinuz: &Path,
    initrd: &Path,
    accel: Accel,
    timeout: Duration,
    prefix: &str,
    log: &Path,
) -> Result<Boot> {
    let qemu = arch.qemu().0;
    let mut cmd = Command::new(qemu);
    cmd.args(args(arch, accel)?)
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {qemu} (run `cargo xtask setup`)"))?;
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
                println!("{prefix}{line}");
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
/// the serial console on stdout, and no reboot, so a panic ends qemu at once. arm64 boots on
/// qemu's `virt` board with a Cortex-A72 (a Raspberry Pi 4's CPU), its console on the PL011.
fn args(arch: Arch, accel: Accel) -> Result<Vec<String>> {
    let (machine, console): (&[&str], &str) = match arch {
        Arch::Amd64 => (&[], "ttyS0"),
        Arch::Arm64 => (&["-M", "virt"], "ttyAMA0"),
    };
    let cpu = match (accel, arch) {
        (Accel::Kvm, arch) if arch != Arch::host() => {
            bail!(
                "vm: KVM runs {} guests only; {arch} runs under TCG",
                Arch::host()
            )
        }
        (Accel::Kvm, _) => ["-accel", "kvm", "-cpu", "host"],
        (Accel::Tcg, Arch::Amd64) => ["-accel", "tcg", "-cpu", "max"],
        (Accel::Tcg, Arch::Arm64) => ["-accel", "tcg", "-cpu", "cortex-a72"],
    };
    let append = format!("console={console} panic=-1 loglevel=4 rdinit=/init");
    let args = machine.iter().copied().chain(cpu).chain([
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
        &append,
    ]);
    Ok(args.map(str::to_string).collect())
}

/// The counts of the guest's summary line, `VM-RESULT: 12 passed, 0 failed`.
pub(crate) fn parse_result(line: &str) -> Option<Verdict> {
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
        for arch in Arch::ALL {
            let tcg = args(arch, Accel::Tcg).unwrap();
            assert!(tcg.windows(2).any(|w| w == ["-accel", "tcg"]));
            assert!(tcg.windows(2).any(|w| w == ["-nic", "none"]));
        }
        let kvm = args(Arch::host(), Accel::Kvm).unwrap();
        assert!(kvm.windows(2).any(|w| w == ["-accel", "kvm"]));
    }

    #[test]
    fn arm64_boots_the_virt_board_with_a_cortex_a72_on_its_pl011() {
        let arm = args(Arch::Arm64, Accel::Tcg).unwrap();
        assert!(arm.windows(2).any(|w| w == ["-M", "virt"]));
        assert!(arm.windows(2).any(|w| w == ["-cpu", "cortex-a72"]));
        assert!(arm.iter().any(|a| a.starts_with("console=ttyAMA0 ")));
        let foreign = Arch::ALL.into_iter().find(|&a| a != Arch::host()).unwrap();
        assert!(args(foreign, Accel::Kvm).is_err());
    }
}
