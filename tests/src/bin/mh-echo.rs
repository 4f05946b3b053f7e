//! The testbed's "internet" service: answers every TCP connection (port 7), HTTP request
//! (port 80) and UDP datagram (port 7) with the address it came from, so a test can tell
//! which ISP's masquerade a packet left through. Dual-stack sockets on `[::]`; IPv4 peers are
//! printed in their plain form. Prints "ready" once every socket is bound.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

fn peer(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

/// Plain TCP: the caller's address, then close.
fn answer_tcp(mut stream: TcpStream, from: SocketAddr) {
    let _ = writeln!(stream, "{}", peer(from));
}

/// HTTP: reads the request head, answers 200 with the caller's address as the body.
fn answer_http(mut stream: TcpStream, from: SocketAddr) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("{}\n", peer(from));
    let _ = write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve_tcp(listener: TcpListener, answer: fn(TcpStream, SocketAddr)) {
    for stream in listener.incoming().flatten() {
        if let Ok(from) = stream.peer_addr() {
            thread::spawn(move || answer(stream, from));
        }
    }
}

fn serve_udp(socket: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{}\n", peer(from)).as_bytes(), from);
        }
    }
}

fn main() -> std::io::Result<()> {
    let tcp = TcpListener::bind("[::]:7")?;
    let http = TcpListener::bind("[::]:80")?;
    let udp = UdpSocket::bind("[::]:7")?;
    println!("ready");
    thread::spawn(move || serve_tcp(tcp, answer_tcp));
    thread::spawn(move || serve_udp(udp));
    serve_tcp(http, answer_http);
    Ok(())
}
