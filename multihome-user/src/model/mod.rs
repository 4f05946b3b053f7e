//! The domain types every layer shares: the kernel's objects and events (`kernel`), and what
//! multihome owns or wants with the operations between the two (`ops`).

mod kernel;
mod ops;

pub use kernel::{
    Address, AddressFlags, Event, Family, Link, LinkKind, Route, Rule, RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE, RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN, RT_TABLE_UNSPEC,
};
pub use ops::{Op, State};
