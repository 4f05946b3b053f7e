//! Pure translation between netlink-packet-route messages and the plain `model` types, both ways.
//!
//! Kernel -> view drops what the view cannot carry exactly (non-unicast, multipath, nexthop-object,
//! source-specific or TOS routes; non-IP families) instead of approximating it: an approximated
//! route could be mistaken for one of ours, or deleted by a request that matches something else.
//! View -> kernel builds messages that, dumped back, translate to the very same value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::address::{
    AddressAttribute, AddressFlags as NlAddressFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType, RouteVia,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::model::{Address, AddressFlags, Event, Family, Link, LinkKind, Route, Rule};

/// The kernel's "unset" value for a rule's suppress_prefixlength and suppress_ifgroup.
const RULE_SUPPRESS_UNSET: u32 = u32::MAX;

fn family(af: AddressFamily) -> Option<Family> {
    match af {
        AddressFamily::Inet => Some(Family::V4),
        AddressFamily::Inet6 => Some(Family::V6),
        _ => None,
    }
}

pub(super) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Translates one multicast message; `None` for messages the view has no place for.
pub(crate) fn event(msg: RouteNetlinkMessage) -> Option<Event> {
    match msg {
        RouteNetlinkMessage::NewLink(m) => link(&m).map(Event::NewLink),
        // Only the index is needed (and a dying link's attributes may be partial).
        RouteNetlinkMessage::DelLink(m) if m.header.interface_family == AddressFamily::Unspec => {
            Some(Event::DelLink(m.header.index))
        }
        RouteNetlinkMessage::NewAddress(m) => address(&m).map(Event::NewAddress),
        RouteNetlinkMessage::DelAddress(m) => address(&m).map(Event::DelAddress),
        RouteNetlinkMessage::NewRoute(m) => route(&m).map(Event::NewRoute),
        RouteNetlinkMessage::DelRoute(m) => route(&m).map(Event::DelRoute),
        RouteNetlinkMessage::NewRule(m) => rule(&m).map(Event::NewRule),
        RouteNetlinkMessage::DelRule(m) => rule(&m).map(Event::DelRule),
        _ => None,
    }
}

/// A link as RTM_NEWLINK describes it. Bridge-port messages (AF_BRIDGE, also sent to
/// RTNLGRP_LINK) and nameless messages are not links of their own.
pub(crate) fn link(msg: &LinkMessage) -> Option<Link> {
    if msg.header.interface_family != AddressFamily::Unspec {
        return None;
    }
    let mut name = None;
    let mut mtu = 0;
    let mut mac = [0u8; 6];
    let mut iflink = None;
    let mut other_netns = false;
    let mut kind = LinkKind::Other;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::Address(a) if a.len() == 6 => mac.copy_from_slice(a),
            LinkAttribute::Link(l) => iflink = Some(*l),
            LinkAttribute::LinkNetNsId(_) => other_netns = true,
            LinkAttribute::LinkInfo(infos) => kind = link_kind(infos),
            _ => {}
        }
    }
    Some(Link {
        ifindex: msg.header.index,
        name: name?,
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu,
        mac,
        // IFLA_LINK is an ifindex of the namespace named by IFLA_LINK_NETNSID when that is present.
        lower: iflink.filter(|&l| l != 0 && !other_netns),
        kind,
    })
}

fn link_kind(infos: &[LinkInfo]) -> LinkKind {
    let kind = infos.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    });
    match kind {
        Some(InfoKind::Vlan) => infos
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Vlan(data)) => data.iter().find_map(|d| match d {
                    InfoVlan::Id(id) => Some(LinkKind::Vlan(*id)),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap_or(LinkKind::Other),
        Some(InfoKind::MacVlan | InfoKind::MacVtap) => LinkKind::Macvlan,
        _ => LinkKind::Other,
    }
}

