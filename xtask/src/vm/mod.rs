//! `cargo xtask vm`: tier 4, the seed's exact topology (802.1Q VLANs on one NIC) in a Debian 12
//! kernel under qemu, since the build machines' kernel has no 802.1Q and has TCX (6.1 has not,
//! so the guard's clsact path runs for real there). The guest scripts are in `tests/vm/`.

mod initramfs;
mod kernel;
mod qemu;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::proc::{self, OperatorError};

pub(crate) use qemu::Accel;

/// The guest's time limit: TCG on a loaded 2-core machine is slow, but a hung guest must not
/// hang CI.
const DEFAULT_TIMEOUT_S: u64 = 600;

pub(crate) fn run(accel: Accel, timeout_s: Option<u64>) -> Result<()> {
    if !proc::is_root() {
        return Err(OperatorError(
            "vm: downloading the kernel and building the initramfs need root: run as root".into(),
        )
        .into());
    }
    let start = Instant::now();
    let target = target_dir();
    let cache = target.join("vm-cache");
    let work = target.join("vm");
    std::fs::create_dir_all(&work)?;
    proc::run(&mut proc::cargo(["build", "--workspace"]))?;
    let kernel = kernel::fetch(&cache)?;
    let initrd = work.join("initramfs.cpio");
    initramfs::build(
        &kernel,
        &target.join("debug/multihome"),
        &work.join("root"),
        &initrd,
    )?;
    let prepared = start.elapsed();
    println!(
        "vm: kernel {}, initramfs {} MB ready in {:.1} s; booting ({accel:?})",
        kernel.abi,
        std::fs::metadata(&initrd)?.len() >> 20,
        prepared.as_secs_f64()
    );
    let log = work.join("console.log");
    let timeout = Duration::from_secs(timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
    let boot = qemu::boot(&kernel.vmlinuz(), &initrd, accel, timeout, &log)?;
    let guest = start.elapsed() - prepared;
    let (passed, failed) = boot.tally();
    // The libtest-style line lets `cargo xtask test` add the guest's checks to its total.
    println!(
        "test result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out; \
         finished in {:.2}s",
        if failed == 0 { "ok" } else { "FAILED" },
        guest.as_secs_f64()
    );
    println!(
        "vm: wall time {:.1} s (preparation {:.1} s, guest {:.1} s); console log {}",
        start.elapsed().as_secs_f64(),
        prepared.as_secs_f64(),
        guest.as_secs_f64(),
        log.display()
    );
    if boot.timed_out {
        bail!(
            "vm: the guest did not finish within {} s and was killed (console log above)",
            timeout.as_secs()
        );
    }
    match boot.result {
        None => bail!("vm: the guest ended without a VM-RESULT line (console log above)"),
        Some(_) if !boot.failures.is_empty() => {
            bail!(
                "vm: {} check(s) failed:\n{}",
                boot.failures.len(),
                boot.failures.join("\n")
            )
        }
        Some(v) if v.passed == 0 => bail!("vm: the guest ran no checks"),
        Some(_) => Ok(()),
    }
}

/// Cargo's target directory (CARGO_TARGET_DIR or the workspace's `target/`): the kernel cache
/// lives there, so `cargo clean` drops it with the rest.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| proc::workspace_root().join("target"), PathBuf::from)
}
