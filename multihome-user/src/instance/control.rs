//! The daemon's control socket, next to its lock file (`net<inode>-protocol<N>.sock`, mode
//! 0600 in a directory only root writes): `multihome reload` (the unit's `ExecReload=`) asks
//! for a reload there and waits for the answer, so that `systemctl reload` returns when the
//! reload is done and reports how it went. A plain SIGHUP does the same reload with nobody
//! waiting: systemd 252 cannot wait for a signal's effect reliably (`Type=notify-reload`
//! arrived in 253).
//!
//! The protocol, one connection per request: the client writes one line (`reload`), the daemon
//! answers with lines of text for the operator and a last line `result: ok` or `result: failed`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Names;

/// The request line.
pub(crate) const RELOAD: &str = "reload";
/// The answer's last line starts with this, followed by `ok` or `failed`.
pub(crate) const RESULT: &str = "result: ";

/// How long a client has to say what it wants: the loop waits for nothing else meanwhile.
const REQUEST_PATIENCE: Duration = Duration::from_secs(2);

/// The listening socket; removed when dropped.
pub(crate) struct Control {
    listener: UnixListener,
    path: PathBuf,
}

/// A client's request for a reload, to be answered.
pub(crate) struct Request {
    stream: UnixStream,
}

impl Control {
    /// Listens at the claim's socket path. Called with the claim held, so a socket file already
    /// there is a dead daemon's and can go.
    pub(crate) fn bind(names: &Names) -> io::Result<Control> {
        let path = names.socket();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Control { listener, path })
    }

    /// The next well-formed request; a client that says something else, or nothing in time,
    /// is told so and dropped.
    pub(crate) async fn next(&self) -> Request {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let read = tokio::time::timeout(REQUEST_PATIENCE, reader.read_line(&mut line)).await;
            let mut stream = reader.into_inner();
            if matches!(read, Ok(Ok(_))) && line.trim() == RELOAD {
                return Request { stream };
            }
            log::warn!("control socket: ignored a request that is not `{RELOAD}`: {line:?}");
            let _ = stream
                .write_all(format!("unknown request\n{RESULT}failed\n").as_bytes())
                .await;
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Request {
    /// Sends `lines` and the result; a client that went away meanwhile is not an error.
    pub(crate) async fn answer(mut self, lines: &[String], ok: bool) {
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        text.push_str(RESULT);
        text.push_str(if ok { "ok\n" } else { "failed\n" });
        if let Err(err) = self.stream.write_all(text.as_bytes()).await {
            log::debug!("the reload's client went away before its answer: {err}");
        }
    }
}
