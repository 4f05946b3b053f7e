//! Typed access to the pinned maps, usable by the daemon that loaded the guard and by any later
//! process (`status`, `cleanup`) from the pins alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{
    Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use multihome_ebpf::{
    maps::{
        MAP_COUNTERS, MAP_MARKS, MAP_OWN_SOURCES, MAP_SOURCE_FILTER, MAP_SRC_V4, MAP_SRC_V6,
        MAP_STEER, MAP_STEER_COUNTERS, MAX_SOURCES, MAX_UPLINKS,
    },
    own_sources::OWN_SOURCES_DEVICES,
    steer::MAX_STEERED,
    CounterSlot, Counters, Egress, OwnSources, SourceFilter, SrcV4, SrcV6, SteerCounters,
    SteerTarget,
};

use super::{
    privilege_hint,
    shortcuts::{Shortcuts, Write, Writes},
};

const EGRESS_LEN: usize = size_of::<Egress>();
const SLOT_LEN: usize = size_of::<CounterSlot>();
const OWN_LEN: usize = size_of::<OwnSources>();
const FILTER_LEN: usize = size_of::<SourceFilter>();
const TARGET_LEN: usize = size_of::<SteerTarget>();
const STEER_COUNTERS_LEN: usize = size_of::<SteerCounters>();

/// The maps' values as aya sees them: byte arrays, cast to the shared `#[repr(C)]` types with
/// bytemuck (aya's own `Pod` cannot be implemented for another crate's types).
type Sources<const K: usize> = HashMap<MapData, [u8; K], [u8; EGRESS_LEN]>;
type CounterMap = PerCpuArray<MapData, [u8; SLOT_LEN]>;
type OwnSourcesMap = Array<MapData, [u8; OWN_LEN]>;
type FilterMap = Array<MapData, [u8; FILTER_LEN]>;
type MarkMap = HashMap<MapData, u32, [u8; EGRESS_LEN]>;
type SteerMap = PerCpuHashMap<MapData, u64, [u8; TARGET_LEN]>;
type SteerCounterMap = PerCpuArray<MapData, [u8; STEER_COUNTERS_LEN]>;

/// What a map pinned under a given name must look like to be reused by a new program.
pub(super) struct Shape {
    pub(crate) name: &'static str,
    pub(crate) map_type: MapType,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
}

/// The maps the programs use, in the order of `multihome_ebpf::maps`.
pub(super) const SHAPES: [Shape; 8] = [
    Shape {
        name: MAP_SRC_V4,
        map_type: MapType::Hash,
        key_size: size_of::<SrcV4>() as u32,
        value_size: EGRESS_LEN as u32,
        max_entries: MAX_SOURCES,
    },
    Shape {
        name: MAP_SRC_V6,
        map_type: MapType::Hash,
        key_size: size_of::<SrcV6>() as u32,
        value_size: EGRESS_LEN as u32,
        max_entries: MAX_SOURCES,
    },
    Shape {
        name: MAP_COUNTERS,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>() as u32,
        value_size: SLOT_LEN as u32,
        max_entries: MAX_UPLINKS,
    },
    Shape {
        name: MAP_OWN_SOURCES,
        map_type: MapType::Array,
        key_size: size_of::<u32>() as u32,
        value_size: OWN_LEN as u32,
        max_entries: OWN_SOURCES_DEVICES,
    },
    Shape {
        name: MAP_SOURCE_FILTER,
        map_type: MapType::Array,
        key_size: size_of::<u32>() as u32,
        value_size: FILTER_LEN as u32,
        max_entries: 1,
    },
    Shape {
        name: MAP_STEER,
        map_type: MapType::PerCpuHash,
        key_size: size_of::<u64>() as u32,
        value_size: TARGET_LEN as u32,
        max_entries: MAX_STEERED,
    },
    Shape {
        name: MAP_MARKS,
        map_type: MapType::Hash,
        key_size: size_of::<u32>() as u32,
        value_size: EGRESS_LEN as u32,
        max_entries: MAX_UPLINKS,
    },
    Shape {
        name: MAP_STEER_COUNTERS,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>() as u32,
        value_size: STEER_COUNTERS_LEN as u32,
        max_entries: MAX_UPLINKS,
    },
];

