//! The seed topology in network namespaces, with real DHCP: two home routers (`isp-a`,
//! `isp-b`) running dnsmasq on the *same* 192.168.0.0/24 with gateway 192.168.0.1 and
//! distinct IPv6 prefixes, each masquerading to its own WAN address towards an "internet" that
//! echoes the caller's address; the host's uplinks `wan1`/`wan2` configured by
//! systemd-networkd or dhclient. Everything lives in namespaces the testbed made, and every
//! process it starts stops when it drops (the namespaces' removal kills what runs inside).
//!
//! Used by the end-to-end tests, the demo and the benchmarks.

mod dhcp;
mod internet;
pub mod probe;
mod router;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::daemon::wait_for;
use crate::netns::{require_root, Netns};

pub use dhcp::Client;
pub use internet::Internet;
pub use router::{Lease, Router};

/// The two ISPs; `A` is behind `wan1` (metric 10), `B` behind `wan2` (metric 20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isp {
    A,
    B,
}

impl Isp {
    /// The router's WAN addresses: what the echo service sees after its masquerade.
    pub fn wan_v4(self) -> IpAddr {
        match self {
            Isp::A => "198.51.100.1".parse().unwrap(),
            Isp::B => "198.51.100.2".parse().unwrap(),
        }
    }

    pub fn wan_v6(self) -> IpAddr {
        match self {
            Isp::A => "2001:db8:ffff:a::1".parse().unwrap(),
            Isp::B => "2001:db8:ffff:b::1".parse().unwrap(),
        }
    }

    /// Which ISP an echo answer names, if any.
    pub fn from_wan(addr: IpAddr) -> Option<Isp> {
        [Isp::A, Isp::B]
            .into_iter()
            .find(|isp| isp.wan_v4() == addr || isp.wan_v6() == addr)
    }

    /// The host's uplink towards this ISP.
    pub fn uplink(self) -> &'static str {
        match self {
            Isp::A => "wan1",
            Isp::B => "wan2",
        }
    }

    /// The DHCP route metric the host's client gives the uplink (as in the seed).
    pub fn metric(self) -> u32 {
        match self {
            Isp::A => 10,
            Isp::B => 20,
        }
    }

    /// The IPv6 prefix router advertisements hand out on the LAN: 2001:db8:a::/64, ...:b::/64.
    fn letter(self) -> char {
        match self {
            Isp::A => 'a',
            Isp::B => 'b',
        }
    }
}

impl fmt::Display for Isp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ISP {:?}", self)
    }
}

/// The echo service's addresses in the "internet".
pub const ECHO_V4: &str = "203.0.113.10";
pub const ECHO_V6: &str = "2001:db8:ffff::10";

/// How long a DHCP exchange (or router advertisement) may take before a wait fails.
pub const DHCP_TIMEOUT: Duration = Duration::from_secs(20);

/// The whole topology. Drop order: DHCP clients, routers, internet, host, then the scratch
/// directory; each namespace's removal kills whatever still runs inside.
pub struct Testbed {
    dhcp: dhcp::Clients,
    pub a: Router,
    pub b: Router,
    pub internet: Internet,
    pub host: Netns,
    _dir: ScratchDir,
}

impl Testbed {
    /// Brings everything up and waits until both uplinks have an IPv4 lease, a default route
    /// and an IPv6 address from the router advertisements.
    pub fn up(client: Client) -> Result<Testbed> {
        Testbed::boot(client, |_| Ok(())).map(|(bed, ())| bed)
    }

    /// Like `up`, with `first` run in the host namespace before the uplinks exist (their
    /// devices are made when the routers connect): how a host boots with multihome's unit
    /// ordered before networking. Returns what `first` returned beside the bed.
    pub fn boot<T>(
        client: Client,
        first: impl FnOnce(&Netns) -> Result<T>,
    ) -> Result<(Testbed, T)> {
        require_root();
        let host = Netns::new("h")?;
        let dir = ScratchDir::new(host.name())?;
        let internet = Internet::new(&dir.0)?;
        let mut a = Router::new(Isp::A, &internet, &dir.0)?;
        let mut b = Router::new(Isp::B, &internet, &dir.0)?;
        let early = first(&host)?;
        a.connect(&host)?;
        b.connect(&host)?;
        let dhcp = dhcp::Clients::start(client, &host, &dir.0)?;
        let bed = Testbed {
            dhcp,
            a,
            b,
            internet,
            host,
            _dir: dir,
        };
        for isp in [Isp::A, Isp::B] {
            bed.wait_configured(isp);
        }
        Ok((bed, early))
    }

