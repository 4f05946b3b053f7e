//! Test fixtures: the seed's topology. `eth0` is the trunk with a static address in the same
//! subnet, `vlan101`/`vlan102` its VLAN children with identical DHCP leases' subnet and gateway.

use std::net::IpAddr;

use crate::config::{Config, Params};
use crate::model::{Address, AddressFlags, Family, Link, LinkKind, Route, Rule, RT_TABLE_MAIN};
use crate::view::KernelView;

pub(crate) const LO: u32 = 1;
pub(crate) const ETH0: u32 = 2;
pub(crate) const WAN1: u32 = 11;
pub(crate) const WAN2: u32 = 12;
pub(crate) const RTPROT_KERNEL: u8 = 2;
pub(crate) const RTPROT_STATIC: u8 = 4;
pub(crate) const RTPROT_RA: u8 = 9;
pub(crate) const RTPROT_DHCP: u8 = 16;

/// A plain guard entry for an uplink without a parent.
pub(crate) fn egress(uplink_ifindex: u32) -> multihome_ebpf::Egress {
    multihome_ebpf::Egress {
        uplink_ifindex,
        lower_ifindex: 0,
        mtu: 1500,
        vlan_id: 0,
        match_mac: 0,
        prefix_len: 24,
        mac: [0; 6],
        counter_slot: 0,
        gateway: [0; 16],
    }
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad address {s}"))
}

pub(crate) fn link(ifindex: u32, name: &str, kind: LinkKind, lower: Option<u32>) -> Link {
    Link {
        ifindex,
        name: name.into(),
        up: true,
        mtu: 1500,
        mac: [2, 0, 0, 0, 0, ifindex as u8],
        lower,
        kind,
    }
}

/// `"192.168.0.100/24"` on `ifindex`, usable.
pub(crate) fn address(ifindex: u32, cidr: &str) -> Address {
    let (addr, len) = cidr.split_once('/').expect("address/len");
    Address {
        ifindex,
        addr: ip(addr),
        prefix_len: len.parse().expect("prefix length"),
        flags: AddressFlags::default(),
    }
}

/// A default route in `main` as a DHCP client or router advertisement installs it.
pub(crate) fn client_default(oif: u32, gateway: &str, metric: u32) -> Route {
    let gateway = ip(gateway);
    let (dst, protocol) = match gateway {
        IpAddr::V4(_) => (ip("0.0.0.0"), RTPROT_DHCP),
        IpAddr::V6(_) => (ip("::"), RTPROT_RA),
    };
    Route {
        table: RT_TABLE_MAIN,
        protocol,
        dst,
        dst_len: 0,
        gateway: Some(gateway),
        oif: Some(oif),
        prefsrc: None,
        metric,
        scope: 0,
    }
}

/// The kernel's own prefix route in `main` for an address.
pub(crate) fn kernel_prefix(oif: u32, cidr: &str, src: &str) -> Route {
    let (dst, len) = cidr.split_once('/').expect("prefix/len");
    Route {
        table: RT_TABLE_MAIN,
        protocol: RTPROT_KERNEL,
        dst: ip(dst),
        dst_len: len.parse().expect("prefix length"),
        gateway: None,
        oif: Some(oif),
        prefsrc: Some(ip(src)),
        metric: 0,
        scope: 253,
    }
}

/// The seed: eth0 192.168.0.210/24 (static), vlan101 192.168.0.100/24 and vlan102
/// 192.168.0.101/24 by DHCP, both via 192.168.0.1 (metrics 1024 and 1025) in main.
pub(crate) fn seed() -> KernelView {
    let mut view = KernelView::default();
    for l in [
        link(LO, "lo", LinkKind::Other, None),
        link(ETH0, "eth0", LinkKind::Other, None),
        link(WAN1, "vlan101", LinkKind::Vlan(101), Some(ETH0)),
        link(WAN2, "vlan102", LinkKind::Vlan(102), Some(ETH0)),
    ] {
        view.links.insert(l.ifindex, l);
    }
    view.addresses = vec![
        address(LO, "127.0.0.1/8"),
        address(ETH0, "192.168.0.210/24"),
        address(WAN1, "192.168.0.100/24"),
        address(WAN2, "192.168.0.101/24"),
    ];
    view.routes = vec![
        kernel_prefix(ETH0, "192.168.0.0/24", "192.168.0.210"),
        kernel_prefix(WAN1, "192.168.0.0/24", "192.168.0.100"),
        kernel_prefix(WAN2, "192.168.0.0/24", "192.168.0.101"),
        client_default(WAN1, "192.168.0.1", 1024),
        client_default(WAN2, "192.168.0.1", 1025),
    ];
    view
}

/// The whole plan: what multihome wants in the kernel. `entries` and `guarded` stay empty unless
/// the guard is enabled; routes and rules stay empty unless rules are.
pub(crate) fn plan(config: &Config, view: &KernelView) -> crate::model::State {
    crate::plan::plan_in(config, view, &crate::plan::Scope::All).0
}

/// A `from SRC lookup TABLE` rule of ours (protocol 77, priority 1000), IPv4.
pub(crate) fn rule(src: &str, table: u32) -> Rule {
    Rule {
        family: Family::V4,
        priority: 1000,
        protocol: 77,
        src: Some((ip(src), 32)),
        oif: None,
        fwmark: None,
        table: Some(table),
        suppress_prefix_len: None,
        unreachable: false,
        other_selectors: false,
    }
}

/// `multihome run UPLINK...` with default flags.
pub(crate) fn config(uplinks: &[&str]) -> Config {
    config_with(uplinks, Params::default())
}

pub(crate) fn config_with(uplinks: &[&str], params: Params) -> Config {
    let uplinks = uplinks.iter().map(|s| s.parse().expect("uplink")).collect();
    Config::new(Params { uplinks, ..params }).expect("valid config")
}