impl Shape {
    /// Whether the map pinned at `path` can be kept: same type, key, value and capacity.
    /// A pin that cannot be opened at all counts as incompatible.
    pub(crate) fn fits(&self, path: &Path) -> bool {
        let Ok(info) = aya::maps::MapInfo::from_pin(path) else {
            return false;
        };
        info.map_type().ok() == Some(self.map_type)
            && info.key_size() == self.key_size
            && info.value_size() == self.value_size
            && info.max_entries() == self.max_entries
    }
}

/// The source maps, the counters and the shortcuts (the devices' own-source lists and the
/// source filter), opened from their pins.
///
/// The counters slots and the shortcuts are this layer's business, derived from the entries as
/// they are written. Each entry carries its uplink's slot (`Egress::counter_slot`),
/// assigned here, and each slot names its uplink. Callers see entries without slots (`entries`
/// zeroes them, as the plan leaves them) and counters by uplink ifindex.
pub struct PinnedMaps {
    v4: Sources<4>,
    v6: Sources<16>,
    counters: CounterMap,
    own_sources: OwnSourcesMap,
    filter: FilterMap,
    marks: MarkMap,
    steer: SteerMap,
    steer_counters: SteerCounterMap,
    /// Uplink ifindex -> its counters slot, read from the map when first needed (only writing
    /// an entry needs it) and kept current by this process, the map's only writer.
    slots: Option<BTreeMap<u32, u16>>,
    /// The shortcuts, built from the entries when first needed and kept current the same way;
    /// dropped after a failed write, to be built again from what the maps hold.
    shortcuts: Option<Shortcuts>,
}

