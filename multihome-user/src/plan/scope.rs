//! Which uplinks a pass looks at, from what an event changed.

use std::collections::BTreeSet;

use super::lower_of;
use crate::config::Config;
use crate::view::{KernelView, Touched};

/// The uplinks a pass looks at. A full pass plans every uplink and owns everything that
/// carries multihome's protocol: at start, after lost notifications or a failed operation, on
/// the watchdog's audit, and when a device changed. An address, route or rule event concerns
/// the few uplinks it touched, and a pass over those alone costs the same with 2 uplinks or 256
/// (a full pass with 256 uplinks took ~0.7 ms of planning and diffing for one address change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    /// Some uplinks (positions in the configuration) with their tables, and for those present,
    /// their devices and the devices the guard sits on for them (the device and its parent).
    Uplinks {
        positions: BTreeSet<usize>,
        tables: Few,
        devices: Few,
        guarded: Few,
    },
}

impl Scope {
    /// The uplinks concerned by what changed: those whose table or device it involves, and every
    /// uplink holding an address that changed (the first of them wins it). A route or rule of
    /// multihome's outside the configured uplinks' tables (an earlier configuration's) needs the
    /// full pass, which is the one that removes it.
    pub(crate) fn of(config: &Config, view: &KernelView, touched: &Touched) -> Scope {
        if touched.all {
            return Scope::All;
        }
        let mut positions = BTreeSet::new();
        for &(table, protocol) in &touched.tables {
            match table.and_then(|table| config.table_position(table)) {
                Some(position) => {
                    positions.insert(position);
                }
                None if protocol == config.protocol => return Scope::All,
                None => {}
            }
        }
        let position_of = |ifindex: &u32| {
            view.links
                .get(ifindex)
                .and_then(|link| config.position(&link.name))
        };
        positions.extend(touched.devices.iter().filter_map(position_of));
        if !touched.addresses.is_empty() {
            positions.extend(
                view.addresses
                    .iter()
                    .filter(|a| touched.addresses.contains(&a.addr))
                    .filter_map(|a| position_of(&a.ifindex)),
            );
        }
        let mut tables = Few::default();
        let mut devices = Few::default();
        let mut guarded = Few::default();
        for &position in &positions {
            let uplink = &config.uplinks[position];
            tables.insert(uplink.table);
            if let Some(link) = view.link_by_name(&uplink.name) {
                devices.insert(link.ifindex);
                guarded.insert(link.ifindex);
                guarded.extend(lower_of(view, link).map(|lower| lower.ifindex));
            }
        }
        Scope::Uplinks {
            positions,
            tables,
            devices,
            guarded,
        }
    }

    /// No uplink: nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Scope::Uplinks { positions, .. } if positions.is_empty())
    }

    /// The positions of the uplinks in the scope, in configuration order.
    pub(super) fn positions(&self, config: &Config) -> Vec<usize> {
        match self {
            Scope::All => (0..config.uplinks.len()).collect(),
            Scope::Uplinks { positions, .. } => positions.iter().copied().collect(),
        }
    }

    /// Whether the uplink named `name` is in the scope.
    pub(crate) fn has_uplink(&self, config: &Config, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Uplinks { positions, .. } => config
                .position(name)
                .is_some_and(|p| positions.contains(&p)),
        }
    }

    /// Whether a route or rule in `table` (`None`: a rule that is not a lookup) is the scope's.
    pub(crate) fn has_table(&self, table: Option<u32>) -> bool {
        match self {
            Scope::All => true,
            Scope::Uplinks { tables, .. } => table.is_some_and(|table| tables.contains(&table)),
        }
    }

    pub(crate) fn has_device(&self, ifindex: u32) -> bool {
        match self {
            Scope::All => true,
            Scope::Uplinks { devices, .. } => devices.contains(&ifindex),
        }
    }
}

/// A few numbers (tables, ifindexes), sorted: a pass checks every route and address of the
/// view against them, and a binary search in a short slice is cheaper than a tree's search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Few(Vec<u32>);

impl Few {
    fn insert(&mut self, n: u32) {
        if let Err(at) = self.0.binary_search(&n) {
            self.0.insert(at, n);
        }
    }

    fn extend(&mut self, ns: impl IntoIterator<Item = u32>) {
        for n in ns {
            self.insert(n);
        }
    }

    fn contains(&self, n: &u32) -> bool {
        self.0.binary_search(n).is_ok()
    }

    /// The numbers, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}
