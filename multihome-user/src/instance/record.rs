//! What a daemon writes into its lock file: who holds the claim, what it owns (its protocol and
//! pin directory) and what it left in the kernel when it ended. The next daemon's refusal quotes
//! it; `multihome cleanup --orphaned` (the unit's `OnFailure=`) reads it to remove what a daemon
//! left for a successor that never came.

use std::fmt;
use std::path::PathBuf;

/// The daemon's state as its record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// Running (or it ended without a word: a crash, SIGKILL): its objects are in the kernel.
    Running,
    /// Idle: nothing configured, nothing owned.
    Idle,
    /// Stopped for a restart or a shutdown, its objects left for the next instance to adopt.
    Kept,
    /// Stopped with `--keep-on-exit`: its objects left on purpose, for the operator.
    KeptOnPurpose,
    /// Stopped, everything it owned removed.
    Removed,
}

impl Left {
    const NAMES: [(Left, &'static str); 5] = [
        (Left::Running, "running"),
        (Left::Idle, "idle"),
        (Left::Kept, "kept-for-next-instance"),
        (Left::KeptOnPurpose, "kept-on-exit"),
        (Left::Removed, "removed"),
    ];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(left, _)| *left == self)
            .map_or("running", |(_, name)| name)
    }

    fn parse(name: &str) -> Option<Left> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(left, _)| *left)
    }

    /// Whether nobody is left to look after what this state leaves in the kernel once the
    /// daemon is gone: a crash's or a restart's objects, when no successor took them.
    pub(crate) fn orphans_objects(self) -> bool {
        matches!(self, Left::Running | Left::Kept)
    }
}

/// The lock file's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) protocol: u8,
    pub(crate) pin_dir: PathBuf,
    pub(crate) left: Left,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pid {}", self.pid)?;
        writeln!(f, "uid {}", self.uid)?;
        writeln!(f, "protocol {}", self.protocol)?;
        writeln!(f, "pin-dir {}", self.pin_dir.display())?;
        writeln!(f, "state {}", self.left.name())
    }
}

impl Record {
    /// Reads a record back; `None` for anything else (an empty file, a torn write).
    pub(crate) fn parse(text: &str) -> Option<Record> {
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        };
        Some(Record {
            pid: field("pid")?.parse().ok()?,
            uid: field("uid")?.parse().ok()?,
            protocol: field("protocol")?.parse().ok()?,
            pin_dir: PathBuf::from(field("pin-dir")?),
            left: Left::parse(field("state")?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        for (left, _) in Left::NAMES {
            let record = Record {
                pid: 41,
                uid: 0,
                protocol: 77,
                pin_dir: PathBuf::from("/sys/fs/bpf/multihome"),
                left,
            };
            assert_eq!(Record::parse(&record.to_string()), Some(record));
        }
        assert_eq!(Record::parse(""), None);
        assert_eq!(Record::parse("pid 4\nuid 0\n"), None);
    }

    #[test]
    fn only_a_crash_or_an_unclaimed_hand_over_orphans_objects() {
        let orphaning: Vec<Left> = Left::NAMES
            .iter()
            .map(|(left, _)| *left)
            .filter(|left| left.orphans_objects())
            .collect();
        assert_eq!(orphaning, [Left::Running, Left::Kept]);
    }
}
