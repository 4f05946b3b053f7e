//! The run-time libraries of a foreign architecture, for dpkg-shlibdeps. On the host it reads
//! the installed libraries' symbols files; for another architecture nothing is installed (the
//! cross toolchain's libc6-<arch>-cross has a coarse shlibs file under another package name), so
//! the architecture's own libc6 and libgcc-s1 are fetched from the machine's Debian release with
//! apt in a private state directory (the machine's own package database and architectures stay
//! as they are) and unpacked with their control files (`dpkg-deb -R`): dpkg-shlibdeps `-S` then
//! finds each library and its symbols file there, as for a library built beside the binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::arch::Arch;
use crate::proc;

/// The packages of the libraries multihome links (Rust's std: libc.so.6, libgcc_s.so.1). A
/// binary that needs another one makes dpkg-shlibdeps fail naming it: add its package here.
const RUNTIME: [&str; 2] = ["libc6", "libgcc-s1"];

/// Fetches and unpacks `arch`'s run-time libraries under `dir`; returns their package trees.
pub(crate) fn runtime_libraries(dir: &Path, arch: Arch) -> Result<Vec<PathBuf>> {
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    fs::write(apt.join("status"), "")?;
    let options = apt_options(&apt, arch);
    proc::run(Command::new("apt-get").args(&options).arg("update"))
        .context("reading the Debian archive's package lists for the foreign architecture")?;
    let debs = apt.join("debs");
    fs::create_dir_all(&debs)?;
    proc::run(
        Command::new("apt-get")
            .args(&options)
            .arg("download")
            .args(RUNTIME)
            .current_dir(&debs),
    )?;
    let runtime = dir.join("runtime");
    fs::create_dir_all(&runtime)?;
    let mut trees = Vec::new();
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let package = name.split('_').next().unwrap_or(name).to_owned();
        let tree = runtime.join(package);
        proc::run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree))?;
        trees.push(tree);
    }
    trees.sort();
    Ok(trees)
}

/// apt-get reading the machine's sources for `arch` alone, with lists, cache and (empty)
/// status of its own under `apt`: no lock, nothing of the machine's changed.
fn apt_options(apt: &Path, arch: Arch) -> Vec<String> {
    let set = |key: &str, value: &str| ["-o".to_owned(), format!("{key}={value}")];
    let path = |p: &str| apt.join(p).display().to_string();
    [
        set("APT::Architecture", arch.debian()),
        set("APT::Architectures::", arch.debian()),
        set("Dir::State::Lists", &path("lists")),
        set("Dir::State::status", &path("status")),
        set("Dir::Cache", &path("cache")),
        set("Debug::NoLocking", "1"),
        set("APT::Sandbox::User", "root"),
    ]
    .into_iter()
    .flatten()
    .chain(["-qq".to_owned()])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_reads_only_the_foreign_architecture_into_its_own_state() {
        let options = apt_options(Path::new("/w/apt"), Arch::Arm64).join(" ");
        assert_eq!(
            options,
            "-o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
             -o Dir::State::Lists=/w/apt/lists -o Dir::State::status=/w/apt/status \
             -o Dir::Cache=/w/apt/cache -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq"
        );
    }
}
