//! Asking the echo service from the host, the way applications do: unbound, bound to a
//! device (`SO_BINDTODEVICE`, as `curl --interface wan2`) or to a source address; over TCP,
//! UDP or HTTP (through curl itself). The answer names the ISP the packet left through.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;

use super::{Isp, ECHO_V4, ECHO_V6};

/// How a connection picks its uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Unbound,
    Device(String),
    Addr(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Http,
}

pub const ALL_PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Http];

const TIMEOUT: Duration = Duration::from_millis(1500);
/// The echo service's port (TCP and UDP); the routers count the datagrams they forward to it.
pub const ECHO_PORT: u16 = 7;

pub fn echo_addr(v6: bool) -> IpAddr {
    if v6 { ECHO_V6 } else { ECHO_V4 }.parse().unwrap()
}

/// The source address the echo service saw, or why there was no answer.
pub fn ask(host: &Netns, via: &Via, proto: Proto, v6: bool) -> Result<IpAddr> {
    let dst = echo_addr(v6);
    let answer = match proto {
        Proto::Http => curl(host, via, dst)?,
        Proto::Tcp | Proto::Udp => host.enter(|| socket_ask(via, proto, dst))?,
    };
    answer
        .trim()
        .parse()
        .with_context(|| format!("echo answered {answer:?}"))
}

/// Which ISP answered (`None`: no answer, or an address that is neither ISP's).
pub fn isp(host: &Netns, via: &Via, proto: Proto, v6: bool) -> Option<Isp> {
    ask(host, via, proto, v6).ok().and_then(Isp::from_wan)
}

fn curl(host: &Netns, via: &Via, dst: IpAddr) -> Result<String> {
    let url = match dst {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    };
    let mut argv = vec!["curl", "-sS", "--max-time", "2"];
    let iface = match via {
        Via::Unbound => None,
        Via::Device(dev) => Some(dev.clone()),
        Via::Addr(addr) => Some(addr.to_string()),
    };
    if let Some(iface) = &iface {
        argv.extend(["--interface", iface.as_str()]);
    }
    argv.push(&url);
    host.run(&argv)
}

fn socket_ask(via: &Via, proto: Proto, dst: IpAddr) -> Result<String> {
    let domain = if dst.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let (ty, protocol) = match proto {
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
        _ => (Type::STREAM, Protocol::TCP),
    };
    let socket = Socket::new(domain, ty, Some(protocol))?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    bind(&socket, via)?;
    let dst = SockAddr::from(SocketAddr::new(dst, ECHO_PORT));
    let mut answer = Vec::new();
    match proto {
        Proto::Udp => {
            socket.connect(&dst)?;
            socket.send(b"?")?;
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
            let n = socket.recv(&mut buf).context("no UDP answer")?;
            // SAFETY: recv initialised the first n bytes.
            answer.extend(buf[..n].iter().map(|b| unsafe { b.assume_init() }));
        }
        _ => {
            socket.connect_timeout(&dst, TIMEOUT)?;
            let mut stream: std::net::TcpStream = socket.into();
            stream.read_to_end(&mut answer)?;
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn bind(socket: &Socket, via: &Via) -> Result<()> {
    match via {
        Via::Unbound => {}
        Via::Device(dev) => socket.bind_device(Some(dev.as_bytes()))?,
        Via::Addr(addr) => socket.bind(&SockAddr::from(SocketAddr::new(*addr, 0)))?,
    }
    Ok(())
}

/// Sends UDP datagrams from `from` to the echo port every `interval` for `duration`
/// (answers are not read): a steady stream whose packets the routers count. Returns how many
/// the host's stack accepted.
pub fn udp_stream(
    host: &Netns,
    from: IpAddr,
    duration: Duration,
    interval: Duration,
) -> Result<u64> {
    host.enter(|| {
        let dst = echo_addr(from.is_ipv6());
        let domain = if from.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
        let dst = SockAddr::from(SocketAddr::new(dst, ECHO_PORT));
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < duration {
            if socket.send_to(b"stream", &dst).is_ok() {
                sent += 1;
            }
            std::thread::sleep(interval);
        }
        if sent == 0 {
            bail!("no datagram from {from} could be sent");
        }
        Ok(sent)
    })
}

/// Waits (bounded) until `via` reaches the echo service through `want` over UDP, TCP and
/// HTTP; returns how long that took. Panics with the last answers and `context` otherwise.
pub fn wait_isp(
    host: &Netns,
    via: &Via,
    v6: bool,
    want: Isp,
    within: Duration,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    crate::daemon::wait_for(
        &format!("{via:?} (v6={v6}) to leave through {want}"),
        within,
        || {
            ALL_PROTOS
                .iter()
                .all(|p| isp(host, via, *p, v6) == Some(want))
                .then_some(())
        },
        || {
            let answers: Vec<String> = ALL_PROTOS
                .iter()
                .map(|p| format!("{p:?}: {:?}", ask(host, via, *p, v6)))
                .collect();
            format!("{}\n{}", answers.join("\n"), context())
        },
    );
    start.elapsed()
}
