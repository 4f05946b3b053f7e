//! What the TC egress guard and user space share: the pinned maps' layouts, the frame parser and
//! the packet decision. Everything here is `no_std` and free of I/O so the exact code the kernel
//! runs is unit-tested (and fuzzed) on the host.
#![cfg_attr(not(test), no_std)]

pub mod decision;
pub mod frame;
pub mod maps;
pub mod own_sources;
pub mod source_filter;
pub mod steer;

pub use decision::{decide, marked_passes, Packet, Verdict};
pub use frame::{parse, Frame, FrameBytes, Source, Vlan};
pub use maps::{CounterSlot, Counters, Egress, SrcV4, SrcV6};
pub use own_sources::OwnSources;
pub use source_filter::SourceFilter;
pub use steer::{SteerCounters, SteerTarget};