    /// The uplink's global addresses of one family, as the kernel has them now.
    pub fn addresses(&self, isp: Isp, v6: bool) -> Vec<IpAddr> {
        let family = if v6 { "-6" } else { "-4" };
        let out = self
            .host
            .run(&[
                "ip",
                "-o",
                family,
                "addr",
                "show",
                "dev",
                isp.uplink(),
                "scope",
                "global",
            ])
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet" || *w == "inet6")?;
                words.next()?.split('/').next()?.parse().ok()
            })
            .collect()
    }

    /// The uplink's one IPv4 lease address (waits for it).
    pub fn v4(&self, isp: Isp) -> IpAddr {
        self.wait_address(isp, false, |_| true)
    }

    /// The uplink's IPv6 address from its router's prefix (waits for it).
    pub fn v6(&self, isp: Isp) -> IpAddr {
        self.wait_address(isp, true, |_| true)
    }

    /// Waits for an address of the uplink that satisfies `accept` (e.g. "not the old one").
    pub fn wait_address(&self, isp: Isp, v6: bool, accept: impl Fn(IpAddr) -> bool) -> IpAddr {
        wait_for(
            &format!("an address on {}", isp.uplink()),
            DHCP_TIMEOUT,
            || self.addresses(isp, v6).into_iter().find(|a| accept(*a)),
            || self.describe(),
        )
    }

    /// Waits until the uplink has both addresses and its default routes in `main`.
    pub fn wait_configured(&self, isp: Isp) {
        self.v4(isp);
        self.v6(isp);
        for family in ["-4", "-6"] {
            wait_for(
                &format!("the {family} default route of {}", isp.uplink()),
                DHCP_TIMEOUT,
                || {
                    let out = self
                        .host
                        .run(&[
                            "ip",
                            family,
                            "route",
                            "show",
                            "default",
                            "dev",
                            isp.uplink(),
                        ])
                        .unwrap_or_default();
                    (!out.trim().is_empty()).then_some(())
                },
                || self.describe(),
            );
        }
    }

    /// Asks the DHCP client for a new lease on the uplink now (networkd: `networkctl reconfigure`;
    /// dhclient: restarted on its lease file, as a reboot would).
    pub fn renew(&mut self, isp: Isp) -> Result<()> {
        self.dhcp.renew(&self.host, isp)
    }

    /// Renumbers the uplink through DHCP: its router reserves `addr` for the uplink's MAC
    /// address and the client is asked for a new lease; refused the address it holds, it
    /// discovers again and is offered `addr`. Returns without waiting for the new address.
    pub fn renumber(&mut self, isp: Isp, addr: Ipv4Addr) -> Result<()> {
        let link = self
            .host
            .run(&["ip", "-br", "link", "show", isp.uplink()])?;
        let mac = link
            .split_whitespace()
            .nth(2)
            .with_context(|| format!("no MAC address in {link:?}"))?;
        let router = match isp {
            Isp::A => &self.a,
            Isp::B => &self.b,
        };
        router.reserve(mac, addr)?;
        self.renew(isp)
    }

    /// `networkctl reconfigure` (networkd only): networkd re-applies the link's configuration
    /// and deletes every routing policy rule it does not know ("foreign") on the way.
    pub fn reconfigure(&self, isp: Isp) -> Result<()> {
        self.dhcp.networkctl(&["reconfigure", isp.uplink()])
    }

    /// The client gives the lease up (networkd: `networkctl reconfigure` with the router
    /// silent; dhclient: `dhclient -r`): how a lost lease looks to the kernel, without waiting
    /// dnsmasq's two-minute minimum lease.
    pub fn lose_lease(&mut self, isp: Isp) -> Result<()> {
        self.dhcp.release(&self.host, isp)
    }

    /// Takes the uplink down and up again; the DHCP client notices the carrier (networkd) or
    /// is restarted as ifupdown would (dhclient, which does not watch links).
    pub fn flap(&mut self, isp: Isp) -> Result<()> {
        self.host
            .run(&["ip", "link", "set", isp.uplink(), "down"])?;
        std::thread::sleep(Duration::from_millis(500));
        self.host.run(&["ip", "link", "set", isp.uplink(), "up"])?;
        self.dhcp.link_returned(&self.host, isp)
    }

    /// Deletes the uplink device and creates it again (a new ifindex), with the router side.
    pub fn recreate(&mut self, isp: Isp) -> Result<()> {
        self.host.run(&["ip", "link", "del", isp.uplink()])?;
        std::thread::sleep(Duration::from_millis(500));
        let host = &self.host;
        match isp {
            Isp::A => self.a.connect(host)?,
            Isp::B => self.b.connect(host)?,
        }
        self.dhcp.link_returned(&self.host, isp)
    }

    /// multihome's rules on the host (protocol 77), both families, as `ip` prints them.
    pub fn owned_rules(&self) -> String {
        self.host
            .sh("ip -4 rule; ip -6 rule")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("proto 77"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The guard map's source addresses and their uplink ifindex (`pin_dir` of the daemon).
    pub fn guard_entries(pin_dir: &Path) -> Vec<(IpAddr, u32)> {
        multihome::guard::PinnedMaps::open(pin_dir)
            .and_then(|m| m.entries())
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(addr, e)| (addr, e.uplink_ifindex))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What the host has now (addresses, routes, rules): for failure messages.
    pub fn describe(&self) -> String {
        self.host
            .sh("ip -br addr; ip -4 route; ip -6 route; ip -4 rule; ip -6 rule")
            .unwrap_or_else(|e| e.to_string())
            + &self.dhcp.log_tail()
    }
}

/// A scratch directory under the system's temp dir (DHCP leases and logs, dnsmasq's and
/// networkd's files), removed on drop; kept for a look when `MULTIHOME_KEEP_TESTBED` is set
/// (failure messages carry the logs' ends anyway).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Result<ScratchDir> {
        ScratchDir::sweep();
        let path = std::env::temp_dir().join(format!("{name}-bed"));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir(path))
    }
}

impl ScratchDir {
    /// Removes the directories of killed runs: `<namespace>-bed` whose namespace is gone
    /// (`Netns::new` has just swept the namespaces of dead processes).
    fn sweep() {
        let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(ns) = name.strip_suffix("-bed").filter(|n| n.starts_with("mht")) {
                if !Path::new("/run/netns").join(ns).exists()
                    && std::env::var_os("MULTIHOME_KEEP_TESTBED").is_none()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("MULTIHOME_KEEP_TESTBED").is_some() {
            eprintln!("testbed files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
