//! The multicast subscription: kernel notifications as `model::Event`s, and the loss of sync.
//!
//! How ENOBUFS surfaces in rtnetlink 0.24 / netlink-proto 0.14: the kernel does not block for a
//! slow reader of multicast messages; when the socket's receive buffer is full it drops them and
//! the next `recvfrom` fails with ENOBUFS. netlink-proto's `NetlinkFramed` turns that error into a
//! synthetic message (type NLMSG_OVERRUN, payload `NetlinkPayload::Overrun`, sequence 0, port 0),
//! which no request matches, so it arrives on the unsolicited-messages channel like any event;
//! the connection stays up. Any other receive error ends the connection task, which closes that
//! channel. `Events::next` reports both as `Notice::SyncLost` (re-subscribing in the second case),
//! since either way notifications were missed and only a full dump resynchronises.
//! NETLINK_NO_ENOBUFS is left off: it would hide the loss.

use std::io;
use std::os::fd::AsRawFd;

use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::SocketAddr;
use rtnetlink::MulticastGroup;
use tokio::task::JoinHandle;

use super::{convert, Error};
use crate::model::Event;

/// The groups multihome follows: links, IPv4/IPv6 addresses, routes and rules.
const GROUPS: [MulticastGroup; 7] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Rule,
    MulticastGroup::Ipv6Rule,
];

/// A receive buffer that absorbs the burst of a link flap on a busy host (every route of every
/// table is announced again), so that a re-dump stays the exception.
pub(crate) const DEFAULT_RECEIVE_BUFFER: usize = 4 << 20;

/// What the subscription reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Event(Event),
    /// Notifications were lost (ENOBUFS, or the socket failed and was reopened): dump again.
    SyncLost,
}

/// A multicast subscription to rtnetlink, in the namespace of the thread that subscribed.
pub struct Events {
    receive_buffer: Option<usize>,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connection: JoinHandle<()>,
}

impl Events {
    /// Subscribes on the current tokio runtime. `receive_buffer` sets SO_RCVBUF in bytes
    /// (SO_RCVBUFFORCE, so that root may exceed net.core.rmem_max; plain SO_RCVBUF without
    /// CAP_NET_ADMIN); `None` keeps the system default.
    pub fn subscribe(receive_buffer: Option<usize>) -> Result<Events, Error> {
        let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(&GROUPS)?;
        if let Some(size) = receive_buffer {
            set_receive_buffer(conn.socket_mut(), size)?;
        }
        Ok(Events {
            receive_buffer,
            messages,
            connection: tokio::spawn(conn),
        })
    }

    /// The next notice; notifications that translate to no `Event` are skipped. Fails only when
    /// the socket had to be reopened and could not be.
    pub async fn next(&mut self) -> Result<Notice, Error> {
        loop {
            let Some((msg, _)) = self.messages.next().await else {
                *self = Events::subscribe(self.receive_buffer)?;
                return Ok(Notice::SyncLost);
            };
            match msg.payload {
                NetlinkPayload::Overrun(_) => return Ok(Notice::SyncLost),
                NetlinkPayload::InnerMessage(m) => {
                    if let Some(event) = convert::event(m) {
                        return Ok(Notice::Event(event));
                    }
                }
                _ => {}
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn set_receive_buffer(socket: &impl AsRawFd, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: a valid socket, and a c_int option value of the given length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|e| match e.raw_os_error() {
        Some(libc::EPERM) => set(libc::SO_RCVBUF),
        _ => Err(e),
    })
}
