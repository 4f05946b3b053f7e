//! `cargo xtask package`: Debian packages of the release build, `multihome_VERSION_ARCH.deb`.
//!
//! Made with dpkg's own tools rather than cargo-deb (which every fresh machine would have to
//! compile first): `install::Layout::debian` stages the files (the one table of what goes
//! where, shared with `cargo xtask install`), this module adds what Debian policy asks of a
//! package (stripped binary, gzipped man pages, copyright and changelog), `control` writes the
//! DEBIAN/ tree (dpkg-gencontrol computes Installed-Size; no Depends, the binary is static; the
//! maintainer scripts come from dist/debian/), and `dpkg-deb --build` makes the archive.
//! `--test` then runs the package tier (tests/tests/package.rs) against what was built.

mod control;
mod docs;
mod fresh;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::arch::Arch;
use crate::install::{self, Layout, Unit};
use crate::proc::{self, OperatorError};

/// `--arch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ArchChoice {
    Amd64,
    Arm64,
    All,
}

impl ArchChoice {
    fn arches(self) -> Vec<Arch> {
        match self {
            ArchChoice::Amd64 => vec![Arch::Amd64],
            ArchChoice::Arm64 => vec![Arch::Arm64],
            ArchChoice::All => Arch::ALL.to_vec(),
        }
    }
}

/// An architecture named in a package's file name or control file.
fn arch_named(name: &str) -> Option<Arch> {
    Arch::ALL.into_iter().find(|a| a.debian() == name)
}

/// What `cargo xtask package` was asked for.
pub(crate) struct Request {
    /// None: this machine's architecture.
    pub(crate) arch: Option<ArchChoice>,
    /// Replaces the version dist/debian/changelog gives (e.g. an older one, to test upgrades).
    pub(crate) version: Option<String>,
    /// Where the packages go (default target/package).
    pub(crate) out_dir: Option<PathBuf>,
    /// Extract each package into DIR/ARCH afterwards (`dpkg-deb -x`).
    pub(crate) extract: Option<PathBuf>,
    /// Run the package tier against the packages afterwards.
    pub(crate) test: bool,
}

/// One package to build: the binary for its architecture, the version, where it goes.
struct Build<'a> {
    arch: Arch,
    binary: &'a Path,
    /// A build of the same sources that runs here: renders the man pages and completions.
    generator: &'a Path,
    release: &'a docs::Release,
    out_dir: &'a Path,
}

pub(crate) fn run(request: &Request) -> Result<()> {
    if request.test && !proc::is_root() {
        return Err(OperatorError(
            "package --test installs and purges the package with dpkg: run it as root".into(),
        )
        .into());
    }
    let host = Arch::host();
    let release = docs::Release::read(request.version.as_deref())?;
    let out_dir = match &request.out_dir {
        Some(dir) => dir.clone(),
        None => default_dir()?,
    };
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let generator = crate::build::binary(host, true)?;
    let mut debs = Vec::new();
    let arches = request.arch.map_or(vec![host], ArchChoice::arches);
    for arch in arches {
        // The host's own build, or a cross-build for another architecture.
        let binary = crate::build::binary(arch, true)?;
        let deb = build(&Build {
            arch,
            binary: &binary,
            generator: &generator,
            release: &release,
            out_dir: &out_dir,
        })?;
        println!("package: wrote {}", deb.display());
        if let Some(dir) = &request.extract {
            let extracted = extract(&deb, &dir.join(arch.debian()))?;
            println!(
                "package: extracted {} and {}",
                extracted.binary.display(),
                extracted.unit.display()
            );
        }
        debs.push(deb);
    }
    if request.test {
        let Some(native) = debs.iter().find(|d| deb_arch(d) == Some(host)) else {
            return Err(OperatorError(format!(
                "package --test installs the {} package: build it too (--arch {} or all)",
                host.debian(),
                host.debian()
            ))
            .into());
        };
        // The previous version for the upgrade test: the same command with an older version.
        let previous = docs::Release::read(Some(&docs::previous_version(&release.version)))?;
        let previous = build(&Build {
            arch: host,
            binary: &generator,
            generator: &generator,
            release: &previous,
            out_dir: &out_dir.join("previous"),
        })?;
        println!(
            "package: wrote {} (for the upgrade test)",
            previous.display()
        );
        run_tier(&debs, native, &previous)?;
    }
    Ok(())
}

