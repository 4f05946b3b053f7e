//! The package's DEBIAN/ tree, as debhelper would leave it: `conffiles` (every file under
//! /etc, as dh_installdeb marks them), the maintainer scripts from dist/debian/, `control`
//! from dist/debian/control by dpkg-gencontrol (Version, Architecture, Installed-Size) with
//! Depends from dpkg-shlibdeps (the libraries the binary links at run time, and nothing used to
//! build it; for a foreign architecture, read from its own libraries: `foreign`), and
//! `md5sums`.
//!
//! The dpkg tools read a source tree's debian/control and debian/changelog: `work/debian/`
//! holds them, beside the package's root `work/root/`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::docs::{dist, Release};
use super::foreign;
use crate::arch::Arch;
use crate::proc;

/// The maintainer scripts, as dist/debian/ has them.
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

pub(crate) fn write(work: &Path, root: &Path, arch: Arch, release: &Release) -> Result<()> {
    let debian = work.join("debian");
    fs::create_dir_all(&debian)?;
    fs::copy(dist("control"), debian.join("control"))?;
    fs::write(debian.join("changelog"), &release.changelog)?;
    let meta = root.join("DEBIAN");
    fs::create_dir_all(&meta)?;
    fs::set_permissions(&meta, fs::Permissions::from_mode(0o755))?;

    let conffiles: String = files_under(root, Path::new("etc"))?
        .iter()
        .map(|f| format!("/{}\n", f.display()))
        .collect();
    put(&meta.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    for script in SCRIPTS {
        let text = fs::read(dist(script))?;
        put(&meta.join(script), &text, 0o755)?;
    }

    // The tools take the host architecture from the environment, as dpkg-buildpackage -a sets it.
    let mut shlibdeps = Command::new("dpkg-shlibdeps");
    shlibdeps.arg("-Tdebian/substvars");
    if arch != Arch::host() {
        for tree in foreign::runtime_libraries(work, arch)? {
            shlibdeps.arg(format!("-S{}", tree.display()));
        }
    }
    proc::run(
        shlibdeps
            .arg("root/usr/bin/multihome")
            .current_dir(work)
            .env("DEB_HOST_ARCH", arch.debian()),
    )?;
    proc::run(
        Command::new("dpkg-gencontrol")
            .args([
                "-pmultihome",
                "-Tdebian/substvars",
                "-fdebian/files",
                "-Proot",
            ])
            .arg(format!("-v{}", release.version))
            .current_dir(work)
            .env("DEB_HOST_ARCH", arch.debian()),
    )?;

    let files: Vec<PathBuf> = files_under(root, Path::new(""))?
        .into_iter()
        .filter(|f| !f.starts_with("DEBIAN"))
        .collect();
    let sums = Command::new("md5sum")
        .arg("--")
        .args(&files)
        .current_dir(root)
        .output()
        .context("cannot start md5sum")?;
    if !sums.status.success() {
        anyhow::bail!("md5sum failed: {}", String::from_utf8_lossy(&sums.stderr));
    }
    put(&meta.join("md5sums"), &sums.stdout, 0o644)
}

fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The regular files below `root/dir`, relative to `root`, sorted.
fn files_under(root: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(root.join(dir)) else {
        return Ok(files);
    };
    for entry in entries {
        let rel = dir.join(entry?.file_name());
        let path = root.join(&rel);
        if path.is_dir() && !path.is_symlink() {
            files.extend(files_under(root, &rel)?);
        } else {
            files.push(rel);
        }
    }
    files.sort();
    Ok(files)
}
