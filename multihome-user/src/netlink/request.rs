//! Requests on the request socket: dumps and the route/rule operations of `model::Op`.

use std::os::fd::AsRawFd;

use futures::StreamExt;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::Handle;

use super::{convert, Error, Request};
use crate::model::{Op, Route};
use crate::view::{KernelView, Redump};

/// How often a dump is retried when the kernel flags it inconsistent (NLM_F_DUMP_INTR).
const DUMP_ATTEMPTS: usize = 5;

/// A request connection to rtnetlink.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a request socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    pub fn connect() -> Result<Netlink, Error> {
        let (mut conn, handle, _) = rtnetlink::new_connection()?;
        // Acks and Done are forwarded so that a reply stream ending without them can only mean
        // the connection died, which `exchange` reports instead of mistaking it for success.
        conn.set_forward_ack(true);
        conn.set_forward_done(true);
        // Strict checking makes the kernel honour a route dump's table (`dump_routes_of`);
        // without it (before 4.20) the whole dump comes back and is filtered here.
        if let Err(err) = set_strict_check(conn.socket_mut()) {
            log::debug!("netlink strict checking unavailable, dumps are filtered here: {err}");
        }
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Everything multihome looks at: links, IPv4/IPv6 addresses, unicast routes of all tables
    /// and IPv4/IPv6 rules.
    pub async fn dump(&self) -> Result<KernelView, Error> {
        let mut view = KernelView::default();
        for msg in self
            .dump_of(
                "links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .await?
        {
            if let RouteNetlinkMessage::NewLink(m) = msg {
                if let Some(link) = convert::link(&m) {
                    view.links.insert(link.ifindex, link);
                }
            }
        }
        for msg in self
            .dump_of(
                "addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            )
            .await?
        {
            if let RouteNetlinkMessage::NewAddress(m) = msg {
                view.addresses.extend(convert::address(&m));
            }
        }
        view.routes = self.dump_routes().await?;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RuleMessage::default();
            req.header.family = family;
            for msg in self
                .dump_of("rules", RouteNetlinkMessage::GetRule(req))
                .await?
            {
                if let RouteNetlinkMessage::NewRule(m) = msg {
                    view.rules.extend(convert::rule(&m));
                }
            }
        }
        Ok(view)
    }

    /// The unicast routes of all tables, IPv4 and IPv6. The kernel does not announce the IPv4
    /// routes it flushes when a device goes down or an address goes away, so after such events
    /// the routes must be dumped again rather than tracked from notifications.
    async fn dump_routes(&self) -> Result<Vec<Route>, Error> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            routes.extend(self.route_dump("routes", req).await?);
        }
        Ok(routes)
    }

    /// The routes `redump` names: every route, or those of some tables (a table that no longer
    /// exists has none). The caller keeps only what it asked for
    /// (`KernelView::replace_routes`), so a kernel that ignores the table filter costs time only.
    pub async fn dump_routes_of(&self, redump: &Redump) -> Result<Vec<Route>, Error> {
        let tables = match redump {
            Redump::Nothing => return Ok(Vec::new()),
            Redump::All => return self.dump_routes().await,
            Redump::Tables(tables) => tables,
        };
        let mut routes = Vec::new();
        for &(family, table) in tables {
            let mut req = RouteMessage::default();
            req.header.address_family = convert::address_family(family);
            req.header.table = convert::header_table(table);
            req.attributes.push(RouteAttribute::Table(table));
            match self.route_dump("routes of a table", req).await {
                Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => {}
                other => routes.extend(other?),
            }
        }
        Ok(routes)
    }

    /// The unicast routes a GetRoute dump of `req` returns.
    async fn route_dump(&self, what: &'static str, req: RouteMessage) -> Result<Vec<Route>, Error> {
        let msgs = self
            .dump_of(what, RouteNetlinkMessage::GetRoute(req))
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|msg| match msg {
                RouteNetlinkMessage::NewRoute(m) => convert::route(&m),
                _ => None,
            })
            .collect())
    }

    /// Applies one route or rule operation; the others (Attach, Detach, PutEntry, DelEntry,
    /// PutMark, DelMark) are the guard's and give `Error::NotNetlink`.
    ///
    /// Idempotent: ReplaceRoute creates or replaces (NLM_F_CREATE|NLM_F_REPLACE: same table,
    /// destination and metric); AddRule of a rule that exists (EEXIST: checked with NLM_F_EXCL,
    /// without which the kernel adds a duplicate) and deletes of what is gone (ENOENT, ESRCH)
    /// succeed. Deletes name every field, so only that route or rule goes.
    pub async fn apply(&self, op: &Op) -> Result<(), Error> {
        let inexact = || Error::Inexact(op.clone());
        let (msg, flags, absent_ok) = match op {
            Op::ReplaceRoute(r) => (
                RouteNetlinkMessage::NewRoute(convert::route_message(r)),
                NLM_F_CREATE | NLM_F_REPLACE,
                false,
            ),
            Op::DelRoute(r) => (
                RouteNetlinkMessage::DelRoute(convert::route_message(r)),
                0,
                true,
            ),
            Op::AddRule(r) if r.table.is_some() || r.unreachable => (
                RouteNetlinkMessage::NewRule(convert::rule_message(r).ok_or_else(inexact)?),
                NLM_F_CREATE | NLM_F_EXCL,
                false,
            ),
            Op::AddRule(_) => return Err(inexact()),
            Op::DelRule(r) => (
                RouteNetlinkMessage::DelRule(convert::rule_message(r).ok_or_else(inexact)?),
                0,
                true,
            ),
            Op::Attach(_)
            | Op::Detach(_)
            | Op::PutEntry(..)
            | Op::DelEntry(_)
            | Op::PutMark(..)
            | Op::DelMark(_) => return Err(Error::NotNetlink(op.clone())),
        };
        let request = Request::Apply(op.clone());
        match self.exchange(&request, msg, NLM_F_ACK | flags).await {
            Err(Error::Kernel { errno, .. }) if already_done(errno, absent_ok) => Ok(()),
            other => other.map(drop),
        }
    }

    /// A dump, retried while the kernel flags it interrupted by concurrent changes.
    async fn dump_of(
        &self,
        what: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let request = Request::Dump(what);
        for _ in 0..DUMP_ATTEMPTS {
            match self.exchange(&request, msg.clone(), NLM_F_DUMP).await {
                Err(Error::Interrupted(..)) => continue,
                other => return other,
            }
        }
        Err(Error::Interrupted(request, DUMP_ATTEMPTS))
    }

    /// Sends one request and collects its reply up to the final Ack (NLMSG_ERROR 0) or Done.
    async fn exchange(
        &self,
        request: &Request,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let mut msg = NetlinkMessage::from(msg);
        msg.header.flags = NLM_F_REQUEST | flags;
        let mut replies = self
            .handle
            .clone()
            .request(msg)
            .map_err(|_| Error::Closed(request.clone()))?;
        let mut inner = Vec::new();
        let mut interrupted = false;
        while let Some(reply) = replies.next().await {
            interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => inner.push(m),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(inner),
                    Some(code) => {
                        return Err(Error::Kernel {
                            request: request.clone(),
                            errno: -code.get(),
                        })
                    }
                },
                NetlinkPayload::Done(_) if interrupted => {
                    return Err(Error::Interrupted(request.clone(), 1))
                }
                NetlinkPayload::Done(_) => return Ok(inner),
                _ => {}
            }
        }
        Err(Error::Closed(request.clone()))
    }
}

/// Sets NETLINK_GET_STRICT_CHK on a request socket.
fn set_strict_check(socket: &impl AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and a c_int option value of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_GET_STRICT_CHK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a refusal means the operation's effect is already in place.
fn already_done(errno: i32, deleting: bool) -> bool {
    if deleting {
        errno == libc::ENOENT || errno == libc::ESRCH
    } else {
        errno == libc::EEXIST
    }
}

#[cfg(test)]
mod tests {
    use super::already_done;

    #[test]
    fn only_the_matching_refusals_count_as_done() {
        assert!(already_done(libc::EEXIST, false));
        assert!(!already_done(libc::ENOENT, false));
        assert!(already_done(libc::ENOENT, true));
        assert!(already_done(libc::ESRCH, true));
        assert!(!already_done(libc::EEXIST, true));
        assert!(!already_done(libc::EPERM, true));
    }
}
