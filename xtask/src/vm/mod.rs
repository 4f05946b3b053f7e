//! `cargo xtask vm`: tier 4, the seed's exact topology (802.1Q VLANs on one NIC) in Debian
//! kernels under qemu, since the build machines' kernel has no 802.1Q. A matrix of cells
//! (`cell`): Debian 11's 5.10 (an early point release and the newest), Debian 12's 6.1 and
//! Debian 13's 6.12 on amd64, 6.1 and 6.12 on arm64, each with the guard's attach path of that
//! kernel (clsact before 6.6, TCX after). The guest scripts are in `tests/vm/`.

mod apt;
mod cell;
mod initramfs;
mod kernel;
mod qemu;
mod systemd;
mod userspace;

use std::collections::btree_map::{BTreeMap, Entry};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::arch::Arch;
use crate::package;
use crate::proc::{self, OperatorError};
use crate::run as cargo_run;

use cell::Cell;
pub(crate) use qemu::Accel;
pub(crate) use systemd::run as run_systemd;

/// A guest's time limit: TCG on a loaded 2-core machine is slow (arm64 more so), but a hung
/// guest must not hang CI.
const DEFAULT_TIMEOUT_S: u64 = 900;

/// What `cargo xtask vm` was asked for.
pub(crate) struct Options {
    pub(crate) kernel: Option<String>,
    pub(crate) arch: Option<Arch>,
    pub(crate) accel: Accel,
    pub(crate) timeout_s: Option<u64>,
    /// Guests booted at the same time.
    pub(crate) jobs: usize,
}

/// A cell ready to boot.
struct Prepared {
    cell: Cell,
    kernel: kernel::Kernel,
    initrd: PathBuf,
    log: PathBuf,
    preparation: Duration,
}

/// How one cell went.
struct Outcome {
    cell: Cell,
    /// The kernel booted, `5.10.0-30-amd64 (5.10.218-1)`, if the cell got that far.
    kernel: Option<String>,
    passed: u32,
    failed: u32,
    /// Why the cell failed, if it did.
    error: Option<String>,
    preparation: Duration,
    guest: Duration,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    if !proc::is_root() {
        return Err(OperatorError(
            "vm: downloading the kernels and building the initramfs need root: run as root".into(),
        )
        .into());
    }
    let cells = cell::select(options.kernel.as_deref(), options.arch)?;
    let start = Instant::now();
    let target = cargo_run::target_dir()?;
    let cache = target.join("vm-cache");
    let work = target.join("vm");
    std::fs::create_dir_all(&work)?;
    let _lock = lock(&work)?;
    let names: Vec<String> = cells.iter().map(Cell::name).collect();
    println!("vm: {} cell(s): {}", cells.len(), names.join(", "));

    // Downloads and builds one after the other (they share the caches and the CPUs); a cell
    // that cannot be prepared fails, and the others still run.
    let mut packages: BTreeMap<Arch, Package> = BTreeMap::new();
    let mut sysroots: BTreeMap<(apt::Suite, Arch), userspace::Sysroot> = BTreeMap::new();
    let mut ready = Vec::new();
    let mut outcomes = Vec::new();
    for cell in cells {
        let began = Instant::now();
        match prepare(&cell, &cache, &work, &mut packages, &mut sysroots) {
            Ok(mut prepared) => {
                prepared.preparation = began.elapsed();
                ready.push(prepared);
            }
            Err(err) => outcomes.push(Outcome {
                cell,
                kernel: None,
                passed: 0,
                failed: 1,
                error: Some(format!("cannot be prepared: {err:#}")),
                preparation: began.elapsed(),
                guest: Duration::ZERO,
            }),
        }
    }

