//! The few traffic-control requests aya does not offer: the guard's cls_bpf filter on a
//! device's egress (found by program name, with its priority and handle, which a replacement in
//! place must name, and the id of the program it runs), whether a device has any filter left,
//! and deleting a clsact qdisc. Blocking rtnetlink on a socket of its own, in the calling
//! thread's network namespace.

use std::io;

use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A cls_bpf filter on a clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Filter {
    pub(super) priority: u16,
    pub(super) handle: u32,
    /// The program's name as the filter carries it (`TCA_BPF_NAME`).
    pub(super) name: Option<String>,
    /// The id of the program it runs (`TCA_BPF_ID`).
    pub(super) program_id: Option<u32>,
}

/// The clsact hooks.
#[derive(Clone, Copy, Debug)]
pub(super) enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> TcHandle {
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: match self {
                Hook::Ingress => TcHandle::MIN_INGRESS,
                Hook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// The filters on `hook` of `ifindex`; none when the device has no clsact qdisc.
pub(super) fn filters(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = hook.parent();
    let replies = request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP)?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficFilter(m) => Some(filter(&m)),
            _ => None,
        })
        // The dump lists each priority's chain head without a handle: not a filter.
        .filter(|f| f.handle != 0)
        .collect())
}

/// The first egress filter of `ifindex` running a program named `name`.
pub(super) fn named_filter(ifindex: u32, name: &str) -> io::Result<Option<Filter>> {
    Ok(filters(ifindex, Hook::Egress)?
        .into_iter()
        .find(|f| f.name.as_deref() == Some(name)))
}

/// Deletes the clsact qdisc of `ifindex`, with whatever filters it holds.
pub(super) fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    request(RouteNetlinkMessage::DelQueueDiscipline(msg), NLM_F_ACK).map(drop)
}

fn filter(m: &TcMessage) -> Filter {
    let mut f = Filter {
        priority: (m.header.info >> 16) as u16,
        handle: u32::from(m.header.handle),
        name: None,
        program_id: None,
    };
    for attribute in &m.attributes {
        if let TcAttribute::Options(options) = attribute {
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => f.name = Some(name.clone()),
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.program_id = Some(*id),
                    _ => {}
                }
            }
        }
    }
    f
}

/// Sends one request and collects its replies until the dump is done or the kernel acks.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut replies = Vec::new();
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < bytes.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(replies),
                    Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                },
                NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len.next_multiple_of(4);
        }
    }
}
