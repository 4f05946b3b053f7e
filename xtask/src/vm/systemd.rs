//! `cargo xtask vm --systemd`: the cell where Debian's own systemd is PID 1 and the package is
//! installed with the guest's own dpkg, so that what only a real service manager decides is
//! tested against one: the maintainer scripts' enable/start/restart/stop, `systemctl reload`
//! waiting for the daemon's report, the unit's sandbox, and the restart that keeps the kernel's
//! state because the daemon asks systemd which job stops it (tests/vm/systemd.sh).
//!
//! The guest is Debian 13 on its 6.12 kernel, amd64 (console ttyS0). Its initramfs is two
//! concatenated cpio archives (the kernel unpacks both, the second over the first): the base,
//! systemd and the tools with their whole apt closure unpacked as dpkg would have (its status
//! database lists them, so the package's Depends are met for real), cached under the VM cache
//! by the closure's versions; and this run's part, rebuilt every time: the two packages, the
//! kernel modules, the scripts, the masks. `/init` is systemd itself.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::apt::{Apt, Suite};
use super::{cell, initramfs, kernel, qemu, userspace, Accel};
use crate::arch::Arch;
use crate::proc::{self, OperatorError};
use crate::{package, run as cargo_run};

/// Debian 13's user space, on Debian 13's kernel line.
const SUITE: Suite = Suite::Trixie;
const KERNEL_LINE: &str = "6.12";

/// The guest's packages (with their closure, without recommends): the service manager, dpkg
/// with what its maintainer scripts call (deb-systemd-helper and -invoke are Perl), and what
/// the script drives.
const PACKAGES: &[&str] = &[
    "systemd",
    "dpkg",
    "init-system-helpers", // deb-systemd-helper, deb-systemd-invoke
    "perl-base",           // their interpreter (Essential, so nothing depends on it)
    "libc-bin",            // ldconfig, which dpkg wants on PATH
    "tar",
    "diffutils",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "dash",
    "busybox-static", // insmod and the small tools nothing else brings
    "util-linux",     // nsenter
    "iproute2",
    "iputils-ping", // the stream bound to an uplink's address
    "nftables",     // the routers' counters
    "bpftool",
];

/// Units a test guest does not need: each costs a fork or a mount under TCG, and without udev
/// a getty would wait 90 s for a serial device unit that never appears.
const MASKED: &[&str] = &[
    "serial-getty@.service",
    "getty@.service",
    "getty.target",
    "systemd-journal-flush.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-random-seed.service",
    "systemd-sysusers.service",
    "modprobe@.service",
    "systemd-remount-fs.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
    "systemd-user-sessions.service",
    "systemd-logind.service",
    "systemd-initctl.socket",
    "systemd-journald-audit.socket",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-pcrmachine.service",
    "systemd-tpm2-setup-early.service",
    "systemd-tpm2-setup.service",
    "systemd-networkd-wait-online.service",
    "systemd-modules-load.service", // the script loads the modules (no kmod in the guest)
    "ldconfig.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "systemd-sysext.socket",
    "systemd-creds.socket",
    "systemd-hostnamed.socket",
];

/// The script's unit: after boot, its output on the serial console the host reads.
const TEST_UNIT: &str = "[Unit]
Description=multihome VM test (tests/vm/systemd.sh)
After=multi-user.target

[Service]
Type=simple
ExecStart=/bin/sh /vm/systemd.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
";

/// The guest's time limit: it took 386 to 606 s on this 2-core machine shared with other builds
/// (each `dpkg -i` 50 to 370 s under TCG); a hung guest still fails the cell.
const TIMEOUT: Duration = Duration::from_secs(1200);

