//! Attaching the steering program (`cgroup/sock_create`) to the steering root, and detaching
//! whatever an earlier process left, with the pin directory as the record: `cgroup_<id>` is the
//! link attaching it to the cgroup with that id. A link outlives its cgroup as a defunct one
//! (cgroup id 0 once the directory is removed), so the id in the name says what it was for.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::{links::CgroupAttachMode, links::FdLink, CgroupSock};

use super::attach::{detach_link, link_cgroup_id, remove_pin};

/// The pin recording the steering program's attachment to cgroup `id`.
pub(super) fn link_pin(pin_dir: &Path, id: u64) -> PathBuf {
    pin_dir.join(format!("cgroup_{id}"))
}

/// Every steering attachment recorded under `pin_dir`: the cgroup id its name gives, and the pin.
pub(crate) fn links(pin_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let id = name.to_str()?.strip_prefix("cgroup_")?.parse().ok()?;
            Some((id, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// Attaches `program` to the cgroup `root` (id `root_id`) with a pinned link, replacing the
/// link an earlier run left there (the new one is attached first, so that no socket is created
/// unsteered in between) and removing the links of other cgroups (an earlier root, or one that
/// was removed).
pub(super) fn attach(
    program: &mut CgroupSock,
    pin_dir: &Path,
    root: &Path,
    root_id: u64,
) -> Result<()> {
    let cgroup =
        File::open(root).with_context(|| format!("cannot open the cgroup {}", root.display()))?;
    // Links are always "multi" (several programs per cgroup); the kernel refuses the
    // BPF_F_ALLOW_MULTI flag for them, which `Single` leaves out.
    let id = program
        .attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("cannot attach the steering program to {}", root.display()))?;
    let link: FdLink = program.take_link(id)?.try_into().context(
        "the kernel attached the steering program without a link (before 5.7): not supported",
    )?;
    for (_, old) in links(pin_dir) {
        detach_link(&old)?;
        remove_pin(&old)?;
    }
    link.pin(link_pin(pin_dir, root_id))
        .context("cannot pin the steering link")?;
    Ok(())
}

/// Whether the steering program is attached to the cgroup with id `root_id` by a pinned link.
pub(crate) fn attached(pin_dir: &Path, root_id: u64) -> bool {
    matches!(link_cgroup_id(&link_pin(pin_dir, root_id)), Ok(Some(id)) if id == root_id)
}

/// Detaches every steering link under `pin_dir` and removes its pin; one line per link.
pub(crate) fn detach_all(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (id, pin) in links(pin_dir) {
        detach_link(&pin)?;
        remove_pin(&pin)?;
        removed.push(format!("steering attachment to cgroup {id}"));
    }
    Ok(removed)
}
