//! A cell's guest kernel: the pinned Debian `linux-image` package of its line and architecture,
//! fetched through the cell's private apt state once and kept in the cache, keyed by package
//! and version, with its module tree indexed by `depmod` so modules resolve.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::apt::Apt;
use super::cell::{self, Cell};
use crate::proc;

/// Kernel options the VM tier depends on: 802.1Q as a module for the seed's VLANs, clsact and
/// cls_bpf for the attach path of kernels before 6.6, the VLAN-aware bridge of the switch.
/// BTF is not required: the guard loads without it (see `cell`'s no-BTF scenario).
const REQUIRED_CONFIG: &[&str] = &[
    "CONFIG_BPF_SYSCALL",
    "CONFIG_VLAN_8021Q",
    "CONFIG_NET_SCH_INGRESS",
    "CONFIG_NET_CLS_BPF",
    "CONFIG_BRIDGE_VLAN_FILTERING",
];

/// An extracted kernel package.
pub(crate) struct Kernel {
    pub(crate) abi: String,
    /// The Debian version of its package (`5.10.218-1`).
    pub(crate) version: String,
    /// The extracted package: `boot/vmlinuz-ABI`, `lib/modules/ABI/`.
    pub(crate) root: PathBuf,
    /// Its `boot/config-ABI`.
    pub(crate) config: String,
}

impl Kernel {
    pub(crate) fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.abi))
    }

    /// Whether the kernel builds `option` in (`=y`) or as a module (`=m`).
    pub(crate) fn has(&self, option: &str) -> bool {
        has_option(&self.config, option)
    }
}

/// The cell's pinned kernel, or when Debian's archive no longer offers it, the line's stand-in
/// (with a loud warning: a pin the archive dropped should not break CI, nor pass unnoticed).
pub(crate) fn fetch(cache: &Path, cell: &Cell) -> Result<Kernel> {
    let pinned = cell.pinned_abi();
    if let Some(kernel) = cached(cache, &pinned)? {
        return Ok(kernel);
    }
    let apt = Apt::new(cache, cell.line.suite, cell.arch)?;
    apt.ensure_lists()?;
    if apt.candidate(&package(&pinned))?.is_none() {
        // Lists from an earlier run may predate the pin.
        apt.refresh()?;
    }
    let abi = match apt.candidate(&package(&pinned))? {
        Some(_) => pinned,
        None => {
            let names = apt.names(&format!("linux-image-{}", cell.line.prefix))?;
            let Some(abi) = cell::stand_in(cell, &names) else {
                bail!(
                    "vm: Debian {} offers no linux-image-{}*-{} any more (pinned {pinned}): \
                     pin another kernel in xtask/src/vm/cell.rs",
                    cell.line.suite.name(),
                    cell.line.prefix,
                    cell.arch
                );
            };
            eprintln!(
                "vm: WARNING: {}: the pinned kernel {pinned} cannot be downloaded any more; \
                 using {abi} instead ({:?} of the line): update the pin in xtask/src/vm/cell.rs",
                cell.name(),
                cell.line.fallback
            );
            if let Some(kernel) = cached(cache, &abi)? {
                return Ok(kernel);
            }
            abi
        }
    };
    download(cache, &apt, &abi)
}

fn package(abi: &str) -> String {
    format!("linux-image-{abi}")
}

/// Where the kernel of `abi` at `version` is extracted.
fn dir(cache: &Path, abi: &str, version: &str) -> PathBuf {
    cache.join(format!("kernel/{}_{version}", package(abi)))
}

/// A kernel of `abi` extracted and indexed by an earlier run (any version of the package; the
/// newest when there are several).
fn cached(cache: &Path, abi: &str) -> Result<Option<Kernel>> {
    let Ok(entries) = fs::read_dir(cache.join("kernel")) else {
        return Ok(None);
    };
    let prefix = format!("{}_", package(abi));
    let mut versions: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(".complete").exists())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(&prefix)
                .map(String::from)
        })
        .collect();
    versions.sort();
    versions.pop().map(|v| open(cache, abi, &v)).transpose()
}

fn open(cache: &Path, abi: &str, version: &str) -> Result<Kernel> {
    let root = dir(cache, abi, version);
    let config = fs::read_to_string(root.join(format!("boot/config-{abi}")))
        .with_context(|| format!("the kernel package {abi} has no boot/config-{abi}"))?;
    Ok(Kernel {
        abi: abi.to_string(),
        version: version.to_string(),
        root,
        config,
    })
}

fn download(cache: &Path, apt: &Apt, abi: &str) -> Result<Kernel> {
    let name = package(abi);
    let version = apt
        .candidate(&name)?
        .with_context(|| format!("apt offers no {name}"))?;
    println!("vm: downloading {name} {version} ({})", apt.suite().name());
    let deb = apt.fetch(&name, &version)?;
    let root = dir(cache, abi, &version);
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    proc::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb)?;
    // Debian 13's packages ship the modules in /usr/lib/modules (merged /usr), where depmod
    // and modprobe -d look in ROOT/lib/modules.
    if root.join("usr/lib/modules").is_dir() && !root.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    let kernel = open(cache, abi, &version)?;
    let missing = missing_config(&kernel.config);
    if !missing.is_empty() {
        bail!(
            "vm: kernel {abi} lacks {}: pin another kernel",
            missing.join(", ")
        );
    }
    proc::run(Command::new("depmod").arg("-b").arg(&root).arg(abi))?;
    fs::write(root.join(".complete"), "")?;
    Ok(kernel)
}

/// Whether `config` (a kernel's `boot/config-*`) builds `option` in or as a module.
fn has_option(config: &str, option: &str) -> bool {
    config.lines().any(|l| {
        l.trim()
            .strip_prefix(option)
            .is_some_and(|v| v == "=y" || v == "=m")
    })
}

/// The required options `config` does not build in or as a module.
pub(crate) fn missing_config(config: &str) -> Vec<&'static str> {
    REQUIRED_CONFIG
        .iter()
        .copied()
        .filter(|want| !has_option(config, want))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_config_names_what_is_not_set() {
        let config = "CONFIG_BPF_SYSCALL=y\n# CONFIG_VLAN_8021Q is not set\n\
                      CONFIG_NET_SCH_INGRESS=m\nCONFIG_NET_CLS_BPF=n\nCONFIG_BRIDGE_VLAN_FILTERING=y\n";
        assert_eq!(
            missing_config(config),
            vec!["CONFIG_VLAN_8021Q", "CONFIG_NET_CLS_BPF"]
        );
        // A longer option with the same beginning is another option.
        assert!(!has_option(
            "CONFIG_BPF_SYSCALL_X=y\n",
            "CONFIG_BPF_SYSCALL"
        ));
    }

    #[test]
    fn cache_directories_are_keyed_by_package_and_version() {
        let a = dir(Path::new("/c"), "5.10.0-30-amd64", "5.10.218-1");
        let b = dir(Path::new("/c"), "5.10.0-30-amd64", "5.10.218-2");
        assert_eq!(
            a,
            Path::new("/c/kernel/linux-image-5.10.0-30-amd64_5.10.218-1")
        );
        assert_ne!(a, b);
    }
}
