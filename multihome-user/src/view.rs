//! `KernelView`: what multihome knows of the kernel's links, addresses, routes and rules, in
//! plain types free of netlink. `observe` fills it from dumps and events; `plan` reads it.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Routing protocol numbers the kernel gives special meaning to (rtnetlink.h).
pub const RTPROT_KERNEL: u8 = 2;

/// Well-known table ids a configuration may not use.
pub const RT_TABLE_UNSPEC: u32 = 0;
pub const RT_TABLE_DEFAULT: u32 = 253;
pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// How a child device is recognised on its parent's wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    /// An 802.1Q child: frames carry its VLAN id.
    Vlan(u16),
    /// A MAC-based child (macvlan, macvtap): frames carry its MAC as source.
    Macvlan,
    /// Anything else (veth, physical NIC, ...).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// Administratively up (IFF_UP): the kernel only routes through a device that is up.
    pub up: bool,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// The parent device (IFLA_LINK), when it is in this namespace.
    pub lower: Option<u32>,
    pub kind: LinkKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AddressFlags {
    /// IPv6 duplicate address detection has not finished: not usable yet.
    pub tentative: bool,
    pub dad_failed: bool,
    /// Preferred lifetime over: kept, existing flows still use it.
    pub deprecated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub flags: AddressFlags,
}

/// A unicast route. Other route types (blackhole, local, ...) never matter to multihome and are
/// left out of the view, except that a table holding them is still someone else's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub table: u32,
    pub protocol: u8,
    pub dst: IpAddr,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    /// The metric (RTA_PRIORITY).
    pub metric: u32,
    /// RT_SCOPE_UNIVERSE (0) or RT_SCOPE_LINK (253).
    pub scope: u8,
}

impl Route {
    pub fn family(&self) -> Family {
        Family::of(&self.dst)
    }

    pub fn is_default(&self) -> bool {
        self.dst_len == 0
    }
}

/// A routing policy rule, reduced to the selectors multihome uses. `other_selectors` marks a rule
/// that also matches on something else (fwmark, iif, dport, ...): never one of ours as we make them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub protocol: u8,
    pub src: Option<(IpAddr, u8)>,
    pub oif: Option<String>,
    /// The table looked up, when the action is "lookup table"; `None` for other actions.
    pub table: Option<u32>,
    pub other_selectors: bool,
}

/// The kernel's state as far as multihome cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelView {
    pub links: BTreeMap<u32, Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
}

impl KernelView {
    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }
}

/// One change the kernel announced, already translated from netlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    NewLink(Link),
    DelLink(u32),
    NewAddress(Address),
    DelAddress(Address),
    NewRoute(Route),
    DelRoute(Route),
    NewRule(Rule),
    DelRule(Rule),
}