impl PinnedMaps {
    /// Opens the maps pinned under `pin_dir` (by a running or earlier `multihome run`).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            v4: open(pin_dir, MAP_SRC_V4)?,
            v6: open(pin_dir, MAP_SRC_V6)?,
            counters: open(pin_dir, MAP_COUNTERS)?,
            own_sources: open(pin_dir, MAP_OWN_SOURCES)?,
            filter: open(pin_dir, MAP_SOURCE_FILTER)?,
            marks: open(pin_dir, MAP_MARKS)?,
            steer: open(pin_dir, MAP_STEER)?,
            steer_counters: open(pin_dir, MAP_STEER_COUNTERS)?,
            slots: None,
            shortcuts: None,
        })
    }

    /// Sets where packets with source `addr` must leave, counted in the slot of its uplink.
    pub fn put_entry(&mut self, addr: IpAddr, egress: &Egress) -> Result<()> {
        let egress = Egress {
            counter_slot: self.slot_for(egress.uplink_ifindex)?,
            ..*egress
        };
        self.change_entry(addr, Some(&egress), |maps| {
            let value: [u8; EGRESS_LEN] = bytemuck::cast(egress);
            match addr {
                IpAddr::V4(a) => maps.v4.insert(a.octets(), value, 0),
                IpAddr::V6(a) => maps.v6.insert(a.octets(), value, 0),
            }
            .with_context(|| format!("cannot write the guard's entry for {addr}"))
        })
    }

    /// Forgets `addr`; removing an absent entry is not an error.
    pub fn remove_entry(&mut self, addr: IpAddr) -> Result<()> {
        self.change_entry(addr, None, |maps| {
            let result = match addr {
                IpAddr::V4(a) => maps.v4.remove(&a.octets()),
                IpAddr::V6(a) => maps.v6.remove(&a.octets()),
            };
            ignore_missing(result)
                .with_context(|| format!("cannot remove the guard's entry for {addr}"))
        })
    }

    /// Changes the entry of `addr` to `new` with `write`, between the shortcut writes that keep
    /// them from passing what the entries would not (see `shortcuts`).
    fn change_entry(
        &mut self,
        addr: IpAddr,
        new: Option<&Egress>,
        write: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let result = self.shortcut_writes(addr, new).and_then(|writes| {
            self.write_shortcuts(&writes.before)?;
            write(self)?;
            self.write_shortcuts(&writes.after)
        });
        if result.is_err() {
            self.shortcuts = None;
        }
        result
    }

    fn shortcut_writes(&mut self, addr: IpAddr, new: Option<&Egress>) -> Result<Writes> {
        let old = self.entry_with_slot(addr)?;
        let mut shortcuts = match self.shortcuts.take() {
            Some(shortcuts) => shortcuts,
            None => Shortcuts::from_entries(&self.entries_with_slots()?),
        };
        let writes = shortcuts.change(addr, old.as_ref(), new);
        self.shortcuts = Some(shortcuts);
        Ok(writes)
    }

    fn write_shortcuts(&mut self, writes: &[Write]) -> Result<()> {
        for write in writes {
            match *write {
                Write::List(ifindex, list) => self
                    .own_sources
                    .set(ifindex, bytemuck::cast::<_, [u8; OWN_LEN]>(list), 0)
                    .with_context(|| format!("cannot write the own sources of if{ifindex}"))?,
                Write::Filter(ref filter) => self
                    .filter
                    .set(0, bytemuck::cast::<_, [u8; FILTER_LEN]>(**filter), 0)
                    .context("cannot write the guard's source filter")?,
            }
        }
        Ok(())
    }

    /// Makes the shortcuts those of the entries. Written by this layer alone they can only miss
    /// a list entry or keep a spare filter bit (a crash between writes), but a daemon of another
    /// version, which did not keep them, may have left a list naming a source that moved or a
    /// filter without a new source's bit. For the loader, after `assign_slots`; the filter
    /// first, as a clear bit hides an entry.
    pub(super) fn sync_shortcuts(&mut self) -> Result<()> {
        let shortcuts = Shortcuts::from_entries(&self.entries_with_slots()?);
        self.write_shortcuts(&[Write::Filter(Box::new(shortcuts.filter()))])?;
        for ifindex in 0..OWN_SOURCES_DEVICES {
            let want = shortcuts.list(ifindex);
            let have = self
                .own_sources
                .get(&ifindex, 0)
                .with_context(|| format!("cannot read the own sources of if{ifindex}"))?;
            if bytemuck::cast::<_, OwnSources>(have) != want {
                self.write_shortcuts(&[Write::List(ifindex, want)])?;
            }
        }
        self.shortcuts = Some(shortcuts);
        Ok(())
    }

    /// The entry of `addr` as the program sees it, if any.
    fn entry_with_slot(&self, addr: IpAddr) -> Result<Option<Egress>> {
        let value = match addr {
            IpAddr::V4(a) => self.v4.get(&a.octets(), 0),
            IpAddr::V6(a) => self.v6.get(&a.octets(), 0),
        };
        match value {
            Ok(value) => Ok(Some(bytemuck::cast(value))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read the guard's entry for {addr}")),
        }
    }

    /// Every entry, IPv4 and IPv6, without its counters slot.
    pub fn entries(&self) -> Result<BTreeMap<IpAddr, Egress>> {
        let mut entries = self.entries_with_slots()?;
        for entry in entries.values_mut() {
            entry.counter_slot = 0;
        }
        Ok(entries)
    }

    /// Every entry as the program sees it.
    fn entries_with_slots(&self) -> Result<BTreeMap<IpAddr, Egress>> {
        let mut entries = BTreeMap::new();
        for item in self.v4.iter() {
            let (key, value) = item.context("cannot read the guard's IPv4 entries")?;
            entries.insert(IpAddr::from(key), bytemuck::cast(value));
        }
        for item in self.v6.iter() {
            let (key, value) = item.context("cannot read the guard's IPv6 entries")?;
            entries.insert(IpAddr::from(key), bytemuck::cast(value));
        }
        Ok(entries)
    }

    /// Sets the uplink of steering mark `mark` (its packets are counted in the uplink's slot).
    pub fn put_mark(&mut self, mark: u32, egress: &Egress) -> Result<()> {
        let egress = Egress {
            counter_slot: self.slot_for(egress.uplink_ifindex)?,
            ..*egress
        };
        self.marks
            .insert(mark, bytemuck::cast::<_, [u8; EGRESS_LEN]>(egress), 0)
            .with_context(|| format!("cannot write the uplink of steering mark {mark:#x}"))
    }

    /// Forgets steering mark `mark`; an absent one is not an error.
    pub fn remove_mark(&mut self, mark: u32) -> Result<()> {
        ignore_missing(self.marks.remove(&mark))
            .with_context(|| format!("cannot remove steering mark {mark:#x}"))
    }

    /// Every steering mark's uplink, without its counters slot.
    pub fn marks(&self) -> Result<BTreeMap<u32, Egress>> {
        let mut marks = BTreeMap::new();
        for item in self.marks.iter() {
            let (mark, value) = item.context("cannot read the steering marks")?;
            let egress: Egress = bytemuck::cast(value);
            marks.insert(
                mark,
                Egress {
                    counter_slot: 0,
                    ..egress
                },
            );
        }
        Ok(marks)
    }

    /// Steers the sockets of cgroup `id` (and of its descendants without an entry of their
    /// own) with `mark`; its socket count starts at 0.
    pub fn put_steered(&mut self, id: u64, mark: u32) -> Result<()> {
        let target: [u8; TARGET_LEN] = bytemuck::cast(SteerTarget {
            mark,
            ..SteerTarget::default()
        });
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let values = PerCpuValues::try_from(vec![target; cpus])?;
        self.steer
            .insert(id, values, 0)
            .with_context(|| format!("cannot steer cgroup {id}"))
    }

    /// Stops steering cgroup `id`; an absent entry is not an error.
    pub fn remove_steered(&mut self, id: u64) -> Result<()> {
        ignore_missing(self.steer.remove(&id))
            .with_context(|| format!("cannot remove the steering of cgroup {id}"))
    }

    /// Every steered cgroup: its mark and the sockets marked for it, summed over CPUs.
    pub fn steered(&self) -> Result<BTreeMap<u64, SteerTarget>> {
        let mut steered = BTreeMap::new();
        for item in self.steer.iter() {
            let (id, per_cpu) = item.context("cannot read the steered cgroups")?;
            let mut sum = SteerTarget::default();
            for value in per_cpu.iter() {
                let target: SteerTarget = bytemuck::cast(*value);
                sum.mark = target.mark;
                sum.sockets += target.sockets;
            }
            steered.insert(id, sum);
        }
        Ok(steered)
    }

    /// The steering counters per uplink ifindex, and the host's (slot 0: refused sockets,
    /// packets of marks without an uplink), summed over CPUs.
    pub fn steer_counters(&self) -> Result<(BTreeMap<u32, SteerCounters>, SteerCounters)> {
        let owners: BTreeMap<u16, u32> = self
            .read_slots()?
            .into_iter()
            .map(|(uplink, slot)| (slot, uplink))
            .collect();
        let (mut uplinks, mut host) = (BTreeMap::new(), SteerCounters::default());
        for (slot, item) in self.steer_counters.iter().enumerate() {
            let per_cpu = item.context("cannot read the steering counters")?;
            let mut sum = SteerCounters::default();
            for value in per_cpu.iter() {
                sum.add(&bytemuck::cast(*value));
            }
            match owners.get(&(slot as u16)) {
                Some(&uplink) => {
                    uplinks.insert(uplink, sum);
                }
                None if slot == 0 => host = sum,
                None => {}
            }
        }
        Ok((uplinks, host))
    }

    /// Counters per uplink ifindex, summed over CPUs: every slot that names an uplink.
    pub fn counters(&self) -> Result<BTreeMap<u32, Counters>> {
        let mut all = BTreeMap::<u32, Counters>::new();
        for item in self.counters.iter() {
            let per_cpu = item.context("cannot read the guard's counters")?;
            for value in per_cpu.iter() {
                let slot: CounterSlot = bytemuck::cast(*value);
                if slot.uplink_ifindex != 0 {
                    all.entry(slot.uplink_ifindex)
                        .or_default()
                        .add(&slot.counters);
                }
            }
        }
        Ok(all)
    }

    /// Gives every entry its uplink's counters slot where it has another one: entries written
    /// while the counters map was of an older layout (which the loader replaced) have none.
    /// For the loader, once its maps are open.
    pub(super) fn assign_slots(&mut self) -> Result<()> {
        for (addr, entry) in self.entries_with_slots()? {
            if self.slot_for(entry.uplink_ifindex)? != entry.counter_slot {
                self.put_entry(addr, &entry)?;
            }
        }
        Ok(())
    }

    /// The counters slot of `uplink`, claimed for it if it has none.
    fn slot_for(&mut self, uplink: u32) -> Result<u16> {
        let mut slots = match self.slots.take() {
            Some(slots) => slots,
            None => self.read_slots()?,
        };
        let slot = match slots.get(&uplink) {
            Some(&slot) => Ok(slot),
            None => self.claim_slot(&mut slots, uplink),
        };
        self.slots = Some(slots);
        slot
    }

    /// Uplink ifindex -> slot, from the map (slot 0 is never assigned).
    fn read_slots(&self) -> Result<BTreeMap<u32, u16>> {
        let mut slots = BTreeMap::new();
        for (index, item) in self.counters.iter().enumerate().skip(1) {
            let per_cpu = item.context("cannot read the guard's counters")?;
            // User space writes the owner to every CPU's copy.
            let owner = per_cpu.first().map_or(0, |value| {
                bytemuck::cast::<_, CounterSlot>(*value).uplink_ifindex
            });
            if owner != 0 {
                slots.insert(owner, index as u16);
            }
        }
        Ok(slots)
    }

    /// Claims a free slot for `uplink`, zeroed. When every slot is taken, the slot of an uplink
    /// no entry points at any more is taken back (a device that went away: a new one gets
    /// another ifindex), dropping its counters. With every slot in use the uplink is not counted
    /// (slot 0); it is still guarded.
    fn claim_slot(&mut self, slots: &mut BTreeMap<u32, u16>, uplink: u32) -> Result<u16> {
        let first_free =
            |taken: &BTreeSet<u16>| (1..MAX_UPLINKS as u16).find(|slot| !taken.contains(slot));
        let mut free = first_free(&slots.values().copied().collect());
        if free.is_none() {
            let referenced = self
                .entries_with_slots()?
                .values()
                .map(|entry| entry.counter_slot)
                .collect();
            free = first_free(&referenced);
            if let Some(free) = free {
                slots.retain(|_, slot| *slot != free);
            }
        }
        let Some(slot) = free else {
            log::warn!("the guard's counters have no free slot: if{uplink} is not counted");
            return Ok(0);
        };
        let owned: [u8; SLOT_LEN] = bytemuck::cast(CounterSlot {
            uplink_ifindex: uplink,
            ..CounterSlot::default()
        });
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let values = PerCpuValues::try_from(vec![owned; cpus])?;
        self.counters
            .set(u32::from(slot), values, 0)
            .with_context(|| format!("cannot claim a counters slot for if{uplink}"))?;
        let zero = PerCpuValues::try_from(vec![[0u8; STEER_COUNTERS_LEN]; cpus])?;
        self.steer_counters
            .set(u32::from(slot), zero, 0)
            .with_context(|| format!("cannot claim a steering counters slot for if{uplink}"))?;
        slots.insert(uplink, slot);
        Ok(slot)
    }
}

fn open<T: TryFrom<Map, Error = MapError>>(pin_dir: &Path, name: &str) -> Result<T> {
    let path: PathBuf = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the pinned map {}: {e}; {}",
            path.display(),
            privilege_hint("is `multihome run` running, or was it started with this --pin-dir?")
        )
    })?;
    let map = Map::from_map_data(data)
        .with_context(|| format!("cannot identify the map pinned at {}", path.display()))?;
    T::try_from(map).with_context(|| {
        format!(
            "{} is not multihome's {name} map; remove it (multihome cleanup) and restart",
            path.display()
        )
    })
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
