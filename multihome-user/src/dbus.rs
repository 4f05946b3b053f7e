//! A minimal, blocking D-Bus client: enough to ask systemd a few properties (see `stop`).
//! Written out rather than pulled in as a crate, as `notify` is: zbus cannot talk to PID 1's
//! private socket (PID 1 stamps its replies with a well-known name as sender, which zbus's
//! peer-to-peer mode refuses), and the system bus it can use is gone late in a shutdown.
//!
//! One connection, AUTH EXTERNAL, METHOD_CALLs with string arguments, replies decoded for the
//! types the properties asked here have (`s`, `o`, `u`, `(uo)`), little-endian only (every
//! target multihome runs on). Two things the wire needs that are easy to get wrong: `BEGIN`
//! goes out with `AUTH`, before the server's `OK`, as sd-bus's own client sends it (sent after
//! `OK`, it can reach PID 1 in one read with the first message, which then waits unanswered
//! until more bytes arrive); and a connection receives signals nobody asked for, so replies
//! are matched by their serial.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// PID 1's peer-to-peer socket (what `systemctl` uses as root): no bus daemon, no `Hello`.
pub(crate) const SYSTEMD_PRIVATE: &str = "/run/systemd/private";
/// The system bus, for when the private socket cannot be reached.
pub(crate) const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// Larger than any reply to the calls made here.
const MAX_MESSAGE: usize = 1 << 20;

/// A decoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// `s`, `o` or `g`.
    Str(String),
    /// `u` (and `b`).
    U32(u32),
    /// `(uo)`: a unit's `Job` property, (0, "/") when it has none.
    Job(u32, String),
}

/// One authenticated connection.
pub(crate) struct Connection {
    stream: UnixStream,
    serial: u32,
    /// Through a bus daemon: messages carry a destination, and the first one is `Hello`.
    bus: bool,
    deadline: Instant,
}

fn fail(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Connection {
    /// Connects to the socket at `path` and authenticates as this process's uid; on a bus
    /// (`bus`), says `Hello`. Every read and write gives up at `deadline`.
    pub(crate) fn open(path: &str, bus: bool, deadline: Instant) -> io::Result<Connection> {
        let stream = UnixStream::connect(path)?;
        let mut conn = Connection {
            stream,
            serial: 0,
            bus,
            deadline,
        };
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() }.to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        conn.arm()?;
        conn.stream
            .write_all(format!("\0AUTH EXTERNAL {hex}\r\nBEGIN\r\n").as_bytes())?;
        let line = conn.auth_line()?;
        if !line.starts_with("OK ") {
            return Err(fail(format!("authentication refused: {line}")));
        }
        if bus {
            conn.call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "Hello",
                &[],
            )?;
        }
        Ok(conn)
    }

    /// Sets the socket's timeouts to what is left until the deadline.
    fn arm(&self) -> io::Result<()> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.set_write_timeout(Some(left))
    }

    fn auth_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8];
        while !line.ends_with(b"\r\n") {
            self.stream.read_exact(&mut byte)?;
            line.push(byte[0]);
            if line.len() > 512 {
                return Err(fail("authentication reply too long"));
            }
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Calls `member` with string arguments; returns the reply's first value, if any.
    pub(crate) fn call(
        &mut self,
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: &[&str],
    ) -> io::Result<Option<Value>> {
        self.serial += 1;
        let call = Call {
            serial: self.serial,
            destination: self.bus.then_some(destination),
            path,
            interface,
            member,
            args,
        };
        self.arm()?;
        self.stream.write_all(&call.encode())?;
        loop {
            let message = self.read_message()?;
            let reply = Reply::decode(&message)?;
            if reply.reply_serial != Some(self.serial) {
                continue; // a signal, or anything else not answering us
            }
            return reply.result();
        }
    }

    /// `org.freedesktop.DBus.Properties.Get` of systemd's object `path`.
    pub(crate) fn property(
        &mut self,
        path: &str,
        interface: &str,
        name: &str,
    ) -> io::Result<Value> {
        self.call(
            "org.freedesktop.systemd1",
            path,
            "org.freedesktop.DBus.Properties",
            "Get",
            &[interface, name],
        )?
        .ok_or_else(|| fail(format!("{name}: no value in the reply")))
    }

    fn read_message(&mut self) -> io::Result<Vec<u8>> {
        self.arm()?;
        let mut message = vec![0u8; 16];
        self.stream.read_exact(&mut message)?;
        let total = message_len(&message)?;
        message.resize(total, 0);
        self.stream.read_exact(&mut message[16..])?;
        Ok(message)
    }
}

