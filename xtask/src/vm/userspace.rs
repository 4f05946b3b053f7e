//! The guests' user space: the packages of the tools the scenarios drive, from the Debian
//! release the cell's line names (`cell::Line::userspace`) for the cell's architecture, fetched
//! with their whole closure into a private apt state and unpacked into a sysroot. Every cell's
//! guest takes its programs and libraries from there (never from the host), so amd64 and arm64
//! guests, Debian 11 and Debian 13 ones, are built the same way.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::apt::{Apt, Suite};
use crate::arch::Arch;
use crate::proc;

/// The packages of the programs in `initramfs::TOOLS` and netbase's /etc/protocols and
/// /etc/services (multihome itself is static: it needs no library of the guest's). The same
/// names in Debian 11 and 13.
const PACKAGES: &[&str] = &[
    "busybox-static",  // the guest's small tools and /init's mounts
    "dash",            // /bin/sh
    "util-linux",      // nsenter, unshare
    "coreutils",       // timeout
    "iproute2",        // ip, bridge, tc
    "dnsmasq-base",    // the routers' DHCP servers
    "isc-dhcp-client", // dhclient on the seed's VLANs
    "bpftool",         // shows the guard's attachments (TCX and clsact)
    "nftables",        // the routers' NAT
    "curl",            // `curl --interface`, as in the seed
    "socat",           // echo services and raw 802.1Q frames
    "netbase",         // /etc/protocols, /etc/services
];

/// [`PACKAGES`] as apt is asked for them in `suite`. Debian 11's bpftool comes from its point
/// release (`bpftool/bullseye`): bullseye-security lists a newer build (5.10.262-1) that the
/// archive mirror used here does not serve (404), while the point release's is everywhere; any
/// 5.10 bpftool shows clsact attachments alike.
fn requested(suite: Suite) -> Vec<&'static str> {
    PACKAGES
        .iter()
        .map(|&p| match (suite, p) {
            (Suite::Bullseye, "bpftool") => "bpftool/bullseye",
            _ => p,
        })
        .collect()
}

/// An unpacked closure of [`PACKAGES`].
pub(crate) struct Sysroot {
    pub(crate) root: PathBuf,
    pub(crate) suite: Suite,
    pub(crate) arch: Arch,
}

/// The sysroot of `suite` for `arch`, unpacked into the cache once per closure: its directory is named
/// by a hash of every package and version in it, and the list itself is kept beside it and
/// compared, so a cache is never taken for another set of versions.
pub(crate) fn fetch(cache: &Path, suite: Suite, arch: Arch) -> Result<Sysroot> {
    let apt = Apt::new(cache, suite, arch)?;
    apt.ensure_lists()?;
    unpack(cache, &apt, arch).or_else(|err| {
        // Lists older than the archive name files it has since replaced.
        eprintln!("vm: {err:#}; refreshing the package lists and trying again");
        apt.refresh()?;
        unpack(cache, &apt, arch)
    })
}

fn unpack(cache: &Path, apt: &Apt, arch: Arch) -> Result<Sysroot> {
    let suite = apt.suite();
    let packages = requested(suite);
    let closure = apt.closure(&packages)?;
    let manifest = manifest(&closure);
    let root = cache.join(format!(
        "userspace/{}-{arch}-{:016x}",
        suite.name(),
        fnv1a(manifest.as_bytes())
    ));
    let done = root.join(".complete");
    if fs::read_to_string(&done).is_ok_and(|m| m == manifest) {
        return Ok(Sysroot { root, suite, arch });
    }
    println!(
        "vm: fetching the {arch} guest user space ({} packages of Debian {})",
        closure.len(),
        suite.name()
    );
    apt.download(&packages)?;
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;
    for (package, version) in &closure {
        let deb = apt.deb(package, version)?;
        proc::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::write(&done, &manifest)?;
    Ok(Sysroot { root, suite, arch })
}

impl Sysroot {
    /// `Debian bullseye arm64`, for messages.
    pub(crate) fn name(&self) -> String {
        format!("Debian {} {}", self.suite.name(), self.arch)
    }

    /// The directories the guest's dynamic loader searches by default (Debian's multiarch
    /// ones first), as paths inside the sysroot.
    pub(crate) fn library_dirs(&self) -> [String; 4] {
        let gnu = self.arch.gnu();
        [
            format!("/usr/lib/{gnu}"),
            format!("/lib/{gnu}"),
            "/usr/lib".into(),
            "/lib".into(),
        ]
    }

    /// The file `path` (absolute, as in the guest) names inside the sysroot, with symbolic
    /// links followed inside it (an absolute target is the sysroot's, never the host's), and
    /// /bin, /sbin, /lib* found under /usr when only /usr has them (packages since Debian 13 ship
    /// there; the merged-/usr links belong to base-files, which no closure here contains).
    pub(crate) fn resolve(&self, path: &str) -> Option<PathBuf> {
        let mut path = PathBuf::from(path);
        for _ in 0..40 {
            let host = self.root.join(path.strip_prefix("/").ok()?);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = fs::read_link(&host).ok()?;
                    path = if target.is_absolute() {
                        target
                    } else {
                        path.parent()?.join(target)
                    };
                    path = normalise(&path);
                }
                Ok(_) => return Some(host),
                Err(_) => {
                    let merged = usr_merged(&path)?;
                    path = merged;
                }
            }
        }
        None
    }
}

