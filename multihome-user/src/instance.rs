//! One daemon per network namespace and protocol: two would fight over the same rules. The
//! claim is an abstract unix socket, which lives in the network namespace, needs no file, and
//! is released by the kernel however the daemon ends (a crash included).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

/// Held for the daemon's lifetime.
pub(crate) struct Instance {
    _socket: UnixListener,
}

/// Claims the namespace for `protocol`, or says that another daemon holds it.
pub(crate) fn claim(protocol: u8) -> Result<Instance, String> {
    let name = format!("multihome/{protocol}");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(Instance { _socket: socket }),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => Err(format!(
            "another multihome run (protocol {protocol}) is already running in this network \
             namespace: stop it first (systemctl stop multihome) or give this one another --protocol"
        )),
        Err(err) => Err(format!("cannot claim the instance socket @{name}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_until_the_first_is_dropped() {
        // Protocol 200: unlikely to collide with a daemon running on the test machine.
        let first = claim(200).unwrap();
        let refused = claim(200).err().unwrap();
        assert!(refused.contains("already running"), "{refused}");
        drop(first);
        claim(200).unwrap();
    }
}
