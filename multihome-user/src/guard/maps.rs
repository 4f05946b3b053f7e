//! Typed access to the pinned maps, usable by the daemon that loaded the guard and by any later
//! process (`status`, `cleanup`) from the pins alone.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, MapError, MapType, PerCpuHashMap};
use multihome_ebpf::{
    maps::{MAP_COUNTERS, MAP_SRC_V4, MAP_SRC_V6, MAX_SOURCES, MAX_UPLINKS},
    Counters, Egress, SrcV4, SrcV6, UplinkKey,
};

use super::privilege_hint;

const EGRESS_LEN: usize = size_of::<Egress>();
const COUNTERS_LEN: usize = size_of::<Counters>();

/// The maps' values as aya sees them: byte arrays, cast to the shared `#[repr(C)]` types with
/// bytemuck (aya's own `Pod` cannot be implemented for another crate's types).
type Sources<const K: usize> = HashMap<MapData, [u8; K], [u8; EGRESS_LEN]>;
type CounterMap = PerCpuHashMap<MapData, [u8; 4], [u8; COUNTERS_LEN]>;

/// What a map pinned under a given name must look like to be reused by a new program.
pub(super) struct Shape {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The three maps the program uses, in the order of `multihome_ebpf::maps`.
pub(super) const SHAPES: [Shape; 3] = [
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
        map_type: MapType::PerCpuHash,
        key_size: size_of::<UplinkKey>() as u32,
        value_size: COUNTERS_LEN as u32,
        max_entries: MAX_UPLINKS,
    },
];

impl Shape {
    /// Whether the map pinned at `path` can be kept: same type, key, value and capacity.
    /// A pin that cannot be opened at all counts as incompatible.
    pub fn fits(&self, path: &Path) -> bool {
        let Ok(info) = aya::maps::MapInfo::from_pin(path) else {
            return false;
        };
        info.map_type().ok() == Some(self.map_type)
            && info.key_size() == self.key_size
            && info.value_size() == self.value_size
            && info.max_entries() == self.max_entries
    }
}

/// The source maps and the counters, opened from their pins.
pub struct PinnedMaps {
    v4: Sources<4>,
    v6: Sources<16>,
    counters: CounterMap,
}

impl PinnedMaps {
    /// Opens the maps pinned under `pin_dir` (by a running or earlier `multihome run`).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            v4: open(pin_dir, MAP_SRC_V4)?,
            v6: open(pin_dir, MAP_SRC_V6)?,
            counters: open(pin_dir, MAP_COUNTERS)?,
        })
    }

    /// Sets where packets with source `addr` must leave.
    pub fn put_entry(&mut self, addr: IpAddr, egress: &Egress) -> Result<()> {
        let value: [u8; EGRESS_LEN] = bytemuck::cast(*egress);
        match addr {
            IpAddr::V4(a) => self.v4.insert(a.octets(), value, 0),
            IpAddr::V6(a) => self.v6.insert(a.octets(), value, 0),
        }
        .with_context(|| format!("cannot write the guard's entry for {addr}"))
    }

    /// Forgets `addr`; removing an absent entry is not an error.
    pub fn remove_entry(&mut self, addr: IpAddr) -> Result<()> {
        let result = match addr {
            IpAddr::V4(a) => self.v4.remove(&a.octets()),
            IpAddr::V6(a) => self.v6.remove(&a.octets()),
        };
        ignore_missing(result)
            .with_context(|| format!("cannot remove the guard's entry for {addr}"))
    }

    /// Every entry, IPv4 and IPv6.
    pub fn entries(&self) -> Result<BTreeMap<IpAddr, Egress>> {
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

    /// Counters per uplink ifindex, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<u32, Counters>> {
        let mut all = BTreeMap::new();
        for item in self.counters.iter() {
            let (key, per_cpu) = item.context("cannot read the guard's counters")?;
            let mut sum = Counters::default();
            for value in per_cpu.iter() {
                sum.add(&bytemuck::cast(*value));
            }
            all.insert(u32::from_ne_bytes(key), sum);
        }
        Ok(all)
    }

    /// Drops the counters of an uplink that is gone (its ifindex will not come back).
    pub fn remove_counters(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.counters.remove(&ifindex.to_ne_bytes()))
            .with_context(|| format!("cannot remove the guard's counters of ifindex {ifindex}"))
    }

    /// Removes every entry and counter.
    pub fn clear(&mut self) -> Result<()> {
        for addr in self.entries()?.into_keys() {
            self.remove_entry(addr)?;
        }
        for ifindex in self.counters()?.into_keys() {
            self.remove_counters(ifindex)?;
        }
        Ok(())
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
