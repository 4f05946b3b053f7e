//! The map layer's copy of what lets the program skip the source's hash lookup: the devices'
//! own-source lists (`multihome_ebpf::own_sources`) and the filter of sources with an entry
//! (`multihome_ebpf::source_filter`), and the order in which a change of one entry rewrites them.
//!
//! Pure: the caller writes what this returns, before and after the entry itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use multihome_ebpf::{
    own_sources::{claims, OwnV4, OwnV6, OWN_SOURCES_DEVICES},
    source_filter, Egress, OwnSources, Source, SourceFilter,
};

/// A listed source: the address, the tag a frame must carry (0: any) and its counters slot.
type Item = (IpAddr, u16, u16);

/// One write to the shortcut maps.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Write {
    /// The own-source list of a device.
    List(u32, OwnSources),
    Filter(Box<SourceFilter>),
}

/// The writes around a change of one entry, in order. `before` the entry changes: the filter
/// gains the source's bit, and no list names the source any more. `after`: the lists name it
/// where the new entry passes it, and the filter loses a bit no entry has any more.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Writes {
    pub(crate) before: Vec<Write>,
    pub(crate) after: Vec<Write>,
}

/// Every device's sources, listed or not (a list keeps the lowest few of each family), and how
/// many sources with an entry each filter bit stands for.
#[derive(Debug, Default)]
pub(super) struct Shortcuts {
    by_device: BTreeMap<u32, BTreeSet<Item>>,
    bits: BTreeMap<u32, u32>,
}

impl Shortcuts {
    /// The shortcuts of the entries as the program sees them (with their counters slots).
    pub(crate) fn from_entries(entries: &BTreeMap<IpAddr, Egress>) -> Self {
        let mut shortcuts = Self::default();
        for (&addr, entry) in entries {
            shortcuts.add(addr, entry);
            *shortcuts.bits.entry(bit(addr)).or_default() += 1;
        }
        shortcuts
    }

    /// The list of `ifindex`, as the map must hold it (all zero when it has none).
    pub(crate) fn list(&self, ifindex: u32) -> OwnSources {
        let mut list = OwnSources::default();
        let Some(items) = self.by_device.get(&ifindex) else {
            return list;
        };
        let (mut v4, mut v6) = (list.v4.iter_mut(), list.v6.iter_mut());
        for &(addr, vlan_id, counter_slot) in items {
            match addr {
                IpAddr::V4(a) => {
                    if let Some(slot) = v4.next() {
                        *slot = OwnV4 {
                            addr: a.octets(),
                            vlan_id,
                            counter_slot,
                        };
                    }
                }
                IpAddr::V6(a) => {
                    if let Some(slot) = v6.next() {
                        *slot = OwnV6 {
                            addr: a.octets(),
                            vlan_id,
                            counter_slot,
                            _pad: 0,
                        };
                    }
                }
            }
        }
        list
    }

    /// The filter, as the map must hold it.
    pub(crate) fn filter(&self) -> SourceFilter {
        let mut filter = SourceFilter::default();
        for &bit in self.bits.keys() {
            filter.set(bit);
        }
        filter
    }

    /// Records that the entry of `addr` goes from `old` to `new` (`None`: no entry) and returns
    /// what changes, in the order that keeps every list naming only sources the source maps
    /// pass on its device, and the filter's bit set for every source with an entry.
    pub(crate) fn change(
        &mut self,
        addr: IpAddr,
        old: Option<&Egress>,
        new: Option<&Egress>,
    ) -> Writes {
        let mut writes = Writes::default();
        let bit = bit(addr);
        if old.is_none() && new.is_some() {
            let count = self.bits.entry(bit).or_default();
            *count += 1;
            if *count == 1 {
                writes.before.push(Write::Filter(Box::new(self.filter())));
            }
        }
        let (before, after) = self.change_lists(addr, old, new);
        writes.before.extend(before);
        writes.after.extend(after);
        if old.is_some() && new.is_none() {
            if let Some(count) = self.bits.get_mut(&bit) {
                *count -= 1;
                if *count == 0 {
                    self.bits.remove(&bit);
                    writes.after.push(Write::Filter(Box::new(self.filter())));
                }
            }
        }
        writes
    }

    /// The list writes of `change`: without `addr` before its entry is written, with it after.
    fn change_lists(
        &mut self,
        addr: IpAddr,
        old: Option<&Egress>,
        new: Option<&Egress>,
    ) -> (Vec<Write>, Vec<Write>) {
        let claimed = |entry: Option<&Egress>| -> BTreeSet<(u32, Item)> {
            entry.map_or_else(BTreeSet::new, |entry| items(addr, entry).collect())
        };
        let (old_items, new_items) = (claimed(old), claimed(new));
        if old_items == new_items {
            return (Vec::new(), Vec::new());
        }
        let devices: BTreeSet<u32> = old_items
            .iter()
            .chain(&new_items)
            .map(|(d, _)| *d)
            .collect();
        let lists = |shortcuts: &Self| -> Vec<(u32, OwnSources)> {
            devices.iter().map(|&d| (d, shortcuts.list(d))).collect()
        };
        let was = lists(self);
        if let Some(old) = old {
            self.remove(addr, old);
        }
        let without = lists(self);
        if let Some(new) = new {
            self.add(addr, new);
        }
        let now = lists(self);
        (changed(&was, without.clone()), changed(&without, now))
    }

