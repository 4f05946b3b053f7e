//! The kernel's objects as multihome sees them (links, addresses, unicast routes, rules) and the
//! notifications that change them, in plain types free of netlink.

use std::fmt;
use std::net::IpAddr;

/// Route scopes (rtnetlink.h): multihome's routes use these two.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;

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

    /// The kernel's identity of a route in a table: what a replace (NLM_F_REPLACE) overwrites
    /// and what a delete names.
    pub fn slot(&self) -> (u32, Family, IpAddr, u8, u32) {
        (
            self.table,
            self.family(),
            self.dst,
            self.dst_len,
            self.metric,
        )
    }
}

/// A routing policy rule, reduced to the selectors and actions multihome uses. `other_selectors`
/// marks a rule that also matches on something else (iif, dport, tos, ...) or does something
/// else (goto, suppress_ifgroup, ...): never one of ours as we make them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub protocol: u8,
    pub src: Option<(IpAddr, u8)>,
    pub oif: Option<String>,
    /// `fwmark MARK/MASK`: the socket's (or packet's) mark, masked, equals MARK.
    pub fwmark: Option<(u32, u32)>,
    /// The table looked up, when the action is "lookup table"; `None` for other actions.
    pub table: Option<u32>,
    /// `suppress_prefixlength N`: a lookup's result is ignored when its prefix is N bits or
    /// shorter (0: the table's default route is).
    pub suppress_prefix_len: Option<u8>,
    /// The action is `unreachable` (the lookup fails with ENETUNREACH); `table` is then `None`.
    pub unreachable: bool,
    pub other_selectors: bool,
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

/// `ip route` style, with `ifN` for a device (names live in the view, not in the route).
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_default() {
            f.write_str("default")?;
        } else {
            write!(f, "{}/{}", self.dst, self.dst_len)?;
        }
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev if{oif}")?;
        }
        write!(f, " table {} proto {}", self.table, self.protocol)?;
        if self.scope == RT_SCOPE_LINK {
            f.write_str(" scope link")?;
        }
        if let Some(prefsrc) = self.prefsrc {
            write!(f, " src {prefsrc}")?;
        }
        write!(f, " metric {}", self.metric)
    }
}

/// `ip rule` style, prefixed by the family (`from all` alone does not tell it).
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = match self.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        write!(f, "{family} rule {}: from ", self.priority)?;
        match self.src {
            Some((addr, len)) => write!(f, "{addr}/{len}")?,
            None => f.write_str("all")?,
        }
        if let Some(oif) = &self.oif {
            write!(f, " oif {oif}")?;
        }
        match self.fwmark {
            Some((mark, u32::MAX)) => write!(f, " fwmark {mark:#x}")?,
            Some((mark, mask)) => write!(f, " fwmark {mark:#x}/{mask:#x}")?,
            None => {}
        }
        if self.other_selectors {
            f.write_str(" (and other selectors)")?;
        }
        match (self.table, self.unreachable) {
            (Some(table), _) => write!(f, " lookup {table}")?,
            (None, true) => f.write_str(" unreachable")?,
            (None, false) => f.write_str(" (not a lookup)")?,
        }
        if let Some(len) = self.suppress_prefix_len {
            write!(f, " suppress_prefixlength {len}")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    #[test]
    fn displays() {
        let ours = Route {
            table: 1002,
            protocol: 77,
            ..client_default(WAN2, "192.168.0.1", 0)
        };
        let cases: Vec<(String, &str)> = vec![
            (
                ours.to_string(),
                "default via 192.168.0.1 dev if12 table 1002 proto 77 metric 0",
            ),
            (
                kernel_prefix(WAN1, "192.168.0.0/24", "192.168.0.100").to_string(),
                "192.168.0.0/24 dev if11 table 254 proto 2 scope link src 192.168.0.100 metric 0",
            ),
            (
                rule("192.168.0.101", 1002).to_string(),
                "ipv4 rule 1000: from 192.168.0.101/32 lookup 1002 proto 77",
            ),
            (
                Rule {
                    family: Family::V6,
                    src: None,
                    oif: Some("wan".into()),
                    table: None,
                    other_selectors: true,
                    ..rule("192.168.0.101", 1002)
                }
                .to_string(),
                "ipv6 rule 1000: from all oif wan (and other selectors) (not a lookup) proto 77",
            ),
            (
                Rule {
                    src: None,
                    fwmark: Some((0x6d68_03ea, u32::MAX)),
                    suppress_prefix_len: Some(0),
                    ..rule("192.168.0.101", 1002)
                }
                .to_string(),
                "ipv4 rule 1000: from all fwmark 0x6d6803ea lookup 1002 suppress_prefixlength 0 \
                 proto 77",
            ),
            (
                Rule {
                    src: None,
                    fwmark: Some((0x6d68_0000, 0xffff_0000)),
                    table: None,
                    unreachable: true,
                    ..rule("192.168.0.101", 1002)
                }
                .to_string(),
                "ipv4 rule 1000: from all fwmark 0x6d680000/0xffff0000 unreachable proto 77",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
