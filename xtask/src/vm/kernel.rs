//! The guest kernel: Debian 12's 6.1 (802.1Q as a module, BTF, no TCX), fetched through apt once
//! and kept in the cache directory, its module tree indexed with `depmod` so modules resolve.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::proc;

/// The pinned kernel ABI. Debian drops old ABIs from the mirror over time; when this one is
/// neither cached nor downloadable, the newest 6.1.0-N-amd64 that apt offers is used instead
/// (with a loud warning: a pin the mirror no longer has should not break CI).
pub(super) const PINNED_ABI: &str = "6.1.0-56-amd64";

/// Kernel options the VM tier depends on: BTF for the guard's maps, 802.1Q as a module for the
/// seed's VLANs, clsact and cls_bpf for the attach path a 6.1 kernel takes.
const REQUIRED_CONFIG: &[&str] = &[
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_VLAN_8021Q",
    "CONFIG_NET_SCH_INGRESS",
    "CONFIG_NET_CLS_BPF",
    "CONFIG_BRIDGE_VLAN_FILTERING",
];

/// An extracted kernel package.
pub(super) struct Kernel {
    pub abi: String,
    /// The extracted package: `boot/vmlinuz-ABI`, `lib/modules/ABI/`.
    pub root: PathBuf,
}

impl Kernel {
    pub(super) fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.abi))
    }
}

/// The pinned kernel from `cache`, downloading and extracting it first if needed.
pub(super) fn fetch(cache: &Path) -> Result<Kernel> {
    if let Some(kernel) = cached(cache, PINNED_ABI) {
        return Ok(kernel);
    }
    if apt_has(PINNED_ABI)? {
        match download(cache, PINNED_ABI) {
            Ok(kernel) => return Ok(kernel),
            Err(err) => eprintln!("vm: WARNING: the pinned kernel {PINNED_ABI}: {err:#}"),
        }
    }
    let search = proc::stdout_of(Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-6.1.0-[0-9]+-amd64$",
    ]))?;
    let Some(newest) = newest_abi(&search).filter(|abi| abi != PINNED_ABI) else {
        bail!(
            "vm: apt offers no usable linux-image-6.1.0-N-amd64 (pinned {PINNED_ABI}): \
             run `apt-get update` or add Debian 12's (security) archive"
        );
    };
    eprintln!(
        "vm: WARNING: the pinned kernel {PINNED_ABI} cannot be downloaded any more; using the \
         newest apt offers, {newest}: update PINNED_ABI in xtask/src/vm/kernel.rs"
    );
    match cached(cache, &newest) {
        Some(kernel) => Ok(kernel),
        None => download(cache, &newest),
    }
}

/// A kernel extracted and indexed by an earlier run.
fn cached(cache: &Path, abi: &str) -> Option<Kernel> {
    let root = cache.join(abi);
    root.join(".complete").exists().then(|| Kernel {
        abi: abi.to_string(),
        root,
    })
}

/// Whether apt can download the package of `abi`.
fn apt_has(abi: &str) -> Result<bool> {
    let policy = proc::stdout_of(Command::new("apt-cache").args(["policy", &package(abi)]))?;
    Ok(policy.lines().any(|l| {
        l.trim()
            .strip_prefix("Candidate:")
            .is_some_and(|v| v.trim() != "(none)")
    }))
}

fn package(abi: &str) -> String {
    format!("linux-image-{abi}")
}

fn download(cache: &Path, abi: &str) -> Result<Kernel> {
    let dir = cache.join("deb");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("vm: downloading {} through apt", package(abi));
    proc::run(
        Command::new("apt-get")
            .args(["download", "-q", &package(abi)])
            .current_dir(&dir),
    )?;
    let deb = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{}_", package(abi))) && n.ends_with(".deb")
            })
        })
        .with_context(|| {
            format!(
                "apt-get download left no {} in {}",
                package(abi),
                dir.display()
            )
        })?;
    let root = cache.join(abi);
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    proc::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let config = fs::read_to_string(root.join(format!("boot/config-{abi}")))
        .context("the kernel package has no boot/config")?;
    let missing = missing_config(&config);
    if !missing.is_empty() {
        bail!(
            "vm: kernel {abi} lacks {}: pin another kernel",
            missing.join(", ")
        );
    }
    proc::run(Command::new("depmod").arg("-b").arg(&root).arg(abi))?;
    fs::write(root.join(".complete"), "")?;
    fs::remove_file(&deb)?;
    Ok(Kernel {
        abi: abi.to_string(),
        root,
    })
}

/// The newest ABI in `apt-cache search` output ("linux-image-6.1.0-55-amd64 - Linux ..."),
/// compared by its number N.
pub(super) fn newest_abi(search: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.strip_prefix("linux-image-"))
        .filter_map(|abi| {
            let n = abi.strip_prefix("6.1.0-")?.strip_suffix("-amd64")?;
            Some((n.parse::<u32>().ok()?, abi.to_string()))
        })
        .max()
        .map(|(_, abi)| abi)
}

/// The required options `config` (a kernel's `boot/config-*`) does not build in or as a module.
pub(super) fn missing_config(config: &str) -> Vec<&'static str> {
    REQUIRED_CONFIG
        .iter()
        .copied()
        .filter(|want| {
            !config.lines().any(|l| {
                l.trim()
                    .strip_prefix(want)
                    .is_some_and(|v| v == "=y" || v == "=m")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_abi_compares_numbers_not_text() {
        let search = "linux-image-6.1.0-9-amd64 - Linux 6.1\n\
                      linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
                      linux-image-6.1.0-100-amd64 - Linux 6.1\n\
                      linux-image-6.1.0-101-cloud-amd64 - cloud\n";
        assert_eq!(newest_abi(search).as_deref(), Some("6.1.0-100-amd64"));
        assert_eq!(newest_abi(""), None);
    }

    #[test]
    fn missing_config_names_what_is_not_set() {
        let config = "CONFIG_DEBUG_INFO_BTF=y\n# CONFIG_VLAN_8021Q is not set\n\
                      CONFIG_NET_SCH_INGRESS=m\nCONFIG_NET_CLS_BPF=n\nCONFIG_BRIDGE_VLAN_FILTERING=y\n";
        assert_eq!(
            missing_config(config),
            vec!["CONFIG_VLAN_8021Q", "CONFIG_NET_CLS_BPF"]
        );
    }
}
