//! apt with a state of its own, one per Debian release and architecture, under the VM cache:
//! its own sources list (Debian's archive, verified with Debian's archive keyring), package
//! lists, empty dpkg status and archive directory. The machine's sources, lists and installed
//! packages are neither read nor changed, so a bullseye or arm64 package is fetched on a bookworm
//! amd64 machine without `dpkg --add-architecture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::arch::Arch;
use crate::proc;

/// The Debian releases the VM tier takes kernels and user space from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Suite {
    /// Debian 11: Linux 5.10.
    Bullseye,
    /// Debian 12: Linux 6.1.
    Bookworm,
    /// Debian 13: Linux 6.12.
    Trixie,
}

impl Suite {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Suite::Bullseye => "bullseye",
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }

    /// The release's sources: its main archive and its security updates (where Debian puts
    /// kernel updates between point releases).
    fn sources(self) -> String {
        let keyring = "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg";
        let suite = self.name();
        format!(
            "deb [{keyring}] http://deb.debian.org/debian {suite} main\n\
             deb [{keyring}] http://deb.debian.org/debian-security {suite}-security main\n"
        )
    }
}

/// One private apt state.
pub(crate) struct Apt {
    dir: PathBuf,
    suite: Suite,
    arch: Arch,
}

impl Apt {
    /// The state for `suite` and `arch` under `cache`, created when missing.
    pub(crate) fn new(cache: &Path, suite: Suite, arch: Arch) -> Result<Apt> {
        let dir = cache.join(format!("apt/{}-{}", suite.name(), arch.debian()));
        for sub in [
            "lists/partial",
            "archives/partial",
            "state",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        fs::write(dir.join("sources.list"), suite.sources())?;
        if !dir.join("status").exists() {
            fs::write(dir.join("status"), "")?;
        }
        Ok(Apt { dir, suite, arch })
    }

    pub(crate) fn suite(&self) -> Suite {
        self.suite
    }

    /// Where downloaded packages land.
    pub(crate) fn archives(&self) -> PathBuf {
        self.dir.join("archives")
    }

    /// `apt-get` or `apt-cache` on this state.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(options(&self.dir, self.arch))
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Downloads the package lists when there are none yet (a fresh cache); [`Self::refresh`]
    /// downloads them again.
    pub(crate) fn ensure_lists(&self) -> Result<()> {
        let has_lists = fs::read_dir(self.dir.join("lists"))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if has_lists {
            Ok(())
        } else {
            self.refresh()
        }
    }

    pub(crate) fn refresh(&self) -> Result<()> {
        println!(
            "vm: apt-get update ({} {}, private lists)",
            self.suite.name(),
            self.arch
        );
        proc::run(self.command("apt-get").args(["-q", "update"]))
    }

    /// The version apt would download of `package`, if it knows the package.
    pub(crate) fn candidate(&self, package: &str) -> Result<Option<String>> {
        let policy = proc::stdout_of(self.command("apt-cache").args(["policy", package]))?;
        Ok(parse_candidate(&policy))
    }

    /// The names of the packages starting with `prefix`.
    pub(crate) fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let out = proc::stdout_of(self.command("apt-cache").args(["pkgnames", prefix]))?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// What installing `packages` on an empty system takes: every package of the closure with
    /// its version (from a simulated install, without recommends).
    pub(crate) fn closure(&self, packages: &[&str]) -> Result<Vec<(String, String)>> {
        let out = proc::stdout_of(
            self.command("apt-get")
                .args(["install", "-s", "--no-install-recommends"])
                .args(packages),
        )?;
        let closure = parse_simulated(&out);
        if closure.is_empty() {
            bail!(
                "apt ({} {}) cannot install {}: {}",
                self.suite.name(),
                self.arch,
                packages.join(" "),
                out.lines().last().unwrap_or("no output")
            );
        }
        Ok(closure)
    }

    /// Downloads `packages` with their whole closure into [`Self::archives`].
    pub(crate) fn download(&self, packages: &[&str]) -> Result<()> {
        proc::run(
            self.command("apt-get")
                .args([
                    "install",
                    "-q",
                    "-y",
                    "--download-only",
                    "--no-install-recommends",
                ])
                .args(packages),
        )
    }

    /// Downloads `package` at `version` alone (no dependencies) into [`Self::archives`]; lists
    /// older than the archive (a file since replaced) are refreshed once.
    pub(crate) fn fetch(&self, package: &str, version: &str) -> Result<PathBuf> {
        let get = || {
            proc::run(
                self.command("apt-get")
                    .args(["download", "-q", &format!("{package}={version}")])
                    .current_dir(self.archives()),
            )
        };
        if let Err(err) = get() {
            eprintln!("vm: {err:#}; refreshing the package lists and trying again");
            self.refresh()?;
            get()?;
        }
        self.deb(package, version)
    }

    /// The downloaded file of `package` at `version` in [`Self::archives`].
    pub(crate) fn deb(&self, package: &str, version: &str) -> Result<PathBuf> {
        fs::read_dir(self.archives())?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| is_deb_of(n, package, version))
            })
            .with_context(|| {
                format!(
                    "apt left no {package} {version} in {}",
                    self.archives().display()
                )
            })
    }
}