    let timeout = Duration::from_secs(options.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
    outcomes.extend(boot_all(
        &ready,
        options.accel,
        timeout,
        options.jobs.max(1),
    ));
    outcomes.sort_by_key(|o| names.iter().position(|n| *n == o.cell.name()));

    // The libtest-style lines let `cargo xtask test` add the guests' checks to its total.
    for o in &outcomes {
        println!(
            "test result: {}. {} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; \
             finished in {:.2}s",
            if o.failed == 0 { "ok" } else { "FAILED" },
            o.passed,
            o.failed,
            o.guest.as_secs_f64()
        );
    }
    println!(
        "vm: {:<18} {:<36} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "cell", "kernel", "passed", "failed", "prep", "guest", "wall"
    );
    for o in &outcomes {
        println!(
            "vm: {:<18} {:<36} {:>7} {:>7} {:>6.1} s {:>6.1} s {:>6.1} s{}",
            o.cell.name(),
            o.kernel.as_deref().unwrap_or("-"),
            o.passed,
            o.failed,
            o.preparation.as_secs_f64(),
            o.guest.as_secs_f64(),
            (o.preparation + o.guest).as_secs_f64(),
            o.error
                .as_ref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "vm: wall time {:.1} s for {} cell(s), {} at a time; console logs in {}",
        start.elapsed().as_secs_f64(),
        outcomes.len(),
        options.jobs.max(1),
        work.display()
    );
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| format!("{}: {}", o.cell.name(), o.error.as_deref().unwrap_or("")))
        .collect();
    if !failed.is_empty() {
        bail!(
            "vm: {} cell(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// Holds `work` for this run: a second `cargo xtask vm` in the same checkout would overwrite
/// the cells' initramfs and console logs under the first one's guests.
fn lock(work: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(work.join(".lock"))?;
    // SAFETY: flock on a descriptor we own; the lock goes with the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(OperatorError(format!(
            "vm: another `cargo xtask vm` runs in this checkout ({} is locked): wait for it",
            work.display()
        ))
        .into());
    }
    Ok(file)
}

/// The package a cell's guest gets, unpacked.
struct Package {
    /// Its file name, `multihome_0.1.0-1_arm64.deb`.
    name: String,
    /// Its version, `0.1.0-1`.
    version: String,
    contents: package::Extracted,
    /// The SHA-256 of its `/usr/bin/multihome`, which the guest checks it runs.
    sha256: String,
}

/// The package of `arch` as the package step built it (or built now, see
/// `package::current`), unpacked under `work`.
fn unpack_package(arch: Arch, work: &Path) -> Result<Package> {
    let deb = package::current(arch)?;
    let contents = package::extract(&deb, &work.join(format!("package-{arch}")))?;
    let sum = proc::stdout_of(std::process::Command::new("sha256sum").arg(&contents.binary))?;
    let field = |name: &str| {
        proc::stdout_of(
            std::process::Command::new("dpkg-deb")
                .arg("-f")
                .arg(&deb)
                .arg(name),
        )
        .map(|v| v.trim().to_owned())
    };
    Ok(Package {
        name: deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        version: field("Version")?,
        contents,
        sha256: sum.split_whitespace().next().unwrap_or_default().to_owned(),
    })
}

/// Fetches and builds what `cell` boots: its kernel, its architecture's user space and
/// package (each once per run), and its initramfs.
fn prepare(
    cell: &Cell,
    cache: &Path,
    work: &Path,
    packages: &mut BTreeMap<Arch, Package>,
    sysroots: &mut BTreeMap<(apt::Suite, Arch), userspace::Sysroot>,
) -> Result<Prepared> {
    println!("vm: == preparing {}", cell.name());
    let package = once(packages, cell.arch, || unpack_package(cell.arch, work))?;
    let kernel = kernel::fetch(cache, cell)?;
    let userspace = (cell.line.userspace, cell.arch);
    let sysroot = once(sysroots, userspace, || {
        userspace::fetch(cache, cell.line.userspace, cell.arch)
    })?;
    let dir = work.join(cell.slug());
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initramfs.cpio");
    let guest = initramfs::Guest {
        kernel: &kernel,
        sysroot,
        package: &package.contents,
        cell_env: cell_env(cell, &kernel, package),
    };
    initramfs::build(&guest, &dir.join("root"), &initrd)?;
    println!(
        "vm: {}: kernel {} ({}), BTF {}, initramfs {} MB",
        cell.name(),
        kernel.abi,
        kernel.version,
        if kernel.has("CONFIG_DEBUG_INFO_BTF") {
            "yes"
        } else {
            "no"
        },
        std::fs::metadata(&initrd)?.len() >> 20,
    );
    Ok(Prepared {
        cell: *cell,
        kernel,
        initrd,
        log: dir.join("console.log"),
        preparation: Duration::ZERO,
    })
}

