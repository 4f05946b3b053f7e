//! Steering programs onto an uplink (`multihome exec`, services in an uplink's slice): the
//! steering root (a cgroup, `multihome.slice` of the cgroup2 hierarchy by default) holds one
//! slice per uplink, `multihome-<uplink>.slice`; the steering program attached to the root marks
//! every socket created below it with the mark of its slice's uplink (`multihome_ebpf::steer`),
//! and the plan's fwmark rules route marked sockets through the uplink's table.
//!
//! This module keeps the steering map (cgroup id -> mark) in line with the slices that exist:
//! [`wanted`] is pure, [`Root`] reads and creates the directories, [`sync`] writes the map, and
//! `watch` wakes the daemon when a slice or an exec scope comes or goes.

pub(crate) mod cgroup2;
pub(crate) mod watch;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use multihome_ebpf::steer::mark_of_table;

use crate::config::Config;
use crate::guard::PinnedMaps;

/// The steering root's default, relative to the cgroup2 mount point: the slice systemd names
/// `multihome.slice`, the parent of every `multihome-<uplink>.slice`.
pub(crate) const DEFAULT_ROOT: &str = "multihome.slice";

/// Scopes `multihome exec` makes itself (without systemd) are named `exec-<pid>.scope`.
const EXEC_SCOPE_PREFIX: &str = "exec-";
const EXEC_SCOPE_SUFFIX: &str = ".scope";

/// The steering root: the cgroup the steering program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Root {
    pub(crate) path: PathBuf,
}

impl Root {
    /// `arg` as given when absolute, else below the cgroup2 mount point; refused when it is
    /// not in a cgroup2 file system.
    pub(crate) fn locate(arg: &Path) -> Result<Root> {
        let path = if arg.is_absolute() {
            arg.to_path_buf()
        } else {
            cgroup2::mount_point()?.join(arg)
        };
        let mount = cgroup2::mount_point().ok();
        if !mount.as_ref().is_some_and(|m| cgroup2::is_below(&path, m)) {
            let mounted = match &mount {
                Some(at) => format!("cgroup2 is mounted at {}", at.display()),
                None => "no cgroup2 file system is mounted".to_owned(),
            };
            anyhow::bail!(
                "the steering root {} (--cgroup-root, MULTIHOME_CGROUP_ROOT) is not in a cgroup2 \
                 file system ({mounted}): give a cgroup below it",
                path.display()
            );
        }
        Ok(Root { path })
    }

    /// The slice directory of `uplink`.
    pub(crate) fn slice(&self, uplink: &str) -> PathBuf {
        self.path.join(cgroup2::slice_name(uplink))
    }

    /// Creates the root and the slices of `uplinks` where they are missing, so that a service
    /// or `multihome exec` finds its slice mapped before its first socket. Under systemd the
    /// unit lets the daemon write below the root only (`ReadWritePaths=`); systemd adopts the
    /// directories when it starts the slice units.
    pub(crate) fn prepare<'a>(&self, uplinks: impl IntoIterator<Item = &'a str>) -> Result<()> {
        cgroup2::create(&self.path)
            .with_context(|| format!("cannot create the steering root {}", self.path.display()))?;
        for uplink in uplinks {
            let slice = self.slice(uplink);
            cgroup2::create(&slice)
                .with_context(|| format!("cannot create the slice {}", slice.display()))?;
        }
        Ok(())
    }

    /// The id of the root's cgroup.
    pub(crate) fn id(&self) -> io::Result<u64> {
        cgroup2::id(&self.path)
    }

    /// The uplink slices under the root now: cgroup id -> uplink name. Directories that are
    /// not an uplink's slice are left out (their sockets are refused).
    pub(crate) fn slices(&self) -> BTreeMap<u64, String> {
        cgroup2::children(&self.path)
            .into_iter()
            .filter_map(|name| {
                let uplink = cgroup2::uplink_of_slice(&name)?;
                let id = cgroup2::id(&self.path.join(&name)).ok()?;
                Some((id, uplink))
            })
            .collect()
    }

    /// The scopes `multihome exec` made below the slices, by path.
    pub(crate) fn exec_scopes(&self) -> Vec<PathBuf> {
        cgroup2::children(&self.path)
            .into_iter()
            .filter(|name| cgroup2::uplink_of_slice(name).is_some())
            .flat_map(|slice| {
                let dir = self.path.join(slice);
                cgroup2::children(&dir)
                    .into_iter()
                    .filter(|name| is_exec_scope(name))
                    .map(move |name| dir.join(name))
            })
            .collect()
    }

    /// Removes the exec scopes no process is left in (`multihome exec` hands its process to
    /// the command and cannot do it itself); the paths removed. A scope whose `multihome exec`
    /// process still lives is not yet populated but about to be (it made the directory and is
    /// moving in): it stays. When that process ends (it became CMD), the scope's events wake
    /// the daemon again.
    pub(crate) fn collect_exec_scopes(&self) -> Vec<PathBuf> {
        self.exec_scopes()
            .into_iter()
            .filter(|scope| {
                !cgroup2::populated(scope)
                    && !exec_scope_pid(scope).is_some_and(process_lives)
                    && std::fs::remove_dir(scope).is_ok()
            })
            .collect()
    }
}

