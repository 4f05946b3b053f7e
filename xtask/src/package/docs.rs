//! What Debian policy asks of a package besides its programs: man pages compressed with
//! `gzip -9n`, and /usr/share/doc/multihome with the machine-readable copyright file and
//! changelog.Debian.gz. The version comes from dist/debian/changelog, as dpkg-buildpackage
//! takes it from debian/changelog.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::install::Layout;
use crate::proc::{self, OperatorError};

/// dist/debian/<name> in the workspace.
pub(crate) fn dist(name: &str) -> PathBuf {
    proc::workspace_root().join("dist/debian").join(name)
}

/// The version a package is built as, and its changelog.
pub(crate) struct Release {
    pub(crate) version: String,
    /// dist/debian/changelog, with an entry for an overriding version on top.
    pub(crate) changelog: String,
    /// The top entry's date in seconds since the epoch (SOURCE_DATE_EPOCH for dpkg-deb).
    pub(crate) timestamp: u64,
}

impl Release {
    /// The release dist/debian/changelog describes, or `version` built from its sources.
    pub(crate) fn read(version: Option<&str>) -> Result<Release> {
        let path = dist("changelog");
        let changelog =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| -> Result<String> {
            let mut cmd = Command::new("dpkg-parsechangelog");
            cmd.arg("-l").arg(&path).args(["-S", name]);
            let value = proc::stdout_of(&mut cmd)?.trim().to_owned();
            if value.is_empty() {
                anyhow::bail!("`{}` printed nothing", proc::show(&cmd));
            }
            Ok(value)
        };
        let timestamp = field("Timestamp")?
            .parse()
            .context("dpkg-parsechangelog's Timestamp")?;
        let top = field("Version")?;
        let Some(version) = version.filter(|v| *v != top) else {
            return Ok(Release {
                version: top,
                changelog,
                timestamp,
            });
        };
        validate_version(version)?;
        let entry = override_entry(version, &top, &field("Maintainer")?, &field("Date")?);
        Ok(Release {
            version: version.to_owned(),
            changelog: format!("{entry}{changelog}"),
            timestamp,
        })
    }
}

fn validate_version(version: &str) -> Result<()> {
    let out = Command::new("dpkg")
        .args(["--validate-version", "--", version])
        .output()
        .context("cannot start dpkg")?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.trim().trim_start_matches("dpkg: error: ");
        return Err(OperatorError(format!(
            "--version {version}: {why}: give a Debian version such as 0.1.0-2"
        ))
        .into());
    }
    Ok(())
}

/// The changelog entry for a package built as `version` from the sources of release `top`.
fn override_entry(version: &str, top: &str, maintainer: &str, date: &str) -> String {
    format!(
        "multihome ({version}) UNRELEASED; urgency=medium\n\n  \
         * Built as {version} from the sources of {top} by\n    \
         `cargo xtask package --version {version}`.\n\n -- {maintainer}  {date}\n\n"
    )
}

/// A version that dpkg orders just before `version`, for the package the upgrade test starts
/// from: `0.1.0-1` gives `0.1.0~previous-1`.
pub(crate) fn previous_version(version: &str) -> String {
    match version.rsplit_once('-') {
        Some((upstream, revision)) => format!("{upstream}~previous-{revision}"),
        None => format!("{version}~previous"),
    }
}

/// `gzip -9n` every page in `dir` (no name, no time stamp: the same bytes from the same page).
pub(crate) fn compress_man_pages(dir: &Path) -> Result<()> {
    let mut pages: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.retain(|p| p.extension().is_some_and(|e| e == "1"));
    pages.sort();
    proc::run(Command::new("gzip").arg("-9n").args(&pages))
}

/// Writes /usr/share/doc/multihome/{copyright,changelog.Debian.gz}.
pub(crate) fn write(layout: &Layout, release: &Release, crates: &[String]) -> Result<()> {
    let doc = layout.staged(Path::new("/usr/share/doc/multihome"));
    fs::create_dir_all(&doc)?;
    let copyright = fs::read_to_string(dist("copyright"))?;
    let put = |name: &str, text: &str| -> Result<PathBuf> {
        let path = doc.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        Ok(path)
    };
    put("copyright", &copyright_with(&copyright, crates))?;
    let changelog = put("changelog.Debian", &release.changelog)?;
    proc::run(Command::new("gzip").arg("-9n").arg(changelog))
}