/// An IPv4 or IPv6 address. IFA_LOCAL is the local address when present (IPv4 always; IPv6 with a
/// peer), IFA_ADDRESS otherwise; IFA_FLAGS (32 bits) supersedes the header's 8-bit flags.
pub(crate) fn address(msg: &AddressMessage) -> Option<Address> {
    family(msg.header.family)?;
    let mut local = None;
    let mut addr = None;
    let mut flags = NlAddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => addr = Some(*a),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    Some(Address {
        ifindex: msg.header.index,
        addr: local.or(addr)?,
        prefix_len: msg.header.prefix_len,
        flags: AddressFlags {
            tentative: flags.contains(NlAddressFlags::Tentative),
            dad_failed: flags.contains(NlAddressFlags::Dadfailed),
            deprecated: flags.contains(NlAddressFlags::Deprecated),
        },
    })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn via_addr(v: &RouteVia) -> Option<IpAddr> {
    match v {
        RouteVia::Inet(a) => Some(IpAddr::V4(*a)),
        RouteVia::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A unicast route of one next hop; `None` for anything the view cannot carry exactly.
pub(crate) fn route(msg: &RouteMessage) -> Option<Route> {
    let h = &msg.header;
    let family = family(h.address_family)?;
    if h.kind != RouteType::Unicast || h.source_prefix_length != 0 || h.tos != 0 {
        return None;
    }
    let mut r = Route {
        table: u32::from(h.table),
        protocol: h.protocol.into(),
        dst: unspecified(family),
        dst_len: h.destination_prefix_length,
        gateway: None,
        oif: None,
        prefsrc: None,
        metric: 0,
        scope: h.scope.into(),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Destination(a) => r.dst = route_addr(a)?,
            RouteAttribute::Gateway(a) => r.gateway = Some(route_addr(a)?),
            RouteAttribute::Via(v) => r.gateway = Some(via_addr(v)?),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(a) => r.prefsrc = Some(route_addr(a)?),
            RouteAttribute::Priority(p) => r.metric = *p,
            RouteAttribute::MultiPath(_) | RouteAttribute::NhId(_) | RouteAttribute::Source(_) => {
                return None
            }
            _ => {}
        }
    }
    (Family::of(&r.dst) == family).then_some(r)
}

/// A routing rule. `other_selectors` is set by any selector or action besides
/// `from`/`oif`/`fwmark`/`lookup`/`suppress_prefixlength`/`unreachable`, so that such a rule is
/// never taken for one of ours.
pub(crate) fn rule(msg: &RuleMessage) -> Option<Rule> {
    let h = &msg.header;
    let mut r = Rule {
        family: family(h.family)?,
        priority: 0,
        protocol: 0,
        src: None,
        oif: None,
        fwmark: None,
        table: None,
        suppress_prefix_len: None,
        unreachable: h.action == RuleAction::Unreachable,
        other_selectors: h.dst_len != 0
            || h.tos != 0
            || h.flags.contains(RuleFlags::Invert)
            || h.action == RuleAction::Goto,
    };
    let mut table = u32::from(h.table);
    let (mut mark, mut mask) = (0, None);
    for attr in &msg.attributes {
        let other = match attr {
            RuleAttribute::Priority(p) => {
                r.priority = *p;
                false
            }
            RuleAttribute::Protocol(p) => {
                r.protocol = (*p).into();
                false
            }
            RuleAttribute::Source(a) => {
                r.src = Some((*a, h.src_len));
                false
            }
            RuleAttribute::Oifname(n) => {
                r.oif = Some(n.clone());
                false
            }
            RuleAttribute::Table(t) => {
                table = *t;
                false
            }
            RuleAttribute::FwMark(v) => {
                mark = *v;
                false
            }
            RuleAttribute::FwMask(v) => {
                mask = Some(*v);
                false
            }
            RuleAttribute::SuppressPrefixLen(v) => match u8::try_from(*v) {
                Ok(len) => {
                    r.suppress_prefix_len = Some(len);
                    false
                }
                Err(_) => *v != RULE_SUPPRESS_UNSET,
            },
            RuleAttribute::SuppressIfGroup(v) => *v != RULE_SUPPRESS_UNSET,
            RuleAttribute::TunId(v) => *v != 0,
            RuleAttribute::L3MDev(v) => *v,
            // Everything else selects or acts on its own: dst, iif, goto, realm, uid range, ip
            // proto, port ranges, and attributes newer than netlink-packet-route (dscp,
            // flowlabel, port masks, ...) that arrive as `Other`.
            _ => true,
        };
        r.other_selectors |= other;
    }
    // The kernel matches `mark & mask == mark`; a mark given alone has the full mask, and a
    // zero mask (with any mark) matches every packet: no selector.
    let mask = mask.unwrap_or(if mark != 0 { u32::MAX } else { 0 });
    if mask != 0 {
        r.fwmark = Some((mark, mask));
    }
    if h.action == RuleAction::ToTable {
        r.table = Some(table);
    }
    Some(r)
}

/// Tables above 255 only fit RTA_TABLE/FRA_TABLE; the header byte then says RT_TABLE_UNSPEC.
pub(super) fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

/// The request for `route`, for RTM_NEWROUTE and RTM_DELROUTE alike: every field is given, so a
/// delete matches exactly that route (the kernel treats absent fields as wildcards).
pub(crate) fn route_message(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let family = route.family();
    msg.header.address_family = address_family(family);
    msg.header.destination_prefix_length = route.dst_len;
    msg.header.table = header_table(route.table);
    msg.header.protocol = route.protocol.into();
    msg.header.scope = route.scope.into();
    msg.header.kind = RouteType::Unicast;
    let attrs = &mut msg.attributes;
    attrs.push(RouteAttribute::Table(route.table));
    if route.dst_len != 0 {
        attrs.push(RouteAttribute::Destination(route.dst.into()));
    }
    if let Some(gw) = route.gateway {
        attrs.push(if Family::of(&gw) == family {
            RouteAttribute::Gateway(gw.into())
        } else {
            RouteAttribute::Via(match gw {
                IpAddr::V4(a) => RouteVia::Inet(a),
                IpAddr::V6(a) => RouteVia::Inet6(a),
            })
        });
    }
    if let Some(oif) = route.oif {
        attrs.push(RouteAttribute::Oif(oif));
    }
    if let Some(src) = route.prefsrc {
        attrs.push(RouteAttribute::PrefSource(src.into()));
    }
    attrs.push(RouteAttribute::Priority(route.metric));
    msg
}

/// The request for `rule`, for RTM_NEWRULE and RTM_DELRULE alike. The action is FR_ACT_TO_TBL
/// whenever a table is given (the kernel would store Unspec, which makes lookups fail); a rule
/// without a table (delete only) leaves action and table as wildcards. `None` when the rule has
/// other selectors: the view does not say which, so no request can name exactly that rule.
pub(crate) fn rule_message(rule: &Rule) -> Option<RuleMessage> {
    if rule.other_selectors {
        return None;
    }
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(rule.family);
    let attrs = &mut msg.attributes;
    attrs.push(RuleAttribute::Priority(rule.priority));
    attrs.push(RuleAttribute::Protocol(rule.protocol.into()));
    if let Some((addr, len)) = rule.src {
        msg.header.src_len = len;
        attrs.push(RuleAttribute::Source(addr));
    }
    if let Some(oif) = &rule.oif {
        attrs.push(RuleAttribute::Oifname(oif.clone()));
    }
    if let Some((mark, mask)) = rule.fwmark {
        attrs.push(RuleAttribute::FwMark(mark));
        attrs.push(RuleAttribute::FwMask(mask));
    }
    if let Some(table) = rule.table {
        msg.header.table = header_table(table);
        msg.header.action = RuleAction::ToTable;
        attrs.push(RuleAttribute::Table(table));
    } else if rule.unreachable {
        msg.header.action = RuleAction::Unreachable;
    }
    if let Some(len) = rule.suppress_prefix_len {
        attrs.push(RuleAttribute::SuppressPrefixLen(len.into()));
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn routes() -> Vec<Route> {
        let base = Route {
            table: 1001,
            protocol: 77,
            dst: v4("0.0.0.0"),
            dst_len: 0,
            gateway: Some(v4("192.168.0.1")),
            oif: Some(7),
            prefsrc: None,
            metric: 0,
            scope: 0,
        };
        vec![
            base,
            Route { table: 200, ..base },
            Route {
                dst: v4("192.168.0.0"),
                dst_len: 24,
                gateway: None,
                prefsrc: Some(v4("192.168.0.10")),
                scope: 253,
                ..base
            },
            Route {
                dst: v4("::"),
                gateway: Some(v4("fe80::1")),
                metric: 1024,
                ..base
            },
            Route {
                gateway: Some(v4("fe80::1")),
                ..base
            },
        ]
    }

    #[test]
    fn route_round_trips_through_its_message() {
        for r in routes() {
            assert_eq!(route(&route_message(&r)), Some(r));
        }
    }

    #[test]
    fn large_table_goes_to_rta_table_only() {
        let msg = route_message(&routes()[0]);
        assert_eq!(msg.header.table, 0);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1001)));
        assert_eq!(route_message(&routes()[1]).header.table, 200);
    }

    #[test]
    fn header_table_is_used_without_rta_table() {
        let mut msg = route_message(&routes()[1]);
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        assert_eq!(route(&msg).unwrap().table, 200);
    }

    #[test]
    fn untranslatable_routes_are_dropped() {
        let mut local = route_message(&routes()[0]);
        local.header.kind = RouteType::Local;
        assert_eq!(route(&local), None);
        let mut nh = route_message(&routes()[0]);
        nh.attributes.push(RouteAttribute::NhId(3));
        assert_eq!(route(&nh), None);
        let mut src = route_message(&routes()[3]);
        src.header.source_prefix_length = 64;
        assert_eq!(route(&src), None);
    }

    fn rules() -> Vec<Rule> {
        let base = Rule {
            family: Family::V4,
            priority: 1000,
            protocol: 77,
            src: Some((v4("192.168.0.10"), 32)),
            oif: None,
            fwmark: None,
            table: Some(1001),
            suppress_prefix_len: None,
            unreachable: false,
            other_selectors: false,
        };
        vec![
            base.clone(),
            Rule {
                priority: 1001,
                src: None,
                oif: Some("veth0".into()),
                ..base.clone()
            },
            Rule {
                family: Family::V6,
                src: Some((v4("2001:db8::10"), 128)),
                table: Some(100),
                ..base.clone()
            },
            Rule {
                src: None,
                fwmark: Some((0x6d68_03e9, u32::MAX)),
                suppress_prefix_len: Some(0),
                ..base.clone()
            },
            Rule {
                src: None,
                fwmark: Some((0x6d68_0000, 0xffff_0000)),
                table: Some(254),
                suppress_prefix_len: Some(0),
                ..base.clone()
            },
            Rule {
                src: None,
                fwmark: Some((0x6d68_0000, 0xffff_0000)),
                table: None,
                unreachable: true,
                ..base.clone()
            },
            Rule {
                table: None,
                ..base
            },
        ]
    }

    #[test]
    fn rule_round_trips_through_its_message() {
        for r in rules()
            .into_iter()
            .filter(|r| r.table.is_some() || r.unreachable)
        {
            let msg = rule_message(&r).unwrap();
            let action = if r.unreachable {
                RuleAction::Unreachable
            } else {
                RuleAction::ToTable
            };
            assert_eq!(msg.header.action, action);
            assert_eq!(rule(&msg), Some(r));
        }
    }

    #[test]
    fn marks_as_the_kernel_dumps_them() {
        let base = rule_message(&rules()[0]).unwrap();
        // A mark alone has the full mask; a zero mask selects nothing.
        let cases = [
            (vec![RuleAttribute::FwMark(5)], Some((5, u32::MAX))),
            (
                vec![RuleAttribute::FwMark(5), RuleAttribute::FwMask(0xff)],
                Some((5, 0xff)),
            ),
            (
                vec![RuleAttribute::FwMark(0), RuleAttribute::FwMask(0)],
                None,
            ),
        ];
        for (attrs, want) in cases {
            let mut msg = base.clone();
            msg.attributes.extend(attrs);
            let r = rule(&msg).unwrap();
            assert_eq!(r.fwmark, want);
            assert!(!r.other_selectors);
        }
    }

    #[test]
    fn rule_without_table_is_a_wildcard_delete() {
        let msg = rule_message(rules().last().unwrap()).unwrap();
        assert_eq!(msg.header.action, RuleAction::Unspec);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::Table(_))));
    }

    #[test]
    fn other_selectors_are_flagged_and_unsendable() {
        let base = rule_message(&rules()[0]).unwrap();
        let extras = [
            RuleAttribute::Iifname("lo".into()),
            RuleAttribute::Goto(2000),
            RuleAttribute::L3MDev(true),
            RuleAttribute::Destination(v4("198.51.100.0")),
            RuleAttribute::SuppressIfGroup(1),
        ];
        for extra in extras {
            let mut msg = base.clone();
            msg.attributes.push(extra.clone());
            let r = rule(&msg).unwrap();
            assert!(r.other_selectors, "{extra:?}");
            assert_eq!(rule_message(&r), None);
        }
        let mut inverted = base.clone();
        inverted.header.flags = RuleFlags::Invert;
        assert!(rule(&inverted).unwrap().other_selectors);
        let mut unset = base;
        unset
            .attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        unset.attributes.push(RuleAttribute::FwMark(0));
        assert!(!rule(&unset).unwrap().other_selectors);
    }

    #[test]
    fn non_table_action_has_no_table() {
        let mut msg = rule_message(&rules()[0]).unwrap();
        msg.header.action = RuleAction::Prohibit;
        assert_eq!(rule(&msg).unwrap().table, None);
    }

    #[test]
    fn link_reads_kind_lower_and_mac() {
        let mut msg = LinkMessage::default();
        msg.header.index = 5;
        msg.header.flags = LinkFlags::Up;
        msg.attributes = vec![
            LinkAttribute::IfName("vlan101".into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Link(2),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(101)])),
            ]),
        ];
        let want = Link {
            ifindex: 5,
            name: "vlan101".into(),
            up: true,
            mtu: 1500,
            mac: [2, 0, 0, 0, 0, 1],
            lower: Some(2),
            kind: LinkKind::Vlan(101),
        };
        assert_eq!(link(&msg), Some(want.clone()));
        msg.attributes.push(LinkAttribute::LinkNetNsId(0));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::MacVtap,
            )]));
        let got = link(&msg).unwrap();
        assert_eq!((got.lower, got.kind), (None, LinkKind::Macvlan));
    }

    #[test]
    fn address_prefers_local_and_ifa_flags() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 24;
        msg.header.index = 3;
        msg.attributes = vec![
            AddressAttribute::Address(v4("192.168.0.99")),
            AddressAttribute::Local(v4("192.168.0.10")),
            AddressAttribute::Flags(NlAddressFlags::Tentative | NlAddressFlags::Deprecated),
        ];
        let a = address(&msg).unwrap();
        assert_eq!(
            (a.addr, a.prefix_len, a.ifindex),
            (v4("192.168.0.10"), 24, 3)
        );
        assert_eq!(
            a.flags,
            AddressFlags {
                tentative: true,
                dad_failed: false,
                deprecated: true
            }
        );
    }
}
