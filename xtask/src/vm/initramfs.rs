//! A cell's initramfs: busybox and the tools the scenarios drive, taken with their shared
//! libraries from the cell architecture's user space (`userspace`), every file of the project's
//! package for that architecture where dpkg would put it (the binary and unit the scenarios run
//! are the package's, byte for byte), the kernel modules the scenarios need, the guest scripts
//! of `tests/vm/` and the cell's description. Rebuilt on every run (a few seconds): nothing stale
//! from an earlier build can be tested.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::kernel::Kernel;
use super::userspace::Sysroot;
use crate::package::Extracted;
use crate::proc;

/// Programs the guest scripts run. Busybox runs its own applet before any program of the same
/// name (its shell and its exec-ing applets prefer applets), so the shell is dash and the
/// applets that exec other programs (nsenter, unshare, timeout) are the real ones: with
/// /usr/bin first on PATH, `ip` then means iproute2, not busybox's. setpriv and prlimit start
/// the daemon with its unit's capability bounding set and memlock limit.
const TOOLS: &[&str] = &[
    "dash", "nsenter", "unshare", "timeout", "setpriv", "prlimit", "ip", "bridge", "tc", "dnsmasq",
    "dhclient", "bpftool", "nft", "curl", "socat",
];

/// Where the guest's programs are looked up in the user space.
const BIN_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin"];

/// Modules loaded at boot (with their dependencies): the seed's VLANs, the veth trunk and links,
/// the switch's VLAN-aware bridge, clsact with cls_bpf (kernels before 6.6 have no TCX), the
/// routers' NAT.
const MODULES: &[&str] = &[
    "8021q",
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "nft_chain_nat",
    "nft_masq",
];

/// What goes into one guest.
pub(crate) struct Guest<'a> {
    pub(crate) kernel: &'a Kernel,
    pub(crate) sysroot: &'a Sysroot,
    /// The package for the sysroot's architecture, unpacked.
    pub(crate) package: &'a Extracted,
    /// `/vm/cell.env`: the cell's name and expectations, read by the scenarios.
    pub(crate) cell_env: String,
}

/// Builds `out` (an uncompressed newc cpio) from a fresh tree in `tree`.
pub(crate) fn build(guest: &Guest, tree: &Path, out: &Path) -> Result<()> {
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "vm", "root"] {
        fs::create_dir_all(tree.join(dir))?;
    }
    let sysroot = guest.sysroot;
    copy(&program(sysroot, "busybox")?, &tree.join("bin/busybox"))?;
    // /init and the scripts run under dash (see TOOLS); busybox fills in the small tools.
    std::os::unix::fs::symlink("/usr/bin/dash", tree.join("bin/sh"))?;
    // As dpkg unpacks it (no maintainer script runs: the guest has no systemd to enable for).
    let package = &guest.package.root;
    proc::run(
        Command::new("cp")
            .arg("-a")
            .arg(package.join("."))
            .arg(tree),
    )?;
    let binary = guest.package.binary.strip_prefix(package)?;
    let mut binaries = vec![tree.join(binary)];
    for tool in TOOLS {
        let guest = tree.join("usr/bin").join(tool);
        copy(&program(sysroot, tool)?, &guest)?;
        binaries.push(guest);
    }
    nss_files(sysroot, tree)?;
    libraries(sysroot, tree, binaries)?;
    modules(guest.kernel, tree)?;
    guest_files(sysroot, tree, &guest.cell_env)?;
    pack(tree, out)
}

/// glibc before 2.34 (Debian 11's 2.31) loads its `files` NSS module with dlopen, which
/// `readelf` cannot see: without it dnsmasq finds no user `root` in /etc/passwd. Copied where
/// the user space has it (later glibc has the module built in), with an nsswitch.conf that
/// names only `files`.
fn nss_files(sysroot: &Sysroot, tree: &Path) -> Result<()> {
    fs::create_dir_all(tree.join("etc"))?;
    fs::write(
        tree.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    )?;
    for dir in sysroot.library_dirs() {
        let path = format!("{dir}/libnss_files.so.2");
        if let Some(host) = sysroot.resolve(&path) {
            return copy(&host, &tree.join(path.trim_start_matches('/')));
        }
    }
    Ok(())
}

/// A program of the user space, by name.
fn program(sysroot: &Sysroot, name: &str) -> Result<PathBuf> {
    BIN_DIRS
        .iter()
        .find_map(|dir| sysroot.resolve(&format!("{dir}/{name}")))
        .with_context(|| {
            format!(
                "vm: the {} user space has no `{name}` (see PACKAGES in xtask/src/vm/userspace.rs)",
                sysroot.name()
            )
        })
}