    fn add(&mut self, addr: IpAddr, entry: &Egress) {
        for (device, item) in items(addr, entry) {
            self.by_device.entry(device).or_default().insert(item);
        }
    }

    fn remove(&mut self, addr: IpAddr, entry: &Egress) {
        for (device, item) in items(addr, entry) {
            if let Some(set) = self.by_device.get_mut(&device) {
                set.remove(&item);
                if set.is_empty() {
                    self.by_device.remove(&device);
                }
            }
        }
    }
}

/// The list writes for the lists of `to` that differ from those of `from` (the same devices, in
/// the same order).
fn changed(from: &[(u32, OwnSources)], to: Vec<(u32, OwnSources)>) -> Vec<Write> {
    from.iter()
        .zip(to)
        .filter(|((_, a), (_, b))| a != b)
        .map(|(_, (device, list))| Write::List(device, list))
        .collect()
}

/// The listed sources an entry makes: one per device it passes on that has a slot in the map.
/// The unspecified address would end a list; it never has an entry anyway.
fn items(addr: IpAddr, entry: &Egress) -> impl Iterator<Item = (u32, Item)> + '_ {
    claims(entry)
        .filter(move |&(device, _)| device < OWN_SOURCES_DEVICES && !addr.is_unspecified())
        .map(move |(device, vlan_id)| (device, (addr, vlan_id, entry.counter_slot)))
}

fn bit(addr: IpAddr) -> u32 {
    source_filter::bit(source_filter::fold_of(&source(addr)))
}