/// The length of the whole message whose fixed header is `head` (16 bytes).
fn message_len(head: &[u8]) -> io::Result<usize> {
    if head[0] != b'l' {
        return Err(fail("a big-endian message"));
    }
    let body = u32_at(head, 4) as usize;
    let fields = u32_at(head, 12) as usize;
    let total = (16 + fields).div_ceil(8) * 8 + body;
    if total > MAX_MESSAGE {
        return Err(fail(format!("a message of {total} bytes")));
    }
    Ok(total)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A METHOD_CALL.
struct Call<'a> {
    serial: u32,
    /// Only through a bus daemon.
    destination: Option<&'a str>,
    path: &'a str,
    interface: &'a str,
    member: &'a str,
    args: &'a [&'a str],
}

impl Call<'_> {
    fn encode(&self) -> Vec<u8> {
        let mut body = Writer::default();
        for arg in self.args {
            body.string(arg);
        }
        let mut m = Writer::default();
        m.0.extend_from_slice(&[b'l', 1, 0, 1]);
        m.u32(body.0.len() as u32);
        m.u32(self.serial);
        m.u32(0); // the header fields' length, filled in below
        let start = m.0.len();
        m.field(1, 'o', self.path);
        m.field(2, 's', self.interface);
        m.field(3, 's', self.member);
        if let Some(destination) = self.destination {
            m.field(6, 's', destination);
        }
        if !self.args.is_empty() {
            m.field(8, 'g', &"s".repeat(self.args.len()));
        }
        let fields = (m.0.len() - start) as u32;
        m.0[12..16].copy_from_slice(&fields.to_le_bytes());
        m.align(8);
        m.0.extend_from_slice(&body.0);
        m.0
    }
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn align(&mut self, n: usize) {
        while !self.0.len().is_multiple_of(n) {
            self.0.push(0);
        }
    }

    fn u32(&mut self, v: u32) {
        self.align(4);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// `s` and `o`.
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }

    /// `g`.
    fn signature(&mut self, s: &str) {
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }

    fn field(&mut self, code: u8, kind: char, value: &str) {
        self.align(8);
        self.0.push(code);
        self.signature(&kind.to_string());
        match kind {
            'g' => self.signature(value),
            _ => self.string(value),
        }
    }
}

/// What a received message says, as far as a caller waiting for a reply cares.
struct Reply {
    kind: u8,
    reply_serial: Option<u32>,
    error: Option<String>,
    /// The body's first value.
    value: Option<Value>,
}

impl Reply {
    fn decode(message: &[u8]) -> io::Result<Reply> {
        let fields_end = 16 + u32_at(message, 12) as usize;
        let mut r = Reader {
            bytes: message,
            at: 16,
        };
        let (mut reply_serial, mut error, mut signature) = (None, None, String::new());
        while r.at < fields_end {
            r.align(8);
            let code = r.byte()?;
            let kind = r.signature()?;
            match (code, r.value(&kind)?) {
                (4, Value::Str(name)) => error = Some(name),
                (5, Value::U32(serial)) => reply_serial = Some(serial),
                (8, Value::Str(sig)) => signature = sig,
                _ => {}
            }
        }
        r.align(8);
        let value = match signature.get(..1) {
            None => None,
            // The body's first complete type; `v` unwraps to its content.
            Some(_) => Some(r.value(first_type(&signature))?),
        };
        Ok(Reply {
            kind: message[1],
            reply_serial,
            error,
            value,
        })
    }

    fn result(self) -> io::Result<Option<Value>> {
        match (self.kind, self.error) {
            (2, _) => Ok(self.value),
            (3, Some(name)) => Err(fail(match self.value {
                Some(Value::Str(text)) => format!("{name}: {text}"),
                _ => name,
            })),
            (kind, _) => Err(fail(format!("unexpected reply of type {kind}"))),
        }
    }
}