/// Copies into the tree the dynamic loader and the shared libraries `binaries` need, and what
/// those need in turn, each where the guest's loader looks for it. The ELF headers are read
/// with `readelf`, which reads any architecture (`ldd` would have to run the binary).
fn libraries(sysroot: &Sysroot, tree: &Path, mut todo: Vec<PathBuf>) -> Result<()> {
    let mut copied = BTreeSet::new();
    while let Some(binary) = todo.pop() {
        let headers = proc::stdout_of(
            Command::new("readelf")
                .args(["-d", "-l", "-W"])
                .arg(&binary),
        )?;
        let (interp, needed) = parse_readelf(&headers);
        if let Some(interp) = interp {
            if copied.insert(interp.clone()) {
                let from = sysroot.resolve(&interp).with_context(|| {
                    format!(
                        "vm: {} wants the loader {interp}, which the {} user space lacks",
                        binary.display(),
                        sysroot.name()
                    )
                })?;
                copy(&from, &tree.join(interp.trim_start_matches('/')))?;
            }
        }
        for name in needed {
            let found = sysroot.library_dirs().into_iter().find_map(|dir| {
                let path = format!("{dir}/{name}");
                sysroot.resolve(&path).map(|host| (path, host))
            });
            let Some((path, host)) = found else {
                bail!(
                    "vm: {} needs {name}, which the {} user space lacks (add its package to \
                     xtask/src/vm/userspace.rs)",
                    binary.display(),
                    sysroot.name()
                );
            };
            if copied.insert(path.clone()) {
                let guest = tree.join(path.trim_start_matches('/'));
                copy(&host, &guest)?;
                todo.push(guest);
            }
        }
    }
    Ok(())
}

/// The program interpreter and the needed libraries of `readelf -d -l -W` output:
/// "[Requesting program interpreter: /lib/ld-linux-aarch64.so.1]" and
/// "0x0000000000000001 (NEEDED)   Shared library: [libc.so.6]".
pub(crate) fn parse_readelf(out: &str) -> (Option<String>, Vec<String>) {
    let bracketed = |l: &str, tag: &str| {
        let rest = l.split_once(tag)?.1;
        Some(rest.split(']').next()?.trim().to_string())
    };
    let interp = out
        .lines()
        .find_map(|l| bracketed(l, "[Requesting program interpreter:"));
    let needed = out
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| bracketed(l, "Shared library: ["))
        .collect();
    (interp, needed)
}

/// Copies the modules and their dependencies into the tree (decompressed: the guest's busybox
/// insmod reads plain `.ko`), indexes them for the guest's modprobe, and lists them in load
/// order in `vm/modules.order`.
pub(super) fn modules(kernel: &Kernel, tree: &Path) -> Result<()> {
    let mut order: Vec<String> = Vec::new();
    for module in MODULES {
        let deps = proc::stdout_of(Command::new("modprobe").arg("-d").arg(&kernel.root).args([
            "-S",
            &kernel.abi,
            "--show-depends",
            module,
        ]))?;
        let paths = parse_show_depends(&deps, &kernel.root);
        if paths.is_empty() && !deps.contains("builtin") {
            bail!("vm: kernel {} has no module {module}", kernel.abi);
        }
        for path in paths {
            if !order.contains(&path) {
                order.push(path);
            }
        }
    }
    let mut loaded = Vec::new();
    for path in &order {
        let rel = path.trim_start_matches('/');
        let (plain, decompress) = uncompressed(rel);
        let to = tree.join(plain);
        match decompress {
            None => copy(&kernel.root.join(rel), &to)?,
            Some(tool) => {
                if let Some(dir) = to.parent() {
                    fs::create_dir_all(dir)?;
                }
                let file = fs::File::create(&to)?;
                proc::run(
                    Command::new(tool)
                        .arg("-dc")
                        .arg(kernel.root.join(rel))
                        .stdout(file),
                )?;
            }
        }
        loaded.push(format!("/{plain}"));
    }
    let modules_dir = format!("lib/modules/{}", kernel.abi);
    for index in ["modules.builtin", "modules.builtin.modinfo"] {
        let from = kernel.root.join(&modules_dir).join(index);
        if from.exists() {
            copy(&from, &tree.join(&modules_dir).join(index))?;
        }
    }
    // depmod orders modules.dep by it; the kernel's own lists compressed names.
    let order: Vec<&str> = loaded
        .iter()
        .filter_map(|p| p.strip_prefix(&format!("/{modules_dir}/")))
        .collect();
    fs::write(
        tree.join(&modules_dir).join("modules.order"),
        order.join("\n") + "\n",
    )?;
    proc::run(Command::new("depmod").arg("-b").arg(tree).arg(&kernel.abi))?;
    fs::write(tree.join("vm/modules.order"), loaded.join("\n") + "\n")?;
    Ok(())
}

