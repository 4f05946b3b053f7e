//! The VM tier's matrix: which kernels it boots on which architectures, and what the guard must
//! do there. A cell is a kernel line on one architecture; everything the tier does for a cell
//! (fetch, initramfs, boot, expectations) is derived from this description, by one code path.

use anyhow::{bail, Result};

use super::apt::Suite;
use crate::arch::Arch;

/// How the guard attaches to a device's egress on a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attach {
    /// A TCX link (6.6 and later).
    Tcx,
    /// A cls_bpf filter on the clsact qdisc.
    Clsact,
}

impl Attach {
    /// As `multihome status` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Attach::Tcx => "tcx",
            Attach::Clsact => "clsact",
        }
    }
}

/// Which ABI of the line stands in when the pinned one can no longer be downloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The newest: the line's current kernel.
    Newest,
    /// The oldest still offered: the line's early point releases are what this one is for.
    Oldest,
}

/// A Debian kernel line, pinned to one ABI.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// What `cargo xtask vm --kernel` calls it.
    pub(crate) name: &'static str,
    pub(crate) suite: Suite,
    /// The pinned ABI without its flavour: the package is `linux-image-<pin>-<arch>`.
    pub(crate) pin: &'static str,
    /// Every ABI of the line starts with this.
    pub(crate) prefix: &'static str,
    pub(crate) fallback: Fallback,
    pub(crate) attach: Attach,
    /// The release whose user space the guest runs (`userspace`).
    pub(crate) userspace: Suite,
}

/// The kernel lines, oldest first. Pins are the current packages of Debian's archive (checked
/// when they were set); 5.10.0-30 is the point release whose verifier refused the guard's
/// reads of uninitialised stack (issue 13), which 5.10.0-32 accepted. Debian 11's cells run
/// Debian 11's user space (glibc 2.31, iproute2 5.10, bpftool 5.10), the oldest system the
/// package supports, whole; the others Debian 13's, whose tools know TCX as well as clsact.
pub(crate) const LINES: &[Line] = &[
    Line {
        name: "5.10-early",
        suite: Suite::Bullseye,
        pin: "5.10.0-30",
        prefix: "5.10.0-",
        fallback: Fallback::Oldest,
        attach: Attach::Clsact,
        userspace: Suite::Bullseye,
    },
    Line {
        name: "5.10",
        suite: Suite::Bullseye,
        pin: "5.10.0-46",
        prefix: "5.10.0-",
        fallback: Fallback::Newest,
        attach: Attach::Clsact,
        userspace: Suite::Bullseye,
    },
    Line {
        name: "6.1",
        suite: Suite::Bookworm,
        pin: "6.1.0-57",
        prefix: "6.1.0-",
        fallback: Fallback::Newest,
        attach: Attach::Clsact,
        userspace: Suite::Trixie,
    },
    Line {
        name: "6.12",
        suite: Suite::Trixie,
        pin: "6.12.118+deb13",
        prefix: "6.12.",
        fallback: Fallback::Newest,
        attach: Attach::Tcx,
        userspace: Suite::Trixie,
    },
];

/// What `cargo xtask test` runs: every line on amd64, and arm64 on Debian 12's 6.1 (clsact)
/// and Debian 13's 6.12 (TCX; the line Raspberry Pi OS ships).
pub(crate) const MATRIX: &[(&str, Arch)] = &[
    ("5.10-early", Arch::Amd64),
    ("5.10", Arch::Amd64),
    ("6.1", Arch::Amd64),
    ("6.12", Arch::Amd64),
    ("6.1", Arch::Arm64),
    ("6.12", Arch::Arm64),
];

/// One kernel line booted on one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    pub(crate) line: &'static Line,
    pub(crate) arch: Arch,
}

impl Cell {
    /// `6.1/arm64`.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.line.name, self.arch)
    }

    /// A file-name-safe form of the name, for the cell's work directory.
    pub(crate) fn slug(&self) -> String {
        format!("{}-{}", self.line.name, self.arch)
    }

    /// The pinned ABI, `5.10.0-30-amd64`.
    pub(crate) fn pinned_abi(&self) -> String {
        format!("{}-{}", self.line.pin, self.arch)
    }
}

fn line(name: &str) -> Result<&'static Line> {
    match LINES.iter().find(|l| l.name == name) {
        Some(line) => Ok(line),
        None => {
            let names: Vec<&str> = LINES.iter().map(|l| l.name).collect();
            bail!(
                "vm: no kernel line {name:?}: choose one of {}",
                names.join(", ")
            )
        }
    }
}

/// The cells to run: the whole matrix without a choice, else the one cell chosen (the kernel
/// defaults to Debian 12's 6.1, the architecture to the host's).
pub(crate) fn select(kernel: Option<&str>, arch: Option<Arch>) -> Result<Vec<Cell>> {
    if kernel.is_none() && arch.is_none() {
        return MATRIX
            .iter()
            .map(|&(name, arch)| {
                Ok(Cell {
                    line: line(name)?,
                    arch,
                })
            })
            .collect();
    }
    Ok(vec![Cell {
        line: line(kernel.unwrap_or("6.1"))?,
        arch: arch.unwrap_or_else(Arch::host),
    }])
}