/// The packages an upgrade test needs, built as `cargo xtask package --test` builds them: this
/// tree's version for this machine's architecture and the version dpkg orders just before it
/// (the same build, relabelled), both in `out_dir`. Returns (previous, current).
pub(crate) fn upgrade_pair(out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let host = Arch::host();
    let binary = crate::build::binary(host, true)?;
    let current = docs::Release::read(None)?;
    let previous = docs::Release::read(Some(&docs::previous_version(&current.version)))?;
    let mut built = Vec::new();
    for release in [&previous, &current] {
        built.push(build(&Build {
            arch: host,
            binary: &binary,
            generator: &binary,
            release,
            out_dir,
        })?);
    }
    let current = built.pop().context("no current package")?;
    let previous = built.pop().context("no previous package")?;
    Ok((previous, current))
}

/// The package tier: file lists, control fields and lintian for every package; install,
/// upgrade from `previous`, remove and purge of `native`. Its own test target (built only when
/// asked for by name), which reads what to test from the environment.
fn run_tier(debs: &[PathBuf], native: &Path, previous: &Path) -> Result<()> {
    let list = std::env::join_paths(debs).context("a package path holds a ':'")?;
    proc::run(
        proc::cargo(["test", "--package", "multihome-tests", "--test", "package"])
            .env("MULTIHOME_PACKAGES", list)
            .env("MULTIHOME_NATIVE_PACKAGE", native)
            .env("MULTIHOME_PREVIOUS_PACKAGE", previous),
    )
}

/// Where packages go unless told otherwise, and where [`current`] looks for them.
fn default_dir() -> Result<PathBuf> {
    Ok(crate::run::target_dir()?.join("package"))
}

/// The package of `arch` in the default directory, built from the sources as they are now:
/// the one `cargo xtask package` wrote if it was made from the same inputs (see `fresh`),
/// else built here. The VM tier boots what it holds.
pub(crate) fn current(arch: Arch) -> Result<PathBuf> {
    let release = docs::Release::read(None)?;
    let out_dir = default_dir()?;
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // cargo brings both binaries up to date (quick when nothing changed).
    let generator = crate::build::binary(Arch::host(), true)?;
    let binary = crate::build::binary(arch, true)?;
    let build = Build {
        arch,
        binary: &binary,
        generator: &generator,
        release: &release,
        out_dir: &out_dir,
    };
    let deb = build.deb();
    if fresh::is_current(&deb, &build.manifest()?) {
        println!(
            "package: {} is current (made from these sources)",
            deb.display()
        );
        return Ok(deb);
    }
    let deb = self::build(&build)?;
    println!("package: wrote {}", deb.display());
    Ok(deb)
}

impl Build<'_> {
    /// `OUT_DIR/multihome_VERSION_ARCH.deb`.
    fn deb(&self) -> PathBuf {
        self.out_dir.join(format!(
            "multihome_{}_{}.deb",
            self.release.version,
            self.arch.debian()
        ))
    }

    /// What the package is made from: the binaries, the xtask that packs them (the unit and
    /// configuration are compiled into it), dist/ and the crates' versions.
    fn manifest(&self) -> Result<String> {
        let root = proc::workspace_root();
        fresh::manifest(
            &self.release.version,
            &[
                self.binary.to_owned(),
                self.generator.to_owned(),
                std::env::current_exe().context("the running xtask's path")?,
                root.join("dist"),
                root.join("Cargo.lock"),
            ],
        )
    }
}