/// The program's view of an address.
pub(super) fn source(addr: IpAddr) -> Source {
    match addr {
        IpAddr::V4(a) => Source::V4(a.octets()),
        IpAddr::V6(a) => Source::V6(a.octets()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use multihome_ebpf::{decide, Packet, Verdict, Vlan};
    use proptest::prelude::*;

    use super::*;

    const ETH0: u32 = 2;
    const UPLINKS: [u32; 3] = [10, 11, 12];
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    /// More IPv4 sources than a list holds, so that full lists are exercised.
    fn addr(i: u8) -> IpAddr {
        if i < 12 {
            IpAddr::V4(Ipv4Addr::new(192, 168, 0, 100 + i))
        } else {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)))
        }
    }

    fn plain(uplink: u32, slot: u16) -> Egress {
        Egress {
            uplink_ifindex: uplink,
            mtu: 1500,
            counter_slot: slot,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    /// Uplinks of every kind the decision knows: plain, VLAN child of eth0, MAC-based child,
    /// and a child eth0 cannot tell apart.
    fn entry() -> impl Strategy<Value = Egress> {
        (0..3usize, 0..4u8, 1..4u16).prop_map(|(uplink, kind, slot)| {
            let plain = plain(UPLINKS[uplink], slot);
            let child = Egress {
                lower_ifindex: ETH0,
                ..plain
            };
            match kind {
                0 => plain,
                1 => Egress {
                    vlan_id: 101 + uplink as u16,
                    ..child
                },
                2 => Egress {
                    match_mac: 1,
                    mac: MAC,
                    ..child
                },
                _ => child,
            }
        })
    }

    /// Every list answer is the decision's: where a list passes a packet, `decide` passes it
    /// on the entry the maps hold, counted in that entry's slot.
    fn sound(lists: &BTreeMap<u32, OwnSources>, truth: &BTreeMap<IpAddr, Egress>) {
        for (&ifindex, list) in lists {
            for i in 0..16 {
                for vlan in [None, Some(101), Some(102), Some(103)] {
                    let src = source(addr(i));
                    let Some(slot) = list.pass(&src, vlan.into()) else {
                        continue;
                    };
                    let entry = truth.get(&addr(i));
                    let packet = Packet {
                        ifindex,
                        vlan: vlan.into(),
                        src_mac: [2, 0, 0, 0, 0, 0xee],
                        src,
                        dst: src,
                        l3_len: 100,
                        gso: false,
                    };
                    assert_eq!(
                        decide(&packet, entry),
                        Verdict::Pass,
                        "if{ifindex} lists {:?} on {vlan:?}, the entry is {entry:?}",
                        addr(i)
                    );
                    assert_eq!(Some(slot), entry.map(|e| e.counter_slot));
                }
            }
        }
    }

    /// The shortcut maps as the program sees them.
    #[derive(Default)]
    struct Maps {
        lists: BTreeMap<u32, OwnSources>,
        filter: SourceFilter,
    }

    impl Maps {
        fn apply(&mut self, writes: &[Write]) {
            for write in writes {
                match *write {
                    Write::List(ifindex, list) => {
                        self.lists.insert(ifindex, list);
                    }
                    Write::Filter(ref filter) => self.filter = **filter,
                }
            }
        }

        /// Neither shortcut passes what the entries would not: the lists are sound, and no
        /// source with an entry finds its bit clear.
        fn sound(&self, truth: &BTreeMap<IpAddr, Egress>) {
            sound(&self.lists, truth);
            for addr in truth.keys() {
                assert!(
                    self.filter.may_have(source_filter::fold_of(&source(*addr))),
                    "{addr}'s bit is clear"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2_000,
            failure_persistence: None,
            rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
            ..ProptestConfig::default()
        })]

        /// Random entry changes, written in the order `change` gives: at every step the
        /// shortcuts only pass what the entries pass, and once the change is written they are
        /// those of the entries.
        #[test]
        fn shortcuts_never_pass_what_the_entries_would_not(
            changes in proptest::collection::vec((0..16u8, proptest::option::of(entry())), 1..60)
        ) {
            let mut truth = BTreeMap::new();
            let mut maps = Maps::default();
            let mut shortcuts = Shortcuts::default();
            for (i, new) in changes {
                let addr = addr(i);
                let old = truth.get(&addr).copied();
                let writes = shortcuts.change(addr, old.as_ref(), new.as_ref());
                maps.apply(&writes.before);
                maps.sound(&truth);
                match new {
                    Some(new) => truth.insert(addr, new),
                    None => truth.remove(&addr),
                };
                maps.sound(&truth);
                maps.apply(&writes.after);
                maps.sound(&truth);
                // Once written, the maps hold exactly what the entries make: no stale bit.
                let rebuilt = Shortcuts::from_entries(&truth);
                for device in [ETH0].iter().chain(&UPLINKS) {
                    let have = maps.lists.get(device).copied().unwrap_or_default();
                    prop_assert_eq!(have, rebuilt.list(*device), "if{}", device);
                }
                prop_assert_eq!(maps.filter, rebuilt.filter());
            }
        }
    }

    #[test]
    fn a_source_leaves_its_old_list_before_its_entry_moves_and_joins_the_new_one_after() {
        let s = addr(0);
        let mut shortcuts = Shortcuts::from_entries(&BTreeMap::from([(s, plain(10, 1))]));
        let writes = shortcuts.change(s, Some(&plain(10, 1)), Some(&plain(11, 2)));
        assert_eq!(writes.before, vec![Write::List(10, OwnSources::default())]);
        let [Write::List(11, list)] = writes.after[..] else {
            panic!("{:?}", writes.after);
        };
        assert_eq!(list.pass(&source(s), Vlan::NONE), Some(2));
        // What does not change the shortcuts (here the MTU) writes none.
        let writes = shortcuts.change(
            s,
            Some(&plain(11, 2)),
            Some(&Egress {
                mtu: 9000,
                ..plain(11, 2)
            }),
        );
        assert_eq!(writes, Writes::default());
    }

    #[test]
    fn a_vlan_childs_source_is_listed_on_its_parent_for_its_tag_only() {
        let s = addr(1);
        let child = Egress {
            lower_ifindex: ETH0,
            vlan_id: 102,
            ..plain(11, 3)
        };
        let index = Shortcuts::from_entries(&BTreeMap::from([(s, child)]));
        assert_eq!(index.list(11).pass(&source(s), Vlan::NONE), Some(3));
        assert_eq!(index.list(ETH0).pass(&source(s), Vlan::tag(102)), Some(3));
        assert_eq!(index.list(ETH0).pass(&source(s), Vlan::tag(101)), None);
        assert_eq!(index.list(ETH0).pass(&source(s), Vlan::NONE), None);
    }

    #[test]
    fn devices_past_the_map_have_no_list_but_their_sources_are_in_the_filter() {
        let s = addr(2);
        let mut shortcuts = Shortcuts::default();
        let writes = shortcuts.change(s, None, Some(&plain(OWN_SOURCES_DEVICES, 1)));
        let [Write::Filter(ref filter)] = writes.before[..] else {
            panic!("{:?}", writes.before);
        };
        assert!(filter.may_have(source_filter::fold_of(&source(s))));
        assert_eq!(writes.after, vec![]);
        let writes = shortcuts.change(s, Some(&plain(OWN_SOURCES_DEVICES, 1)), None);
        assert_eq!(writes.before, vec![]);
        assert_eq!(writes.after, vec![Write::Filter(Box::default())]);
    }
}