pub(crate) fn run(accel: Accel, timeout: Option<Duration>) -> Result<()> {
    if !proc::is_root() {
        return Err(OperatorError(
            "vm --systemd: building the guest and booting it need root: run as root".into(),
        )
        .into());
    }
    if Arch::host() != Arch::Amd64 {
        bail!(
            "vm --systemd: the systemd cell boots an amd64 guest with this machine's amd64 \
             package (this is {}): run it on an amd64 machine",
            Arch::host()
        );
    }
    let began = Instant::now();
    let target = cargo_run::target_dir()?;
    let cache = target.join("vm-cache");
    let vm = target.join("vm");
    let work = vm.join("systemd");
    fs::create_dir_all(&work)?;
    let _lock = super::lock(&vm)?;
    let cell = cell::select(Some(KERNEL_LINE), Some(Arch::host()))?
        .pop()
        .context("no cell")?;
    println!("vm: == preparing systemd/{}", cell.arch);
    let kernel = kernel::fetch(&cache, &cell)?;
    let base = base(&cache, cell.arch)?;
    let packages = work.join("packages");
    if packages.exists() {
        fs::remove_dir_all(&packages)?;
    }
    fs::create_dir_all(&packages)?;
    let (previous, current) = package::upgrade_pair(&packages)?;
    let tree = work.join("root");
    own_part(&tree, &kernel, &previous, &current)?;
    let part = work.join("part.cpio");
    initramfs::pack(&tree, &part)?;
    let initrd = work.join("initramfs.cpio");
    concatenate(&[&base, &part], &initrd)?;
    let preparation = began.elapsed();
    println!(
        "vm: systemd/{}: kernel {} ({}), initramfs {} MB, prepared in {:.1} s",
        cell.arch,
        kernel.abi,
        kernel.version,
        fs::metadata(&initrd)?.len() >> 20,
        preparation.as_secs_f64()
    );
    let log = work.join("console.log");
    let timeout = timeout.unwrap_or(TIMEOUT);
    let booted = Instant::now();
    let boot = qemu::boot(
        cell.arch,
        &kernel.vmlinuz(),
        &initrd,
        accel,
        timeout,
        "vm[systemd]| ",
        &log,
    )?;
    let guest = booted.elapsed();
    let (passed, failed) = boot.tally();
    println!(
        "test result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered \
         out; finished in {:.2}s",
        if failed == 0 { "ok" } else { "FAILED" },
        guest.as_secs_f64()
    );
    println!(
        "vm: systemd/{} {} ({}): {passed} passed, {failed} failed, prep {:.1} s, guest {:.1} s, \
         wall {:.1} s; console log {}",
        cell.arch,
        kernel.abi,
        kernel.version,
        preparation.as_secs_f64(),
        guest.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        log.display()
    );
    super::verdict(&boot, timeout).with_context(|| format!("vm: systemd/{}", cell.arch))
}

/// The cached base archive for `arch`: unpacked, configured and packed once per closure (the
/// directory is named by a hash of every package and version in it).
fn base(cache: &Path, arch: Arch) -> Result<PathBuf> {
    let apt = Apt::new(cache, SUITE, arch)?;
    apt.ensure_lists()?;
    let closure = match apt.closure(PACKAGES) {
        Ok(closure) => closure,
        Err(err) => {
            eprintln!("vm: {err:#}; refreshing the package lists and trying again");
            apt.refresh()?;
            apt.closure(PACKAGES)?
        }
    };
    let manifest = userspace::manifest(&closure);
    let dir = cache.join(format!(
        "systemd/{}-{arch}-{:016x}",
        SUITE.name(),
        userspace::fnv1a(manifest.as_bytes())
    ));
    let archive = dir.join("base.cpio");
    let done = dir.join(".complete");
    if fs::read_to_string(&done).is_ok_and(|m| m == manifest) && archive.exists() {
        return Ok(archive);
    }
    println!(
        "vm: building the systemd guest's base ({} packages of Debian {})",
        closure.len(),
        SUITE.name()
    );
    if let Err(err) = apt.download(PACKAGES) {
        eprintln!("vm: {err:#}; refreshing the package lists and trying again");
        apt.refresh()?;
        apt.download(PACKAGES)?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    let tree = dir.join("tree");
    for sub in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64"] {
        fs::create_dir_all(tree.join(sub))?;
    }
    // Merged /usr, as base-files makes it (no closure here contains base-files).
    for link in ["bin", "sbin", "lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{link}"), tree.join(link))?;
    }
    let info = tree.join("var/lib/dpkg/info");
    for sub in ["info", "updates", "triggers", "alternatives"] {
        fs::create_dir_all(tree.join("var/lib/dpkg").join(sub))?;
    }
    let mut status = String::new();
    for (package, version) in &closure {
        let deb = apt.deb(package, version)?;
        let files = proc::stdout_of(
            Command::new("dpkg-deb")
                .arg("--vextract")
                .arg(&deb)
                .arg(&tree),
        )?;
        let control = proc::stdout_of(Command::new("dpkg-deb").arg("--field").arg(&deb))?;
        status.push_str(&installed(&control));
        status.push('\n');
        fs::write(
            info.join(format!("{}.list", list_name(package, &control, arch))),
            file_list(&files),
        )?;
    }
    fs::write(tree.join("var/lib/dpkg/status"), status)?;
    fs::write(tree.join("var/lib/dpkg/available"), "")?;
    configure(&tree)?;
    proc::run(Command::new("ldconfig").arg("-r").arg(&tree))?;
    initramfs::pack(&tree, &archive)?;
    fs::remove_dir_all(&tree)?;
    fs::write(&done, &manifest)?;
    Ok(archive)
}

/// What the packages' maintainer scripts and base-files would have written.
fn configure(tree: &Path) -> Result<()> {
    for dir in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ] {
        let path = tree.join(dir);
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
    }
    let etc = tree.join("etc");
    fs::create_dir_all(etc.join("systemd/system/multi-user.target.wants"))?;
    fs::create_dir_all(tree.join("root"))?;
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         messagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    fs::write(
        etc.join("group"),
        "root:x:0:\nmessagebus:x:101:\nsystemd-journal:x:102:\nnogroup:x:65534:\n",
    )?;
    fs::write(etc.join("machine-id"), "6d756c7469686f6d6520766d20746573\n")?;
    fs::write(etc.join("hostname"), "multihome-vm\n")?;
    fs::write(
        tree.join("usr/lib/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie), multihome's VM\"\nNAME=\"Debian GNU/Linux\"\n\
         VERSION_ID=\"13\"\nID=debian\n",
    )?;
    std::os::unix::fs::symlink("../usr/lib/os-release", etc.join("os-release"))?;
    let system = etc.join("systemd/system");
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/multi-user.target",
        system.join("default.target"),
    )?;
    Ok(())
}

