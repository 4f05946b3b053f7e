//! `cargo xtask demo`: the operator's showcase of multihome (planned). Runs setup so the
//! machine is ready, then says it is not built yet.

use anyhow::{bail, Result};

use crate::setup;

pub fn run() -> Result<()> {
    setup::run()?;
    bail!("demo: not built yet (planned: the seed topology in network namespaces, before and after multihome)")
}
