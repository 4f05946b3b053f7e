//! The guest's initramfs: busybox, the project's binary, the host tools the scenarios drive with
//! their shared libraries, the kernel modules they need, and the guest scripts of `tests/vm/`.
//! Rebuilt on every run (a few seconds): nothing stale from an earlier build can be tested.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::kernel::Kernel;
use crate::proc;

/// Host tools the guest scripts run, found on the host's PATH and shipped with their libraries.
/// Debian's busybox-static runs its own applet before any program of the same name (its shell
/// and its exec-ing applets prefer applets), so the shell is dash and the applets that exec other
/// programs (nsenter, timeout) are the real ones: `ip` then means iproute2, not busybox's.
const TOOLS: &[&str] = &[
    "dash", "nsenter", "timeout", "ip", "bridge", "tc", "dnsmasq", "dhclient", "bpftool", "nft",
    "curl", "socat",
];

/// Modules loaded at boot (with their dependencies): the seed's VLANs, the veth trunk and links,
/// the switch's VLAN-aware bridge, clsact with cls_bpf (6.1 has no TCX), the routers' NAT.
const MODULES: &[&str] = &[
    "8021q",
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "nft_chain_nat",
    "nft_masq",
];

/// Where the guest's libraries go, indexed in the guest's ld.so.cache (programs started with a
/// cleared environment, such as dhclient's script, still find them).
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// Builds `out` (an uncompressed newc cpio) from a fresh tree in `tree`.
pub(super) fn build(kernel: &Kernel, multihome: &Path, tree: &Path, out: &Path) -> Result<()> {
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", LIB_DIR, "etc", "vm", "root",
    ] {
        fs::create_dir_all(tree.join(dir))?;
    }
    copy(Path::new("/bin/busybox"), &tree.join("bin/busybox"))?;
    // /init and the scripts run under dash (see TOOLS); busybox fills in the small tools.
    std::os::unix::fs::symlink("/usr/bin/dash", tree.join("bin/sh"))?;
    let guest_multihome = tree.join("usr/bin/multihome");
    // The debug build carries ~100 MB of debug info the guest never reads.
    proc::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&guest_multihome)
            .arg(multihome),
    )?;
    let mut binaries = vec![guest_multihome];
    for tool in TOOLS {
        let host = which(tool)?;
        let guest = tree.join("usr/bin").join(tool);
        copy(&host, &guest)?;
        binaries.push(guest);
    }
    let mut libraries = BTreeSet::new();
    for binary in &binaries {
        let ldd = proc::stdout_of(Command::new("ldd").arg(binary))?;
        libraries.extend(parse_ldd(&ldd));
    }
    for lib in &libraries {
        let guest = match lib.to_str() {
            // The loader's path is written into every binary (PT_INTERP): keep it.
            Some(p) if p.contains("/ld-linux") => tree.join(p.trim_start_matches('/')),
            _ => tree
                .join(LIB_DIR)
                .join(lib.file_name().context("library without a name")?),
        };
        copy(lib, &guest)?;
    }
    fs::write(tree.join("etc/ld.so.conf"), format!("/{LIB_DIR}\n"))?;
    proc::run(Command::new("ldconfig").arg("-r").arg(tree))?;
    modules(kernel, tree)?;
    guest_files(tree)?;
    pack(tree, out)
}

/// Copies the modules and their dependencies into the tree, indexes them for the guest's
/// modprobe, and lists them in load order in `vm/modules.order`.
fn modules(kernel: &Kernel, tree: &Path) -> Result<()> {
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
    for path in &order {
        let rel = path.trim_start_matches('/');
        copy(&kernel.root.join(rel), &tree.join(rel))?;
    }
    let modules_dir = format!("lib/modules/{}", kernel.abi);
    for index in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        copy(
            &kernel.root.join(&modules_dir).join(index),
            &tree.join(&modules_dir).join(index),
        )?;
    }
    proc::run(Command::new("depmod").arg("-b").arg(tree).arg(&kernel.abi))?;
    fs::write(tree.join("vm/modules.order"), order.join("\n") + "\n")?;
    Ok(())
}

/// The guest scripts and the few /etc files the tools look up.
fn guest_files(tree: &Path) -> Result<()> {
    let scripts = proc::workspace_root().join("tests/vm");
    for entry in fs::read_dir(&scripts).with_context(|| format!("reading {}", scripts.display()))? {
        let path = entry?.path();
        let name = path.file_name().context("script without a name")?;
        copy(&path, &tree.join("vm").join(name))?;
    }
    copy(&tree.join("vm/init"), &tree.join("init"))?;
    fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(tree.join("etc/group"), "root:x:0:\n")?;
    for file in ["etc/protocols", "etc/services"] {
        copy(&Path::new("/").join(file), &tree.join(file))?;
    }
    Ok(())
}

/// Packs the tree as a newc cpio archive (the format the kernel unpacks).
fn pack(tree: &Path, out: &Path) -> Result<()> {
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

/// A tool's path on the host, from PATH plus the sbin directories a non-login root may lack.
fn which(tool: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("vm: `{tool}` is not installed: run `cargo xtask setup`"));
    found
}

/// The libraries `ldd` lists: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the
/// loader "/lib64/ld-linux-x86-64.so.2 (0x...)"; the kernel's vDSO has no file and is skipped.
pub(super) fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The module files of `modprobe --show-depends` ("insmod /ROOT/lib/modules/.../x.ko "), in
/// load order, as paths below `root` ("/lib/modules/.../x.ko"); "builtin x" lines need nothing.
pub(super) fn parse_show_depends(out: &str, root: &Path) -> Vec<String> {
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
    fn ldd_lines_give_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libelf.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
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
}