/// dist/debian/copyright with the statically linked crates listed at the end of its header's
/// Comment (the header is the first paragraph).
fn copyright_with(copyright: &str, crates: &[String]) -> String {
    let (header, rest) = copyright
        .split_once("\n\n")
        .unwrap_or((copyright.trim_end(), ""));
    let mut text = format!("{header}\n .\n");
    for line in crates {
        text.push_str(&format!(" {line}\n"));
    }
    text.push('\n');
    text.push_str(rest);
    text
}

/// The crates the binary for `target` links, as `name version: license`, from the dependency
/// graph cargo builds it with (proc-macros run at build time and are not linked) (multihome's own crates left out: the copyright file's first
/// Files paragraph covers them).
pub(crate) fn crates(target: &str) -> Result<Vec<String>> {
    let out = proc::stdout_of(&mut proc::cargo([
        "tree",
        "--package",
        "multihome",
        "--edges",
        "normal,no-proc-macro",
        "--target",
        target,
        "--prefix",
        "none",
        "--format",
        "{p}\t{l}",
    ]))?;
    let crates = parse_crates(&out);
    if crates.is_empty() {
        anyhow::bail!("`cargo tree` listed no crates for {target}");
    }
    Ok(crates)
}

fn parse_crates(tree: &str) -> Vec<String> {
    let mut crates: Vec<String> = tree
        .lines()
        .filter_map(|line| {
            let (package, license) = line.split_once('\t')?;
            // A path dependency ("multihome-ebpf v0.1.0 (/work/...)") is one of ours.
            if package.contains(" (/") {
                return None;
            }
            let mut words = package.split_whitespace();
            let (name, version) = (words.next()?, words.next()?);
            let license = license.trim_end_matches(" (*)").trim();
            let version = version.trim_start_matches('v');
            Some(format!("{name} {version}: {license}"))
        })
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_version_sorts_just_before() {
        assert_eq!(previous_version("0.1.0-1"), "0.1.0~previous-1");
        assert_eq!(previous_version("1.2"), "1.2~previous");
        let newer = Command::new("dpkg")
            .args(["--compare-versions", "0.1.0~previous-1", "lt", "0.1.0-1"])
            .status()
            .unwrap();
        assert!(newer.success());
    }

    #[test]
    fn the_changelog_names_the_workspace_version() {
        let release = Release::read(None).unwrap();
        let upstream = release.version.rsplit_once('-').unwrap().0;
        assert_eq!(upstream, env!("CARGO_PKG_VERSION"));
        assert!(release.changelog.starts_with(&format!(
            "multihome ({}) unstable; urgency=medium\n",
            release.version
        )));
    }

    #[test]
    fn an_overriding_version_gets_its_own_entry_on_top() {
        let release = Release::read(Some("0.0.9-3")).unwrap();
        assert_eq!(release.version, "0.0.9-3");
        let first = release.changelog.lines().next().unwrap();
        assert_eq!(first, "multihome (0.0.9-3) UNRELEASED; urgency=medium");
        assert!(release.changelog.contains("\nmultihome (0.1.0-1) unstable"));
        let err = Release::read(Some("not a version")).err().unwrap();
        assert!(err.downcast_ref::<OperatorError>().is_some(), "{err}");
        assert!(err.to_string().contains("embedded spaces"), "{err}");
    }

    #[test]
    fn crates_are_listed_once_without_our_own() {
        let tree = "multihome v0.1.0 (/w/multihome-user)\tMIT OR Apache-2.0\n\
                    aya v0.14.1\tMIT OR Apache-2.0\n\
                    libc v0.2.191\tMIT OR Apache-2.0\n\
                    multihome-ebpf v0.1.0 (/w/multihome-ebpf)\tMIT OR Apache-2.0\n\
                    libc v0.2.191\tMIT OR Apache-2.0 (*)\n";
        assert_eq!(
            parse_crates(tree),
            [
                "aya 0.14.1: MIT OR Apache-2.0",
                "libc 0.2.191: MIT OR Apache-2.0"
            ]
        );
    }

    #[test]
    fn the_crate_list_ends_the_header_comment() {
        let text = copyright_with(
            "Format: x\nComment: linked:\n\nFiles: *\nLicense: MIT\n",
            &["a 1.0: MIT".into(), "b 2.0: Zlib".into()],
        );
        assert_eq!(
            text,
            "Format: x\nComment: linked:\n .\n a 1.0: MIT\n b 2.0: Zlib\n\nFiles: *\nLicense: MIT\n"
        );
    }
}