/// apt's options for a private state in `dir`: nothing of the machine's sources, lists,
/// preferences or dpkg status is used (its apt.conf.d stays, for a proxy, say).
pub(crate) fn options(dir: &Path, arch: Arch) -> Vec<String> {
    let d = dir.display();
    [
        format!("Dir::Etc::SourceList={d}/sources.list"),
        format!("Dir::Etc::SourceParts={d}/sources.list.d"),
        format!("Dir::Etc::PreferencesParts={d}/preferences.d"),
        format!("Dir::Etc::Preferences={d}/preferences"),
        format!("Dir::State={d}/state"),
        format!("Dir::State::Lists={d}/lists"),
        format!("Dir::State::status={d}/status"),
        format!("Dir::Cache={d}"),
        format!("Dir::Cache::Archives={d}/archives"),
        "Dir::Cache::pkgcache=".into(),
        "Dir::Cache::srcpkgcache=".into(),
        format!("APT::Architecture={}", arch.debian()),
        format!("APT::Architectures={}", arch.debian()),
        // Package lists only: no translations, no AppStream metadata (a desktop's apt.conf.d
        // asks for those).
        "Acquire::Languages=none".into(),
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
        "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
        "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
        // The cache belongs to root (the VM tier runs as root): apt's download sandbox user
        // could not write there.
        "APT::Sandbox::User=root".into(),
        // Another apt run of the machine may hold a lock: wait for it.
        "DPkg::Lock::Timeout=600".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

/// Whether `file` is the package file of `package` at `version`: apt writes an epoch as `%3a`
/// (`libcap2_1%3a2.66-4_arm64.deb`), `dpkg-deb --build` leaves it out.
pub(crate) fn is_deb_of(file: &str, package: &str, version: &str) -> bool {
    let file = file.replace("%3a", ":");
    let without_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    file.ends_with(".deb")
        && [version, without_epoch]
            .iter()
            .any(|v| file.starts_with(&format!("{package}_{v}_")))
}

/// The candidate version in `apt-cache policy` output, `None` for "(none)" or no package.
pub(crate) fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| *v != "(none)" && !v.is_empty())
        .map(str::to_string)
}

/// The packages and versions of a simulated install's `Inst` lines,
/// `Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64]) []`.
pub(crate) fn parse_simulated(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(" (")?;
            let version = rest.split_whitespace().next()?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machines_state_is_never_used() {
        let opts = options(Path::new("/c/apt/trixie-arm64"), Arch::Arm64);
        let joined = opts.join(" ");
        for own in [
            "Dir::Etc::SourceList=/c/apt/trixie-arm64/sources.list",
            "Dir::Etc::SourceParts=/c/apt/trixie-arm64/sources.list.d",
            "Dir::State::status=/c/apt/trixie-arm64/status",
            "Dir::State::Lists=/c/apt/trixie-arm64/lists",
            "Dir::Cache::Archives=/c/apt/trixie-arm64/archives",
            "APT::Architectures=arm64",
        ] {
            assert!(joined.contains(own), "{own} missing from {joined}");
        }
        assert!(opts.chunks(2).all(|pair| pair[0] == "-o"));
        assert!(!joined.contains("/etc/apt"));
        assert!(!joined.contains("/var/lib"));
    }

    #[test]
    fn sources_are_signed_by_debians_keyring() {
        let sources = Suite::Bullseye.sources();
        assert_eq!(sources.lines().count(), 2);
        assert!(sources.lines().all(|l| l
            .contains("[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]")
            && !l.contains("trusted")));
        assert!(sources.contains("debian-security bullseye-security main"));
    }

    #[test]
    fn package_files_are_matched_with_or_without_their_epoch() {
        assert!(is_deb_of(
            "libcap2_1%3a2.66-4+b1_arm64.deb",
            "libcap2",
            "1:2.66-4+b1"
        ));
        assert!(is_deb_of(
            "libcap2_2.66-4+b1_arm64.deb",
            "libcap2",
            "1:2.66-4+b1"
        ));
        assert!(!is_deb_of(
            "libcap2-bin_2.66-4+b1_arm64.deb",
            "libcap2",
            "1:2.66-4+b1"
        ));
        assert!(!is_deb_of("libcap2_2.66-5_arm64.deb", "libcap2", "2.66-4"));
    }

    #[test]
    fn policy_gives_the_candidate() {
        let policy = "linux-image-5.10.0-30-amd64:\n  Installed: (none)\n  Candidate: 5.10.218-1\n";
        assert_eq!(parse_candidate(policy).as_deref(), Some("5.10.218-1"));
        assert_eq!(
            parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn a_simulated_install_lists_the_closure() {
        let out = "Reading package lists...\n\
                   Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64]) []\n\
                   Inst libcap2 (1:2.66-4+deb12u3+b1 Debian:12.15/oldstable [arm64])\n\
                   Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64])\n";
        assert_eq!(
            parse_simulated(out),
            [
                ("libc6".to_string(), "2.36-9+deb12u14".to_string()),
                ("libcap2".to_string(), "1:2.66-4+deb12u3+b1".to_string())
            ]
        );
    }
}
