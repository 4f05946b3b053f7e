//! Whether a package on disk was made from what it would be made from now. The package step of
//! `cargo xtask test` builds both packages; the VM tier then boots their binaries, and must not
//! build them a second time, nor boot a package left over from other sources. Each package is
//! written with a manifest beside it (`<deb>.inputs`): its version, and the size and
//! modification time of every file it is made from (the binaries cargo has just brought up to
//! date, the xtask that packs them, dist/ and Cargo.lock). A package is reused only while its
//! manifest equals the one made now.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The manifest of a package made as `version` from `files` (directories: every file below).
pub(crate) fn manifest(version: &str, files: &[PathBuf]) -> Result<String> {
    let mut out = format!("version {version}\n");
    let mut all = Vec::new();
    for path in files {
        collect(path, &mut all)?;
    }
    for path in all {
        let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let _ = writeln!(
            out,
            "{} {} {}.{:09}",
            path.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        );
    }
    Ok(out)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !path.is_dir() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        collect(&entry, out)?;
    }
    Ok(())
}

/// Where the manifest of `deb` is kept.
fn manifest_path(deb: &Path) -> PathBuf {
    let mut name = deb.as_os_str().to_owned();
    name.push(".inputs");
    PathBuf::from(name)
}

/// Whether `deb` exists and was made from exactly `manifest`.
pub(crate) fn is_current(deb: &Path, manifest: &str) -> bool {
    deb.exists() && fs::read_to_string(manifest_path(deb)).is_ok_and(|m| m == manifest)
}

/// Before `deb` is (re)written: until [`record`] it was made from nothing known.
pub(crate) fn forget(deb: &Path) -> Result<()> {
    match fs::remove_file(manifest_path(deb)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", manifest_path(deb).display()))
        }
        _ => Ok(()),
    }
}

/// Records that `deb` was made from `manifest`.
pub(crate) fn record(deb: &Path, manifest: &str) -> Result<()> {
    let path = manifest_path(deb);
    fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_current_only_for_the_same_inputs() {
        let dir = std::env::temp_dir().join(format!("mh-fresh-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("dist/debian")).unwrap();
        let binary = dir.join("multihome");
        fs::write(&binary, "one").unwrap();
        fs::write(dir.join("dist/debian/postinst"), "#!/bin/sh\n").unwrap();
        let inputs = [binary.clone(), dir.join("dist")];
        let deb = dir.join("multihome_1.0-1_amd64.deb");
        let before = manifest("1.0-1", &inputs).unwrap();
        assert!(before.starts_with("version 1.0-1\n"));
        assert!(before.contains("dist/debian/postinst 10 "), "{before}");
        assert!(!is_current(&deb, &before), "no package yet");
        fs::write(&deb, "deb").unwrap();
        assert!(!is_current(&deb, &before), "no manifest yet");
        record(&deb, &before).unwrap();
        assert!(is_current(&deb, &before));
        forget(&deb).unwrap();
        assert!(!is_current(&deb, &before), "being rewritten");
        forget(&deb).unwrap();
        record(&deb, &before).unwrap();
        assert!(!is_current(&deb, &manifest("1.0-2", &inputs).unwrap()));
        fs::write(&binary, "rebuilt").unwrap();
        assert!(!is_current(&deb, &manifest("1.0-1", &inputs).unwrap()));
        fs::remove_dir_all(&dir).unwrap();
    }
}