/// The architecture in a package's file name (`multihome_V_ARCH.deb`).
fn deb_arch(deb: &Path) -> Option<Arch> {
    let stem = deb.file_stem()?.to_str()?;
    arch_named(stem.rsplit('_').next()?)
}

/// Stages, completes and archives one package; returns the .deb's path.
fn build(build: &Build) -> Result<PathBuf> {
    let arch = build.arch;
    let work = build.out_dir.join(format!("build-{}", arch.debian()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let root = work.join("root");
    let layout = Layout::debian(&root);
    install::stage(&layout, build.binary, build.generator)?;
    strip(arch, &layout.staged(&layout.binary()))?;
    docs::compress_man_pages(&layout.staged(&layout.man_dir()))?;
    docs::write(&layout, build.release, &docs::crates(arch.triple())?)?;
    lintian_overrides(&layout)?;
    normalise_permissions(&root)?;
    control::write(&work, &root, arch, build.release)?;
    let deb = build.deb();
    let manifest = build.manifest()?;
    fresh::forget(&deb)?;
    proc::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", build.release.timestamp.to_string()),
    )?;
    fresh::record(&deb, &manifest)?;
    Ok(deb)
}

/// dist/debian/lintian-overrides where dh_lintian puts a package's overrides: lintian's verdict
/// on the static binary, with the reason, for whoever lints the package.
fn lintian_overrides(layout: &Layout) -> Result<()> {
    let dir = layout.staged(Path::new("/usr/share/lintian/overrides"));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("multihome");
    fs::copy(docs::dist("lintian-overrides"), &path)
        .with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Strips the binary as dh_strip does an executable's (the guard's eBPF object is data inside
/// it, untouched), with the binutils of its own architecture.
fn strip(arch: Arch, binary: &Path) -> Result<()> {
    let tool = format!("{}-strip", arch.gnu());
    proc::run(
        Command::new(&tool)
            .args(["--remove-section=.comment", "--remove-section=.note"])
            .arg(binary),
    )
    .with_context(|| format!("stripping {} ({tool}, package binutils)", binary.display()))
}

/// Directories 0755 whatever the umask (files keep the modes `install::stage` gave them), as
/// dh_fixperms leaves them.
fn normalise_permissions(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            normalise_permissions(&path)?;
        }
    }
    Ok(())
}

/// Where `extract` put the parts the VM matrix runs.
pub(crate) struct Extracted {
    /// The package's whole tree, as dpkg would unpack it into `/`.
    pub(crate) root: PathBuf,
    pub(crate) binary: PathBuf,
    pub(crate) unit: PathBuf,
}

/// Unpacks `deb` into `dir` (`dpkg-deb -x`), so that tests run exactly what the package
/// installs.
pub(crate) fn extract(deb: &Path, dir: &Path) -> Result<Extracted> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    proc::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    let layout = Layout::debian(dir);
    let extracted = Extracted {
        root: dir.to_owned(),
        binary: layout.staged(&layout.binary()),
        unit: layout.staged(&layout.unit(Unit::Daemon)),
    };
    for part in [&extracted.binary, &extracted.unit] {
        if !part.exists() {
            bail!("{} holds no {}", deb.display(), part.display());
        }
    }
    Ok(extracted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_architecture_is_read_from_the_file_name() {
        let deb = Path::new("/x/multihome_0.1.0~previous-1_arm64.deb");
        assert_eq!(deb_arch(deb), Some(Arch::Arm64));
        assert_eq!(
            deb_arch(Path::new("multihome_0.1.0-1_amd64.deb")),
            Some(Arch::Amd64)
        );
        assert_eq!(deb_arch(Path::new("multihome_0.1.0-1_i386.deb")), None);
    }

    #[test]
    fn all_means_both_architectures() {
        assert_eq!(ArchChoice::All.arches(), [Arch::Amd64, Arch::Arm64]);
        assert_eq!(ArchChoice::Arm64.arches(), [Arch::Arm64]);
    }
}
