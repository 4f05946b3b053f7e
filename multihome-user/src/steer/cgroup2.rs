//! The cgroup2 hierarchy as steering uses it: where it is mounted (never assumed: hybrid hosts
//! mount it at /sys/fs/cgroup/unified, unified ones at /sys/fs/cgroup), a cgroup's id, the names
//! of the uplink slices, and what a cgroup holds.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The mount point of the cgroup2 hierarchy of this process's mount namespace.
pub(crate) fn mount_point() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    match parse_mountinfo(&mountinfo) {
        Some(path) => Ok(path),
        None => bail!(
            "no cgroup2 file system is mounted (see /proc/self/mountinfo): steering programs onto \
             an uplink needs the unified cgroup hierarchy (mount -t cgroup2 none /sys/fs/cgroup)"
        ),
    }
}

/// The mount point of the first cgroup2 mount of the whole hierarchy (root `/`) in a mountinfo
/// text: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let fstype = fs.split(' ').next()?;
        let mount_point = fields.get(4)?;
        (fstype == "cgroup2" && fields.get(3) == Some(&"/"))
            .then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `dir` lies in the cgroup2 hierarchy mounted at `mount` (a path in a cgroup v1
/// hierarchy or a plain directory cannot hold the steering program). Nothing is mounted below
/// a cgroup2 mount, so the path tells; `..` is not followed.
pub(crate) fn is_below(dir: &Path, mount: &Path) -> bool {
    dir.starts_with(mount)
        && !dir
            .components()
            .any(|c| c == std::path::Component::ParentDir)
}

/// A cgroup's id, as the kernel's helpers give it: the directory's inode number on cgroup2
/// (the kernfs node id, also what `name_to_handle_at` returns).
pub(crate) fn id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

const SLICE_PREFIX: &str = "multihome-";
const SLICE_SUFFIX: &str = ".slice";

/// The directory (and systemd slice unit) name of an uplink's slice: `multihome-wan2.slice`.
/// A dash nests slices in systemd's naming, so the uplink's own dashes are escaped as
/// `systemd-escape` does (`wan-b` -> `multihome-wan\x2db.slice`).
pub(crate) fn slice_name(uplink: &str) -> String {
    format!(
        "{SLICE_PREFIX}{}{SLICE_SUFFIX}",
        uplink.replace('\\', "\\x5c").replace('-', "\\x2d")
    )
}

/// The uplink whose slice is named `name`, if it is one.
pub(crate) fn uplink_of_slice(name: &str) -> Option<String> {
    let escaped = name
        .strip_prefix(SLICE_PREFIX)?
        .strip_suffix(SLICE_SUFFIX)?;
    if escaped.is_empty() || escaped.contains('-') {
        return None;
    }
    Some(escaped.replace("\\x2d", "-").replace("\\x5c", "\\"))
}

/// Whether a process lives in `dir` or below (`populated` of `cgroup.events`).
pub(crate) fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// The processes directly in `dir`.
pub(crate) fn processes(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The child cgroups of `dir`, by name.
pub(crate) fn children(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Creates the cgroup `dir`; one that exists already is fine.
pub(crate) fn create(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steering_root_must_be_below_the_cgroup2_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        assert!(is_below(&mount.join("multihome.slice"), mount));
        assert!(is_below(mount, mount));
        assert!(!is_below(Path::new("/sys/fs/cgroup/systemd/x"), mount));
        assert!(!is_below(Path::new("/tmp/x"), mount));
        assert!(!is_below(&mount.join("../systemd/x"), mount));
    }

    #[test]
    fn finds_cgroup2_wherever_it_is_mounted() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,relatime shared:4 - cgroup2 cgroup2 rw\n\
                      27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            parse_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_mountinfo(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A bind mount of a sub-tree (a container's view) is not the hierarchy's root.
        let bound = "40 30 0:26 /system.slice /mnt/cg rw - cgroup2 cgroup2 rw\n\
                     41 30 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(bound), Some(PathBuf::from("/mnt/my cg")));
        let v1_only = "27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_mountinfo(v1_only), None);
    }

    #[test]
    fn slice_names_escape_dashes_as_systemd_does() {
        let cases = [
            ("wan2", "multihome-wan2.slice"),
            ("vlan102", "multihome-vlan102.slice"),
            ("eth0.102", "multihome-eth0.102.slice"),
            ("wan-b", "multihome-wan\\x2db.slice"),
        ];
        for (uplink, slice) in cases {
            assert_eq!(slice_name(uplink), slice);
            assert_eq!(uplink_of_slice(slice).as_deref(), Some(uplink));
        }
        for other in [
            "multihome.slice",
            "multihome-.slice",
            "multihome-a-b.slice",
            "system.slice",
            "multihome-wan2.scope",
        ] {
            assert_eq!(uplink_of_slice(other), None, "{other}");
        }
    }
}
