//! multihome: keeps source-based egress right on hosts with several uplinks.
//!
//! The pure core (`view`, `plan`, `diff`) decides; the edges (`netlink`, `guard`) talk to the
//! kernel; `daemon` wires them together for `multihome run`.

pub mod config;
pub mod diff;
pub mod guard;
pub mod netlink;
pub mod plan;
pub mod state;
pub mod view;