/// The process id an exec scope is named for.
fn exec_scope_pid(scope: &Path) -> Option<u32> {
    scope
        .file_name()?
        .to_str()?
        .strip_prefix(EXEC_SCOPE_PREFIX)?
        .strip_suffix(EXEC_SCOPE_SUFFIX)?
        .parse()
        .ok()
}

/// A zombie is dead: the scope empties when CMD exits, before its parent reaps it.
pub(crate) fn process_lives(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_some_and(|stat| running_state(&stat))
}

/// Whether a `/proc/PID/stat` line is a process's that has not exited (state after the
/// command's closing parenthesis: not Z, zombie, or X, dead).
fn running_state(stat: &str) -> bool {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| !matches!(state, "Z" | "X"))
}

/// The name of the scope `multihome exec` with process id `pid` makes.
pub(crate) fn exec_scope_name(pid: u32) -> String {
    format!("{EXEC_SCOPE_PREFIX}{pid}{EXEC_SCOPE_SUFFIX}")
}

fn is_exec_scope(name: &str) -> bool {
    exec_scope_pid(Path::new(name)).is_some()
}

/// What the steering map should hold: each slice of a configured uplink, with the uplink's mark.
pub(crate) fn wanted(config: &Config, slices: &BTreeMap<u64, String>) -> BTreeMap<u64, u32> {
    slices
        .iter()
        .filter_map(|(&id, uplink)| {
            let position = config.position(uplink)?;
            Some((id, mark_of_table(config.uplinks[position].table)))
        })
        .collect()
}

/// Brings the steering map to `wanted`: writes the entries that are missing or carry another
/// mark, then removes those not wanted. One log line per change.
pub(crate) fn sync(
    maps: &mut PinnedMaps,
    wanted: &BTreeMap<u64, u32>,
    slices: &BTreeMap<u64, String>,
) -> Result<()> {
    let have = maps.steered()?;
    for (&id, &mark) in wanted {
        if have.get(&id).map(|t| t.mark) != Some(mark) {
            maps.put_steered(id, mark)?;
            let uplink = slices.get(&id).map_or("?", String::as_str);
            log::info!(
                "steering: cgroup {id} ({}) -> {uplink}, mark {mark:#x}",
                cgroup2::slice_name(uplink)
            );
        }
    }
    for &id in have.keys().filter(|id| !wanted.contains_key(id)) {
        maps.remove_steered(id)?;
        log::info!("steering: cgroup {id} released");
    }
    Ok(())
}

/// The daemon's steering: the root, its attachment and the map, kept in line with the slices.
pub(crate) struct Steering {
    root: Root,
    pin_dir: PathBuf,
    uplinks: Vec<String>,
    config: Config,
    maps: PinnedMaps,
    watch: watch::Watch,
}

impl Steering {
    /// Creates the root and the configured uplinks' slices and attaches the steering program to
    /// the root: from here on every socket below the root is marked or refused. The slices are
    /// mapped by the first [`Self::refresh`], which the daemon runs once its first pass put the
    /// steering rules in place: until then their sockets are refused, never routed unsteered.
    pub(crate) fn start(
        config: &Config,
        root: Root,
        pin_dir: &Path,
        guard: &mut crate::guard::Guard,
    ) -> Result<Steering> {
        let uplinks: Vec<String> = config.uplinks.iter().map(|u| u.name.clone()).collect();
        // A kernel without the hook refuses the program before a directory is made.
        guard.load_steering()?;
        let existed = root.path.exists();
        let started = Self::attach(config, &root, pin_dir, guard, uplinks);
        if started.is_err() && !existed {
            // Nothing left behind by a steering that did not start.
            remove_tree(&root);
        }
        started
    }

