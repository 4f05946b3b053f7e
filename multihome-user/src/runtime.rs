//! The tokio runtime every command runs on: one thread, the caller's. Netlink sockets belong to
//! the network namespace of the thread that opens them, and their connection tasks must run on
//! the runtime that opened them, so nothing here may move work to another thread.

use std::future::Future;

use anyhow::Context;

/// A runtime on the calling thread.
pub(crate) fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs `future` to completion on a current-thread runtime; a runtime that cannot start fails
/// like the future would.
pub(crate) fn block_on<T, E>(future: impl Future<Output = Result<T, E>>) -> Result<T, E>
where
    E: From<anyhow::Error>,
{
    let runtime = current_thread().context("starting the runtime")?;
    runtime.block_on(future)
}
