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
pub mod generate;
pub mod guard;
pub mod instance;
pub mod linger;
pub mod logging;
pub mod netlink;
pub mod notify;
pub mod plan;
pub mod privileges;
pub mod probe;
pub mod reconcile;
pub mod report;
pub mod state;
pub mod status;
pub mod view;

/// An error that ends a command with a given exit status: 2 for bad input or a missing
/// privilege (the operator must change something), 1 for everything else.
#[derive(Debug)]
pub struct Fatal {
    pub status: u8,
    pub message: String,
}

impl Fatal {
    /// Bad input or a missing privilege: exit status 2.
    pub fn usage(message: impl std::fmt::Display) -> Fatal {
        Fatal {
            status: 2,
            message: message.to_string(),
        }
    }

    /// A failure at run time: exit status 1.
    pub fn failure(message: impl std::fmt::Display) -> Fatal {
        Fatal {
            status: 1,
            message: message.to_string(),
        }
    }
}

impl From<anyhow::Error> for Fatal {
    fn from(err: anyhow::Error) -> Fatal {
        Fatal::failure(format!("{err:#}"))
    }
}