    fn attach(
        config: &Config,
        root: &Root,
        pin_dir: &Path,
        guard: &mut crate::guard::Guard,
        uplinks: Vec<String>,
    ) -> Result<Steering> {
        root.prepare(uplinks.iter().map(String::as_str))?;
        let maps = PinnedMaps::open(pin_dir)?;
        let watch = watch::Watch::new(root).context("cannot watch the steering root")?;
        let steering = Steering {
            root: root.clone(),
            pin_dir: pin_dir.to_path_buf(),
            uplinks,
            config: config.clone(),
            maps,
            watch,
        };
        let id = steering.root.id()?;
        guard.attach_steering(&steering.root.path, id)?;
        log::info!(
            "steering: {} (cgroup {id}), one slice per uplink ({})",
            steering.root.path.display(),
            cgroup2::slice_name("UPLINK")
        );
        Ok(steering)
    }

    /// Waits until the tree below the root changed.
    pub(crate) async fn changed(&self) -> io::Result<()> {
        self.watch.changed().await
    }

    /// Looks at the tree again: slices removed by someone are created again, the root too (its
    /// removal leaves the program's link defunct: attached again), the map follows the slices,
    /// and emptied exec scopes go.
    pub(crate) fn refresh(&mut self, guard: &mut crate::guard::Guard) -> Result<()> {
        self.root.prepare(self.uplinks.iter().map(String::as_str))?;
        let id = self.root.id()?;
        if !crate::guard::steering::attached(&self.pin_dir, id) {
            log::warn!(
                "the steering program was not attached to {}: attaching again",
                self.root.path.display()
            );
            guard.attach_steering(&self.root.path, id)?;
        }
        self.map()?;
        for scope in self.root.collect_exec_scopes() {
            log::debug!("steering: removed the empty {}", scope.display());
        }
        self.watch.rewatch(&self.root);
        Ok(())
    }

    fn map(&mut self) -> Result<()> {
        let slices = self.root.slices();
        sync(&mut self.maps, &wanted(&self.config, &slices), &slices)
    }

    /// Ends the steering (shutdown without --keep-on-exit): the program is detached first, so
    /// that no socket is marked once the rules go; the empty exec scopes, slices and root are
    /// removed. A slice with processes stays, with a warning: they lose their steering.
    pub(crate) fn stop(self) -> Result<()> {
        for line in crate::guard::steering::detach_all(&self.pin_dir)? {
            log::debug!("removed {line}");
        }
        for removed in remove_tree(&self.root) {
            log::debug!("removed {}", removed.display());
        }
        Ok(())
    }
}

/// Removes the empty exec scopes, the uplink slices without processes and then the root if it
/// is empty; what it removed. What still holds processes stays (with a warning).
pub(crate) fn remove_tree(root: &Root) -> Vec<PathBuf> {
    let mut removed = root.collect_exec_scopes();
    for name in cgroup2::children(&root.path) {
        if cgroup2::uplink_of_slice(&name).is_none() {
            continue;
        }
        let slice = root.path.join(&name);
        if cgroup2::populated(&slice) {
            log::warn!(
                "{} still holds processes: they are no longer steered",
                slice.display()
            );
        } else if std::fs::remove_dir(&slice).is_ok() {
            removed.push(slice);
        }
    }
    if cgroup2::children(&root.path).is_empty() && std::fs::remove_dir(&root.path).is_ok() {
        removed.push(root.path.clone());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::config;

    #[test]
    fn each_configured_uplinks_slice_gets_its_mark() {
        let config = config(&["wan1", "wan2=7"]);
        let slices = BTreeMap::from([
            (10, "wan2".to_owned()),
            (11, "wan1".to_owned()),
            (12, "typo".to_owned()),
        ]);
        assert_eq!(
            wanted(&config, &slices),
            BTreeMap::from([(10, 0x6d68_0007), (11, 0x6d68_03e9)])
        );
    }

    #[test]
    fn a_zombie_no_longer_holds_its_exec_scope() {
        assert!(running_state("42 (multihome) S 1 42 42 0 -1"));
        assert!(running_state("42 (a) b) R 1"));
        assert!(!running_state("42 (curl) Z 1 42 42 0 -1"));
        assert!(!running_state("42 (x) X 1"));
        assert!(!running_state(""));
        assert!(process_lives(std::process::id()));
    }

    #[test]
    fn exec_scopes_are_named_for_their_pid() {
        assert_eq!(exec_scope_name(42), "exec-42.scope");
        assert!(is_exec_scope("exec-42.scope"));
        for other in [
            "exec-.scope",
            "exec-x.scope",
            "backup.service",
            "exec-42.slice",
        ] {
            assert!(!is_exec_scope(other), "{other}");
        }
    }
}
