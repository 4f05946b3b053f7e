//! The rtnetlink edge: dumps the kernel's links, addresses, routes and rules into a `KernelView`,
//! turns multicast notifications into `model::Event`s, and applies route and rule `Op`s.
//!
//! Two sockets, on purpose: `Events` (multicast only) and `Netlink` (requests only). A dump's reply
//! then never shares a receive buffer with a burst of notifications, so ENOBUFS can only cost
//! events (answered by a re-dump), never part of a dump or an acknowledgement.
//!
//! Both belong to the network namespace of the thread that creates them, and must be created
//! inside a tokio runtime (each spawns its connection task there).
//!
//! Start-up order for the daemon: `Events::subscribe`, then `Netlink::dump`, then consume events;
//! a change between the two is then seen twice rather than never.

mod convert;
mod events;
mod request;

use std::fmt;
use std::io;

pub(crate) use events::DEFAULT_RECEIVE_BUFFER;
pub use events::{Events, Notice};
pub use request::Netlink;

use anyhow::Context;

use crate::runtime;
use crate::view::KernelView;

use crate::model::Op;

/// The kernel's state, read once: for the commands an operator runs from a shell (`status`,
/// `check`), on a runtime of their own.
pub(crate) fn snapshot() -> anyhow::Result<KernelView> {
    runtime::block_on(async {
        let view = Netlink::connect()?.dump().await?;
        Ok::<_, anyhow::Error>(view)
    })
    .context("reading the kernel's state")
}

/// What an rtnetlink request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened or configured (the cause follows in the error's chain).
    #[error("netlink socket")]
    Socket(#[from] io::Error),
    /// The kernel refused the request with this errno.
    #[error("{request}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel { request: Request, errno: i32 },
    /// The connection closed before the kernel answered (the socket failed): connect anew.
    #[error("{0}: netlink connection closed before the kernel answered")]
    Closed(Request),
    /// A dump kept being interrupted by concurrent changes (NLM_F_DUMP_INTR).
    #[error("{0}: interrupted by concurrent changes {1} times in a row")]
    Interrupted(Request, usize),
    /// `Netlink::apply` only knows route and rule operations; the guard applies the others.
    #[error("{0:?} is not a netlink operation (the guard applies it)")]
    NotNetlink(Op),
    /// A rule with other selectors cannot be named exactly, so it is never added or deleted.
    #[error("{0:?}: a rule with other selectors cannot be added or deleted exactly")]
    Inexact(Op),
}

/// The request an `Error` is about: an operation, or a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Apply(Op),
    Dump(&'static str),
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Apply(op) => write!(f, "{op:?}"),
            Request::Dump(what) => write!(f, "dump of {what}"),
        }
    }
}
