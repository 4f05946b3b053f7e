//! multihome: keeps source-based egress right on hosts with several uplinks.
//!
//! The pure core (`view`, `plan`, `diff`) decides; the edges (`netlink`, `guard`) talk to the
//! kernel; `daemon` wires them together for `multihome run`.

pub mod check;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod defaults;
pub mod diff;
mod error;
#[cfg(test)]
mod fixtures;
pub mod generate;
pub mod guard;
pub mod instance;
pub mod logging;
pub mod model;
pub mod netlink;
pub mod notify;
pub mod ownership;
pub mod plan;
pub mod privileges;
pub mod probe;
pub(crate) mod reconcile;
pub mod report;
mod runtime;
pub mod status;
pub mod view;

pub use error::Fatal;
pub use reconcile::LINGER;