/// The ABI that stands in for `cell`'s pin among the package names apt offers, `None` when apt
/// offers none of the line. Only the plain flavour counts (`-cloud-`, `-rt-`, `-unsigned`, `-dbg`
/// packages are other kernels); ABIs are ordered by their numbers (`6.12.115+deb13.1` after
/// `6.12.115+deb13`, `5.10.0-100` after `5.10.0-99`).
pub(crate) fn stand_in(cell: &Cell, names: &[String]) -> Option<String> {
    let suffix = format!("-{}", cell.arch);
    let mut abis: Vec<(Vec<u64>, String)> = names
        .iter()
        .filter_map(|n| n.strip_prefix("linux-image-"))
        .filter_map(|abi| {
            let middle = abi.strip_prefix(cell.line.prefix)?.strip_suffix(&suffix)?;
            (!middle.is_empty() && !middle.contains('-'))
                .then(|| (numbers(middle), abi.to_string()))
        })
        .collect();
    abis.sort();
    match cell.line.fallback {
        Fallback::Newest => abis.pop(),
        Fallback::Oldest => abis.into_iter().next(),
    }
    .map(|(_, abi)| abi)
}

/// The runs of digits in `s`, as numbers.
fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
        .filter_map(|run| run.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| format!("linux-image-{n}")).collect()
    }

    fn cell(line_name: &str, arch: Arch) -> Cell {
        Cell {
            line: line(line_name).unwrap(),
            arch,
        }
    }

    #[test]
    fn the_matrix_covers_every_line_on_amd64_and_arm64() {
        let cells = select(None, None).unwrap();
        assert_eq!(cells.len(), MATRIX.len());
        for line in LINES {
            assert!(cells
                .iter()
                .any(|c| c.line == line && c.arch == Arch::Amd64));
        }
        for attach in [Attach::Tcx, Attach::Clsact] {
            assert!(cells
                .iter()
                .any(|c| c.arch == Arch::Arm64 && c.line.attach == attach));
        }
        // TCX (6.6+) and clsact are both exercised.
        assert!(cells.iter().any(|c| c.line.attach == Attach::Tcx));
        assert!(cells.iter().any(|c| c.line.attach == Attach::Clsact));
        // The package's floor, Debian 11, is tested on its own user space.
        assert!(cells
            .iter()
            .any(|c| c.line.userspace == Suite::Bullseye && c.arch == Arch::Amd64));
        let slugs: std::collections::BTreeSet<String> = cells.iter().map(Cell::slug).collect();
        assert_eq!(slugs.len(), cells.len(), "work directories are distinct");
    }

    #[test]
    fn a_choice_gives_one_cell_with_defaults() {
        let cells = select(Some("6.12"), None).unwrap();
        assert_eq!(cells.len(), 1);
        assert_eq!(
            cells[0].pinned_abi(),
            format!("6.12.118+deb13-{}", Arch::host())
        );
        let cells = select(None, Some(Arch::Arm64)).unwrap();
        assert_eq!(cells[0].name(), "6.1/arm64");
        assert_eq!(cells[0].pinned_abi(), "6.1.0-57-arm64");
        let err = select(Some("4.19"), None).unwrap_err().to_string();
        assert!(err.contains("5.10-early, 5.10, 6.1, 6.12"), "{err}");
    }

    #[test]
    fn the_stand_in_is_the_newest_or_the_oldest_plain_abi_of_the_line() {
        let apt = names(&[
            "5.10.0-9-amd64",
            "5.10.0-30-amd64",
            "5.10.0-100-amd64",
            "5.10.0-101-cloud-amd64",
            "5.10.0-102-rt-amd64",
            "5.10.0-103-amd64-unsigned",
            "5.10.0-104-arm64",
            "6.1.0-57-amd64",
        ]);
        let newest = cell("5.10", Arch::Amd64);
        assert_eq!(stand_in(&newest, &apt).as_deref(), Some("5.10.0-100-amd64"));
        let early = cell("5.10-early", Arch::Amd64);
        assert_eq!(stand_in(&early, &apt).as_deref(), Some("5.10.0-9-amd64"));
        let arm = cell("5.10", Arch::Arm64);
        assert_eq!(stand_in(&arm, &apt).as_deref(), Some("5.10.0-104-arm64"));
        assert_eq!(stand_in(&newest, &names(&["6.1.0-57-amd64"])), None);
    }

    #[test]
    fn trixie_abis_order_by_upstream_version_then_revision() {
        let apt = names(&[
            "6.12.96+deb13-amd64",
            "6.12.115+deb13-amd64",
            "6.12.115+deb13.1-amd64",
            "6.12.118+deb13-cloud-amd64",
            "6.12.100+deb13-amd64",
        ]);
        assert_eq!(
            stand_in(&cell("6.12", Arch::Amd64), &apt).as_deref(),
            Some("6.12.115+deb13.1-amd64")
        );
    }
}
