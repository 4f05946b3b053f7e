//! The view indexed once per plan, over the devices of the uplinks in a scope.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::{usable, Scope};
use crate::config::Config;
use crate::model::{Address, Family, Link, Route, RT_TABLE_MAIN};
use crate::view::KernelView;

/// The view indexed once per plan, over the devices of the uplinks in the scope. Looking each
/// uplink's link, addresses and gateway up by scanning the whole view made a pass grow with the
/// square of the number of uplinks (measured: 5 ms for one address change with 256 uplinks).
pub(super) struct Index<'a> {
    pub(super) links: HashMap<&'a str, &'a Link>,
    pub(super) addresses: HashMap<u32, Vec<&'a Address>>,
    /// The position of the uplink that wins each usable address of those devices: the first in
    /// the configuration whose device holds it, in the scope or not. Device names are unique in
    /// the view (`KernelView::apply` drops a stale device when its name reappears).
    pub(super) winners: HashMap<IpAddr, usize>,
    /// The discovered gateway by (uplink ifindex, family), with the key that chose it.
    pub(super) gateways: HashMap<(u32, Family), (GatewayRank, IpAddr)>,
}

/// Orders candidate default routes: lowest metric, then `main`, then the lowest table, then
/// the lowest gateway, so that the choice never depends on dump order.
type GatewayRank = (u32, bool, u32, IpAddr);

impl<'a> Index<'a> {
    pub(super) fn new(config: &Config, view: &'a KernelView, scope: &Scope) -> Index<'a> {
        // By ifindex order, the first of a name wins, as with `KernelView::link_by_name`.
        let mut links = HashMap::new();
        // The scope's devices looked up, not the view scanned, when it has a few.
        let scope_links: Vec<&Link> = match scope {
            Scope::All => view.links.values().collect(),
            Scope::Uplinks { devices, .. } => (devices.iter())
                .filter_map(|ifindex| view.links.get(&ifindex))
                .collect(),
        };
        for link in scope_links {
            links.entry(link.name.as_str()).or_insert(link);
        }
        let mut addresses: HashMap<u32, Vec<&Address>> = HashMap::new();
        for address in view
            .addresses
            .iter()
            .filter(|a| scope.has_device(a.ifindex))
        {
            addresses.entry(address.ifindex).or_default().push(address);
        }
        // A BTreeSet: with a few uplinks it holds a few addresses, and a lookup costs a few
        // comparisons where hashing every address of the view would cost more.
        let contested: BTreeSet<IpAddr> = addresses
            .values()
            .flatten()
            .filter(|a| usable(a))
            .map(|a| a.addr)
            .collect();
        let mut winners: HashMap<IpAddr, usize> = HashMap::new();
        for address in &view.addresses {
            if !contested.contains(&address.addr) || !usable(address) {
                continue;
            }
            let holder = view.links.get(&address.ifindex);
            if let Some(position) = holder.and_then(|link| config.position(&link.name)) {
                let winner = winners.entry(address.addr).or_insert(position);
                *winner = (*winner).min(position);
            }
        }
        let mut gateways: HashMap<(u32, Family), (GatewayRank, IpAddr)> = HashMap::new();
        for route in &view.routes {
            if let Some((oif, family, rank, gateway)) = gateway_candidate(config, scope, route) {
                let best = gateways.entry((oif, family)).or_insert((rank, gateway));
                if rank < best.0 {
                    *best = (rank, gateway);
                }
            }
        }
        Index {
            links,
            addresses,
            winners,
            gateways,
        }
    }
}

/// A route that can give an uplink its gateway, as the DHCP client (or router advertisement)
/// set it: a default route through an uplink of `scope`, in a table that is not ours, with a next hop of
/// its own family (an RTA_VIA of the other family is not one a table route here can use).
fn gateway_candidate(
    config: &Config,
    scope: &Scope,
    route: &Route,
) -> Option<(u32, Family, GatewayRank, IpAddr)> {
    // Cheapest tests first: most routes are not defaults, and with a few uplinks in the scope
    // most defaults go through other devices, before the table is hashed.
    if !route.is_default() || route.protocol == config.protocol {
        return None;
    }
    let oif = route.oif.filter(|&oif| scope.has_device(oif))?;
    if config.table_position(route.table).is_some() {
        return None;
    }
    let family = route.family();
    let gateway = route.gateway.filter(|g| Family::of(g) == family)?;
    let rank = (
        route.metric,
        route.table != RT_TABLE_MAIN,
        route.table,
        gateway,
    );
    Some((oif, family, rank, gateway))
}