/// `/lib/x` as `/usr/lib/x` (and /bin, /sbin, /lib64), `None` for any other path.
fn usr_merged(path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix("/").ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    ["bin", "sbin", "lib", "lib64"]
        .contains(&first)
        .then(|| Path::new("/usr").join(rel))
}

/// `path` without `.` and `..` components (lexically: the links are followed by the caller).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

/// The closure as one line per package, sorted: what the cache directory is keyed by.
pub(super) fn manifest(closure: &[(String, String)]) -> String {
    let mut lines: Vec<String> = closure.iter().map(|(p, v)| format!("{p} {v}")).collect();
    lines.sort();
    lines.iter().fold(String::new(), |mut out, l| {
        let _ = writeln!(out, "{l}");
        out
    })
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust versions, for cache keys.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_11s_bpftool_is_its_point_releases() {
        assert!(requested(Suite::Bullseye).contains(&"bpftool/bullseye"));
        assert!(requested(Suite::Trixie).contains(&"bpftool"));
        assert_eq!(requested(Suite::Trixie), PACKAGES);
    }

    #[test]
    fn the_cache_key_changes_with_any_version() {
        let a = manifest(&[
            ("libc6".into(), "2.41-12".into()),
            ("curl".into(), "8.14.1-2".into()),
        ]);
        assert_eq!(a, "curl 8.14.1-2\nlibc6 2.41-12\n");
        let b = manifest(&[
            ("libc6".into(), "2.41-12+deb13u1".into()),
            ("curl".into(), "8.14.1-2".into()),
        ]);
        assert_ne!(fnv1a(a.as_bytes()), fnv1a(b.as_bytes()));
        // The published FNV-1a test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn links_are_followed_inside_the_sysroot() {
        let dir = std::env::temp_dir().join(format!("mh-sysroot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let lib = dir.join("usr/lib/aarch64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("libelf-0.192.so"), "elf").unwrap();
        std::os::unix::fs::symlink("libelf-0.192.so", lib.join("libelf.so.1")).unwrap();
        fs::create_dir_all(dir.join("usr/bin")).unwrap();
        fs::write(dir.join("usr/bin/dash"), "dash").unwrap();
        // An absolute link means the sysroot's file, whatever the host has there.
        std::os::unix::fs::symlink("/usr/bin/dash", dir.join("usr/bin/sh")).unwrap();
        let sysroot = Sysroot {
            root: dir.clone(),
            suite: Suite::Trixie,
            arch: Arch::Arm64,
        };
        assert_eq!(
            sysroot.resolve("/usr/lib/aarch64-linux-gnu/libelf.so.1"),
            Some(lib.join("libelf-0.192.so"))
        );
        assert_eq!(
            sysroot.resolve("/usr/bin/sh"),
            Some(dir.join("usr/bin/dash"))
        );
        // Debian 13 ships /bin's programs in /usr/bin.
        assert_eq!(sysroot.resolve("/bin/dash"), Some(dir.join("usr/bin/dash")));
        assert_eq!(sysroot.resolve("/etc/missing"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
