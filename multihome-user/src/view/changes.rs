//! What an event changed in the view, in the terms the reconciler acts on: where to plan again
//! (`Touched`) and which routes to dump again first (`Redump`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::{Address, Family, Route, Rule};

/// What an event means to the daemon beyond the view itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// What changed in the view: where to plan and diff again.
    pub touched: Touched,
    /// Routes the kernel may have changed without announcing it (a device deleted or down:
    /// its IPv4 routes; an address removed: IPv4 routes using it as source are deleted, IPv6
    /// ones lose it as source): dump them again before trusting the view.
    pub redump: Redump,
}

/// Routes to dump again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Redump {
    #[default]
    Nothing,
    /// The routes of these tables, of this family.
    Tables(BTreeSet<(Family, u32)>),
    /// Every route.
    All,
}

impl Redump {
    pub fn merge(&mut self, other: Redump) {
        match (&mut *self, other) {
            (Redump::All, _) | (_, Redump::Nothing) => {}
            (Redump::Tables(ours), Redump::Tables(theirs)) => ours.extend(theirs),
            (_, other) => *self = other,
        }
    }

    /// Whether a dump of what this names lists `route` if it is in the kernel.
    pub fn covers(&self, route: &Route) -> bool {
        match self {
            Redump::Nothing => false,
            Redump::Tables(tables) => tables.contains(&(route.family(), route.table)),
            Redump::All => true,
        }
    }
}

/// What changed in the view, in the terms a pass uses to find the uplinks concerned: the
/// devices, addresses and tables involved, old and new (a route replaced in its slot may have
/// moved to another device or protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// A device appeared, went or changed (name, state, MTU, parent, ...), or the daemon has to
    /// look at everything anyway: which uplinks are present, what they are attached to and
    /// which addresses they hold may all have changed.
    pub all: bool,
    /// Devices whose addresses, or routes through them, changed.
    pub devices: BTreeSet<u32>,
    /// Addresses that appeared, went or changed: every uplink holding one may win or lose it.
    pub addresses: BTreeSet<IpAddr>,
    /// Tables in which a route or rule changed (`None`: a rule that is not a lookup), with the
    /// protocol the route or rule carries.
    pub tables: BTreeSet<(Option<u32>, u8)>,
}

impl Touched {
    /// Everything: for a full pass.
    pub fn all() -> Touched {
        Touched {
            all: true,
            ..Touched::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Touched::default()
    }

    pub fn merge(&mut self, other: Touched) {
        self.all |= other.all;
        self.devices.extend(other.devices);
        self.addresses.extend(other.addresses);
        self.tables.extend(other.tables);
    }

    pub(super) fn address(&mut self, address: &Address) {
        self.devices.insert(address.ifindex);
        self.addresses.insert(address.addr);
    }

    pub(super) fn route(&mut self, route: &Route) {
        self.tables.insert((Some(route.table), route.protocol));
        self.devices.extend(route.oif);
    }

    pub(super) fn rule(&mut self, rule: &Rule) {
        self.tables.insert((rule.table, rule.protocol));
    }
}