/// A module's path without its compression suffix, and the tool that decompresses it.
pub(crate) fn uncompressed(path: &str) -> (&str, Option<&'static str>) {
    for (suffix, tool) in [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")] {
        if let Some(plain) = path.strip_suffix(suffix) {
            return (plain, Some(tool));
        }
    }
    (path, None)
}

/// The guest scripts, the cell's description and the few /etc files the tools look up.
fn guest_files(sysroot: &Sysroot, tree: &Path, cell_env: &str) -> Result<()> {
    let scripts = proc::workspace_root().join("tests/vm");
    for entry in fs::read_dir(&scripts).with_context(|| format!("reading {}", scripts.display()))? {
        let path = entry?.path();
        let name = path.file_name().context("script without a name")?;
        copy(&path, &tree.join("vm").join(name))?;
    }
    copy(&tree.join("vm/init"), &tree.join("init"))?;
    fs::write(tree.join("vm/cell.env"), cell_env)?;
    fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(tree.join("etc/group"), "root:x:0:\n")?;
    for file in ["/etc/protocols", "/etc/services"] {
        let from = sysroot
            .resolve(file)
            .with_context(|| format!("the user space has no {file} (netbase)"))?;
        copy(&from, &tree.join(file.trim_start_matches('/')))?;
    }
    Ok(())
}

/// Packs the tree as a newc cpio archive (the format the kernel unpacks).
pub(super) fn pack(tree: &Path, out: &Path) -> Result<()> {
    let list = proc::stdout_of(Command::new("find").arg(".").current_dir(tree))?;
    let archive = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(archive)
        .spawn()
        .context("cannot start cpio")?;
    std::io::Write::write_all(
        &mut cpio.stdin.take().context("cpio has no stdin")?,
        list.as_bytes(),
    )?;
    let status = cpio.wait()?;
    if !status.success() {
        bail!("cpio failed ({status})");
    }
    Ok(())
}

/// Copies `from` to `to` (following symlinks), creating `to`'s directory; keeps the mode.
fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The module files of `modprobe --show-depends` ("insmod /ROOT/lib/modules/.../x.ko "), in
/// load order, as paths below `root` ("/lib/modules/.../x.ko"); "builtin x" lines need nothing.
pub(crate) fn parse_show_depends(out: &str, root: &Path) -> Vec<String> {
    let root = root.to_string_lossy();
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("insmod "))
        .map(|p| p.trim().trim_start_matches(root.as_ref()).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readelf_gives_the_loader_and_the_needed_libraries() {
        let out = "Program Headers:\n  INTERP 0x000238 ...\n\
                   \x20     [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]\n\
                   Dynamic section at offset 0x1 contains 30 entries:\n\
                   \x20 Tag        Type                         Name/Value\n\
                   \x20 0x0000000000000001 (NEEDED)             Shared library: [libelf.so.1]\n\
                   \x20 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n\
                   \x20 0x000000000000000e (SONAME)             Library soname: [libbpf.so.1]\n";
        let (interp, needed) = parse_readelf(out);
        assert_eq!(interp.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
        assert_eq!(needed, ["libelf.so.1", "libc.so.6"]);
        // A static binary (busybox-static) has neither.
        assert_eq!(
            parse_readelf("There is no dynamic section in this file.\n"),
            (None, vec![])
        );
    }

    #[test]
    fn show_depends_gives_module_paths_in_load_order() {
        let out = "insmod /c/k/lib/modules/6.1.0-56-amd64/kernel/net/llc/llc.ko \n\
                   insmod /c/k/lib/modules/6.1.0-56-amd64/kernel/net/8021q/8021q.ko \n\
                   builtin af_packet\n";
        assert_eq!(
            parse_show_depends(out, Path::new("/c/k")),
            vec![
                "/lib/modules/6.1.0-56-amd64/kernel/net/llc/llc.ko",
                "/lib/modules/6.1.0-56-amd64/kernel/net/8021q/8021q.ko",
            ]
        );
    }

    #[test]
    fn compressed_modules_are_named_without_their_suffix() {
        assert_eq!(
            uncompressed("lib/modules/6.12/kernel/net/8021q/8021q.ko.xz"),
            ("lib/modules/6.12/kernel/net/8021q/8021q.ko", Some("xz"))
        );
        assert_eq!(uncompressed("x/veth.ko.zst"), ("x/veth.ko", Some("zstd")));
        assert_eq!(uncompressed("x/veth.ko"), ("x/veth.ko", None));
    }
}