/// The first complete type of a signature (only what `Reader::value` knows).
fn first_type(signature: &str) -> &str {
    if signature.starts_with("(uo)") {
        "(uo)"
    } else {
        &signature[..1]
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn align(&mut self, n: usize) {
        self.at = self.at.div_ceil(n) * n;
    }

    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let slice =
            (self.bytes.get(self.at..self.at + n)).ok_or_else(|| fail("truncated message"))?;
        self.at += n;
        Ok(slice)
    }

    fn byte(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> io::Result<u32> {
        self.align(4);
        Ok(u32_at(self.take(4)?, 0))
    }

    fn string(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.take(1)?;
        Ok(s)
    }

    fn signature(&mut self) -> io::Result<String> {
        let n = self.byte()? as usize;
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.take(1)?;
        Ok(s)
    }

    fn value(&mut self, kind: &str) -> io::Result<Value> {
        Ok(match kind {
            "s" | "o" => Value::Str(self.string()?),
            "g" => Value::Str(self.signature()?),
            "u" | "b" => Value::U32(self.u32()?),
            "(uo)" => {
                self.align(8);
                let id = self.u32()?;
                Value::Job(id, self.string()?)
            }
            "v" => {
                let inner = self.signature()?;
                return self.value(first_type(&inner));
            }
            other => return Err(fail(format!("a value of type {other}, not decoded here"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    /// A METHOD_RETURN as a peer would send it: `(uo)` in a variant, with a SENDER field
    /// before the REPLY_SERIAL (PID 1 sets one on its private socket).
    fn job_reply(serial: u32) -> Vec<u8> {
        let mut body = Writer::default();
        body.signature("(uo)");
        body.align(8);
        body.u32(36);
        body.string("/org/freedesktop/systemd1/job/36");
        let mut m = Writer::default();
        m.0.extend_from_slice(&[b'l', 2, 1, 1]);
        m.u32(body.0.len() as u32);
        m.u32(9);
        m.u32(0);
        let start = m.0.len();
        m.field(7, 's', "org.freedesktop.systemd1");
        m.align(8);
        m.0.extend_from_slice(&[5, 1, b'u', 0]);
        m.u32(serial);
        m.field(8, 'g', "v");
        let fields = (m.0.len() - start) as u32;
        m.0[12..16].copy_from_slice(&fields.to_le_bytes());
        m.align(8);
        m.0.extend_from_slice(&body.0);
        m.0
    }

    #[test]
    fn a_reply_is_matched_by_its_serial_and_its_variant_unwrapped() {
        let message = job_reply(3);
        assert_eq!(message_len(&message[..16]).unwrap(), message.len());
        let reply = Reply::decode(&message).unwrap();
        assert_eq!(reply.reply_serial, Some(3));
        assert_eq!(
            reply.result().unwrap(),
            Some(Value::Job(36, "/org/freedesktop/systemd1/job/36".into()))
        );
    }

    #[test]
    fn a_call_is_encoded_as_the_specification_lays_it_out() {
        let call = Call {
            serial: 7,
            destination: None,
            path: "/org/freedesktop/systemd1/unit/self",
            interface: "org.freedesktop.DBus.Properties",
            member: "Get",
            args: &["org.freedesktop.systemd1.Unit", "Job"],
        };
        let bytes = call.encode();
        assert_eq!(&bytes[..4], &[b'l', 1, 0, 1]);
        assert_eq!(u32_at(&bytes, 8), 7);
        assert_eq!(message_len(&bytes[..16]).unwrap(), bytes.len());
        // The body: two strings, each a length, the bytes and a NUL, the second 4-aligned.
        let body = &bytes[bytes.len() - u32_at(&bytes, 4) as usize..];
        assert_eq!(u32_at(body, 0), 29);
        assert_eq!(&body[4..33], b"org.freedesktop.systemd1.Unit");
        assert_eq!(u32_at(body, 36), 3);
        assert_eq!(&body[40..44], b"Job\0");
    }

    /// A private session bus (`dbus-daemon --session`), stopped on drop.
    struct Bus {
        child: Child,
        address: String,
    }

    impl Bus {
        fn start() -> Bus {
            let mut child = Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("dbus-daemon (package dbus-daemon; `cargo xtask setup` installs it)");
            let mut out = child.stdout.take().unwrap();
            let mut address = Vec::new();
            let mut byte = [0u8];
            while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                address.push(byte[0]);
            }
            Bus {
                child,
                address: String::from_utf8(address).unwrap(),
            }
        }

        /// The socket path of a `unix:path=...` address.
        fn path(&self) -> &str {
            self.address
                .strip_prefix("unix:path=")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("not a unix:path= address: {}", self.address))
        }
    }

    impl Drop for Bus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The client against a real bus daemon: authentication, Hello, a reply among the signals
    /// the bus sends unasked (NameAcquired), and an error reply.
    #[test]
    fn talks_to_a_real_bus_daemon() {
        let bus = Bus::start();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut conn = Connection::open(bus.path(), true, deadline).unwrap();
        let owner = conn
            .call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetNameOwner",
                &["org.freedesktop.DBus"],
            )
            .unwrap();
        assert_eq!(owner, Some(Value::Str("org.freedesktop.DBus".into())));
        let err = conn
            .call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetNameOwner",
                &["org.example.Nobody"],
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("org.freedesktop.DBus.Error.NameHasNoOwner"),
            "{err}"
        );
    }
}
