//! Guard entries of released addresses stay a moment longer. DHCP clients reconfigure by
//! dropping an address and adding it back tens of milliseconds later (systemd-networkd does so
//! on every `networkctl reconfigure`); if the entry went with the address, packets sent in the
//! millisecond between the address's return and the daemon's reaction would pass unguarded. A
//! lingering entry redirects (or, with no route left on its uplink, drops) them instead: never
//! a leak through another uplink. Rules and routes are not held back: they follow the kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::model::{Op, State};

/// Long enough for a client's drop-and-re-add, short enough that a released address does not
/// stay guarded noticeably.
pub const LINGER: Duration = Duration::from_secs(2);

/// Released addresses whose entry removal is held back, with when it becomes due.
#[derive(Clone, Debug, Default)]
pub(crate) struct Linger {
    due: BTreeMap<IpAddr, Instant>,
}

impl Linger {
    /// The ops to apply now: `DelEntry` of an address released less than `LINGER` ago is held
    /// back; an address that is wanted again stops lingering.
    pub(crate) fn hold_back(&mut self, ops: Vec<Op>, desired: &State, now: Instant) -> Vec<Op> {
        self.due
            .retain(|addr, _| !desired.entries.contains_key(addr));
        ops.into_iter()
            .filter(|op| {
                let Op::DelEntry(addr) = op else {
                    return true;
                };
                let due = *self.due.entry(*addr).or_insert(now + LINGER);
                if due <= now {
                    self.due.remove(addr);
                    true
                } else {
                    false
                }
            })
            .collect()
    }

    /// When the next held-back removal becomes due, so the daemon wakes for it (and only then).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::rule;

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entry() -> multihome_ebpf::Egress {
        crate::fixtures::egress(12)
    }

    #[test]
    fn a_released_entry_goes_only_after_the_linger() {
        let t0 = Instant::now();
        let mut linger = Linger::default();
        let gone = addr("192.168.0.20");
        let ops = vec![Op::DelRule(rule("192.168.0.20", 1002)), Op::DelEntry(gone)];
        let now = linger.hold_back(ops.clone(), &State::default(), t0);
        assert_eq!(
            now,
            vec![Op::DelRule(rule("192.168.0.20", 1002))],
            "the rule goes at once, the entry waits"
        );
        assert_eq!(linger.deadline(), Some(t0 + LINGER));
        let early = linger.hold_back(vec![Op::DelEntry(gone)], &State::default(), t0 + LINGER / 2);
        assert!(early.is_empty());
        assert_eq!(
            linger.deadline(),
            Some(t0 + LINGER),
            "the deadline is not pushed back"
        );
        let due = linger.hold_back(vec![Op::DelEntry(gone)], &State::default(), t0 + LINGER);
        assert_eq!(due, vec![Op::DelEntry(gone)]);
        assert_eq!(linger.deadline(), None);
    }

    #[test]
    fn an_address_that_returns_stops_lingering() {
        let t0 = Instant::now();
        let mut linger = Linger::default();
        let back = addr("192.168.0.20");
        linger.hold_back(vec![Op::DelEntry(back)], &State::default(), t0);
        let mut desired = State::default();
        desired.entries.insert(back, entry());
        let ops = linger.hold_back(vec![Op::PutEntry(back, entry())], &desired, t0);
        assert_eq!(ops, vec![Op::PutEntry(back, entry())]);
        assert_eq!(linger.deadline(), None);
        // Released again later: a fresh linger, not the old deadline.
        let later = t0 + 10 * LINGER;
        assert!(linger
            .hold_back(vec![Op::DelEntry(back)], &State::default(), later)
            .is_empty());
        assert_eq!(linger.deadline(), Some(later + LINGER));
    }
}
