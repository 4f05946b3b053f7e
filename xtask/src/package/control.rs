//! The package's DEBIAN/ tree, as debhelper would leave it: `conffiles` (every file under
//! /etc, as dh_installdeb marks them), the maintainer scripts from dist/debian/, `control`
//! from dist/debian/control by dpkg-gencontrol (Version, Architecture, Installed-Size), and
//! `md5sums`. No Depends: the binary is static (musl), which `static_binary` makes sure of, so
//! the package needs nothing on the host, not even a C library (no dpkg-shlibdeps either: it has
//! nothing to read in a static binary).
//!
//! The dpkg tools read a source tree's debian/control and debian/changelog: `work/debian/`
//! holds them, beside the package's root `work/root/`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::docs::{dist, Release};
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

    static_binary(&root.join("usr/bin/multihome"))?;
    // dpkg-gencontrol takes the host architecture from the environment, as dpkg-buildpackage -a
    // sets it.
    proc::run(
        Command::new("dpkg-gencontrol")
            .args(["-pmultihome", "-fdebian/files", "-Proot"])
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

/// Fails unless `binary` is static: no program interpreter, no library (`readelf` reads any
/// architecture). A package that depended on the build machine's C library would not install
/// on the older systems it supports (Debian 11's glibc 2.31).
fn static_binary(binary: &Path) -> Result<()> {
    let headers = proc::stdout_of(Command::new("readelf").args(["-d", "-l", "-W"]).arg(binary))?;
    if let Some(line) = headers
        .lines()
        .find(|l| l.contains("(NEEDED)") || l.contains("program interpreter"))
    {
        anyhow::bail!(
            "{} is not static ({}): build it with `build::binary`, for the musl target",
            binary.display(),
            line.trim()
        );
    }
    Ok(())
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