/// This run's part: `/init` (systemd), the packages, the modules, the scripts, their unit and
/// the masks.
fn own_part(tree: &Path, kernel: &kernel::Kernel, previous: &Path, current: &Path) -> Result<()> {
    if tree.exists() {
        fs::remove_dir_all(tree)?;
    }
    fs::create_dir_all(tree.join("usr/lib"))?;
    fs::create_dir_all(tree.join("vm"))?;
    // The same merged-/usr link as the base's, so that lib/modules lands in usr/lib.
    std::os::unix::fs::symlink("usr/lib", tree.join("lib"))?;
    std::os::unix::fs::symlink("/usr/lib/systemd/systemd", tree.join("init"))?;
    initramfs::modules(kernel, tree)?;
    let mut env = String::new();
    for (name, deb) in [("PREVIOUS", previous), ("CURRENT", current)] {
        let file = deb.file_name().context("package without a name")?;
        fs::copy(deb, tree.join("vm").join(file))?;
        let version = proc::stdout_of(
            Command::new("dpkg-deb")
                .args(["--field"])
                .arg(deb)
                .arg("Version"),
        )?;
        let _ = writeln!(
            env,
            "{name}_DEB='/vm/{}'\n{name}_VERSION='{}'",
            file.to_string_lossy(),
            version.trim()
        );
    }
    let _ = writeln!(env, "KERNEL_ABI='{}'", kernel.abi);
    fs::write(tree.join("vm/cell.env"), env)?;
    for script in ["systemd.sh", "checks.sh"] {
        let from = proc::workspace_root().join("tests/vm").join(script);
        fs::copy(&from, tree.join("vm").join(script))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let system = tree.join("etc/systemd/system");
    fs::create_dir_all(system.join("multi-user.target.wants"))?;
    for unit in MASKED {
        std::os::unix::fs::symlink("/dev/null", system.join(unit))?;
    }
    fs::write(system.join("multihome-vmtest.service"), TEST_UNIT)?;
    std::os::unix::fs::symlink(
        "../multihome-vmtest.service",
        system.join("multi-user.target.wants/multihome-vmtest.service"),
    )?;
    Ok(())
}

/// `parts` one after the other in `out` (the kernel unpacks concatenated newc archives in turn).
fn concatenate(parts: &[&Path], out: &Path) -> Result<()> {
    let mut file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for part in parts {
        let mut from =
            fs::File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut from, &mut file)?;
    }
    Ok(())
}

/// A package's dpkg status entry: its control fields with `Status: install ok installed` after
/// the Package line, as dpkg records a configured package.
pub(crate) fn installed(control: &str) -> String {
    let mut out = String::new();
    for line in control.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("Package:") {
            out.push_str("Status: install ok installed\n");
        }
    }
    out
}

/// The name of a package's file list in /var/lib/dpkg/info: `libc6:amd64` for a `Multi-Arch:
/// same` package, the bare name otherwise.
pub(crate) fn list_name(package: &str, control: &str, arch: Arch) -> String {
    let same = control.lines().any(|l| l.trim() == "Multi-Arch: same");
    if same {
        format!("{package}:{}", arch.debian())
    } else {
        package.to_string()
    }
}

/// dpkg's file list from `dpkg-deb --vextract`'s "./usr/bin/x" lines: "/." for the root, no
/// trailing slashes.
pub(crate) fn file_list(vextract: &str) -> String {
    let mut out = String::new();
    for line in vextract.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = line.trim_start_matches('.').trim_end_matches('/');
        let path = if path.is_empty() { "/." } else { path };
        out.push_str(path);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_entry_says_installed_after_the_package_line() {
        let control = "Package: dash\nVersion: 0.5.12-12\nArchitecture: amd64\n";
        assert_eq!(
            installed(control),
            "Package: dash\nStatus: install ok installed\nVersion: 0.5.12-12\nArchitecture: amd64\n"
        );
    }

    #[test]
    fn multi_arch_same_packages_list_their_files_under_the_arch_qualified_name() {
        let libc = "Package: libc6\nMulti-Arch: same\n";
        assert_eq!(list_name("libc6", libc, Arch::Amd64), "libc6:amd64");
        assert_eq!(
            list_name("dash", "Package: dash\nMulti-Arch: foreign\n", Arch::Amd64),
            "dash"
        );
    }

    #[test]
    fn file_lists_are_absolute_without_trailing_slashes() {
        assert_eq!(
            file_list("./\n./usr/\n./usr/bin/dash\n"),
            "/.\n/usr\n/usr/bin/dash\n"
        );
    }
}