/// The value for `key`, made (and kept) on first use.
fn once<K: Ord, T>(
    map: &mut BTreeMap<K, T>,
    key: K,
    make: impl FnOnce() -> Result<T>,
) -> Result<&T> {
    Ok(match map.entry(key) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(make()?),
    })
}

/// `/vm/cell.env`, sourced by the scenarios: the cell, what the guard must do there, and the
/// package the guest holds.
fn cell_env(cell: &Cell, kernel: &kernel::Kernel, package: &Package) -> String {
    format!(
        "CELL='{}'\nKERNEL_ABI='{}'\nATTACH='{}'\nUSERSPACE='{}'\nPACKAGE='{}'\n\
         PACKAGE_VERSION='{}'\nPACKAGE_SHA256='{}'\n",
        cell.name(),
        kernel.abi,
        cell.line.attach.name(),
        cell.line.userspace.name(),
        package.name,
        package.version,
        package.sha256,
    )
}

/// Boots the prepared cells, `jobs` at a time, each console streamed with the cell's name.
fn boot_all(ready: &[Prepared], accel: Accel, timeout: Duration, jobs: usize) -> Vec<Outcome> {
    let queue = Mutex::new(ready.iter());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(ready.len()) {
            scope.spawn(|| {
                while let Some(prepared) = queue.lock().map(|mut q| q.next()).ok().flatten() {
                    let outcome = boot_one(prepared, accel, timeout);
                    if let Ok(mut all) = outcomes.lock() {
                        all.push(outcome);
                    }
                }
            });
        }
    });
    outcomes.into_inner().unwrap_or_default()
}

fn boot_one(prepared: &Prepared, accel: Accel, timeout: Duration) -> Outcome {
    let cell = prepared.cell;
    let began = Instant::now();
    println!("vm: == booting {} ({accel:?})", cell.name());
    let boot = qemu::boot(
        cell.arch,
        &prepared.kernel.vmlinuz(),
        &prepared.initrd,
        accel,
        timeout,
        &format!("vm[{}]| ", cell.name()),
        &prepared.log,
    );
    let guest = began.elapsed();
    let kernel = Some(format!(
        "{} ({})",
        prepared.kernel.abi, prepared.kernel.version
    ));
    let (passed, failed, error) = match boot {
        Err(err) => (0, 1, Some(format!("{err:#}"))),
        Ok(boot) => {
            let (passed, failed) = boot.tally();
            (
                passed,
                failed,
                verdict(&boot, timeout).err().map(|e| e.to_string()),
            )
        }
    };
    Outcome {
        cell,
        kernel,
        passed,
        failed,
        error: error.map(|e| format!("{e} (console log {})", prepared.log.display())),
        preparation: prepared.preparation,
        guest,
    }
}

/// Whether a boot passed: it finished in time, with a summary, with checks, none failed.
fn verdict(boot: &qemu::Boot, timeout: Duration) -> Result<()> {
    if boot.timed_out {
        return Err(anyhow!(
            "the guest did not finish within {} s and was killed",
            timeout.as_secs()
        ));
    }
    match boot.result {
        None => Err(anyhow!("the guest ended without a VM-RESULT line")),
        Some(_) if !boot.failures.is_empty() => Err(anyhow!(
            "{} check(s) failed: {}",
            boot.failures.len(),
            boot.failures.join("; ")
        )),
        Some(v) if v.passed == 0 => Err(anyhow!("the guest ran no checks")),
        Some(_) => Ok(()),
    }
}
