//! The daemon's effects: routes and rules through netlink, entries and attachments through the
//! loaded guard, and the real clock.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use anyhow::bail;
use multihome_ebpf::Egress;

use super::Effects;
use crate::guard::{Guard, Hooks};
use crate::model::{Op, Route};
use crate::netlink::Netlink;
use crate::view::{KernelView, Redump};

pub(crate) struct Kernel {
    netlink: Netlink,
    /// `None` in rules-only mode, asked for or forced (the guard could not load).
    guard: Option<Guard>,
}

impl Kernel {
    pub(crate) fn new(netlink: Netlink, guard: Option<Guard>) -> Kernel {
        Kernel { netlink, guard }
    }

    /// The loaded guard, if any.
    pub(crate) fn guard_mut(&mut self) -> Option<&mut Guard> {
        self.guard.as_mut()
    }
}

impl Effects for Kernel {
    async fn dump(&mut self) -> anyhow::Result<KernelView> {
        Ok(self.netlink.dump().await?)
    }

    async fn dump_routes(&mut self, redump: &Redump) -> anyhow::Result<Vec<Route>> {
        Ok(self.netlink.dump_routes_of(redump).await?)
    }

    async fn apply(&mut self, op: &Op) -> anyhow::Result<()> {
        match (op, self.guard.as_mut()) {
            (Op::ReplaceRoute(_) | Op::DelRoute(_) | Op::AddRule(_) | Op::DelRule(_), _) => {
                Ok(self.netlink.apply(op).await?)
            }
            (Op::Attach(ifindex), Some(guard)) => guard.attach(*ifindex),
            (Op::Detach(ifindex), Some(guard)) => guard.detach(*ifindex),
            (Op::PutEntry(addr, egress), Some(guard)) => guard.put_entry(*addr, egress),
            (Op::DelEntry(addr), Some(guard)) => guard.remove_entry(*addr),
            (Op::PutMark(mark, egress), Some(guard)) => guard.put_mark(*mark, egress),
            (Op::DelMark(mark), Some(guard)) => guard.remove_mark(*mark),
            (_, None) => bail!("the guard is not loaded"),
        }
    }

    fn guard_entries(&self) -> anyhow::Result<BTreeMap<IpAddr, Egress>> {
        match &self.guard {
            Some(guard) => guard.entries(),
            None => Ok(BTreeMap::new()),
        }
    }

    fn guard_hooks(&mut self) -> Hooks {
        self.guard.as_mut().map(Guard::hooks).unwrap_or_default()
    }

    fn guard_marks(&self) -> anyhow::Result<BTreeMap<u32, Egress>> {
        match &self.guard {
            Some(guard) => guard.marks(),
            None => Ok(BTreeMap::new()),
        }
    }

    fn restore_pins(&mut self) -> anyhow::Result<()> {
        match &self.guard {
            Some(guard) => guard.restore_pins().map(drop),
            None => Ok(()),
        }
    }

    fn remove_guard(&mut self) -> anyhow::Result<Vec<String>> {
        match self.guard.take() {
            Some(guard) => guard.remove_all(),
            None => Ok(Vec::new()),
        }
    }

    fn background(&self) -> bool {
        self.guard.as_ref().is_some_and(Guard::moves_pending)
    }

    fn background_step(&mut self) {
        if let Some(guard) = &mut self.guard {
            guard.move_one();
        }
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}
