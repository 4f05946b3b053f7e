//! The "internet": one namespace holding the echo service at 203.0.113.10 and
//! 2001:db8:ffff::10, with a point-to-point link to each router's WAN side.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::daemon::{built_bin, wait_for};
use crate::netns::{Netns, Process};

use super::{Isp, ECHO_V4, ECHO_V6};

pub struct Internet {
    pub ns: Netns,
    _echo: Process,
}

impl Internet {
    pub fn new(dir: &Path) -> Result<Internet> {
        let ns = Netns::new("net")?;
        ns.sh(&format!(
            "ip addr add {ECHO_V4}/32 dev lo && ip -6 addr add {ECHO_V6}/128 dev lo"
        ))?;
        let log = dir.join("echo.log");
        let bin = built_bin("mh-echo");
        let echo = ns.spawn_logged(&[bin.to_str().unwrap()], &log)?;
        wait_for(
            "the echo service",
            Duration::from_secs(5),
            || {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|l| l.contains("ready"))
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        Ok(Internet { ns, _echo: echo })
    }

    /// The internet's side of the link to `isp`'s router (device `to-a`/`to-b`): the
    /// router's default gateway (198.51.100.254, 2001:db8:ffff:X::fe) and the way back to
    /// its WAN address, answered from the echo's address (an unbound UDP reply takes the
    /// route's source, which must be the address the request went to).
    pub(super) fn attach(&self, isp: Isp, router: &Netns) -> Result<()> {
        let dev = format!("to-{}", isp.letter());
        crate::netns::veth(&self.ns, &dev, router, "wan")?;
        self.ns.sh(&format!(
            "ip addr add 198.51.100.254/32 dev {dev} &&
             ip route add {v4}/32 dev {dev} src {ECHO_V4} &&
             ip -6 addr add 2001:db8:ffff:{l}::fe/64 dev {dev} nodad &&
             ip -6 route add {v6}/128 dev {dev} src {ECHO_V6}",
            v4 = isp.wan_v4(),
            v6 = isp.wan_v6(),
            l = isp.letter(),
        ))?;
        Ok(())
    }
}
