//! A home router: dnsmasq on its LAN side (DHCPv4 with short leases on 192.168.0.0/24, and
//! router advertisements of its own /64), nftables masquerade to its WAN address, and a
//! counter of the UDP datagrams it forwards to the echo port (to prove where packets went).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::daemon::wait_for;
use crate::netns::{veth, Netns, Process};

use super::internet::Internet;
use super::probe::ECHO_PORT;
use super::Isp;

/// What dnsmasq hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// First and last host number of the pool in 192.168.0.0/24.
    pub pool: (u8, u8),
    /// The gateway announced (option 3); the router must hold the address.
    pub gateway: Ipv4Addr,
}

impl Lease {
    /// What each router hands out at first: the same subnet and gateway, but distinct pools
    /// (100-149 on A, 150-199 on B), since dnsmasq picks the address from a hash of the
    /// client and the same address on both uplinks would make "the uplink of a source
    /// address" meaningless.
    pub fn initial(isp: Isp) -> Lease {
        let pool = match isp {
            Isp::A => (100, 149),
            Isp::B => (150, 199),
        };
        Lease {
            pool,
            gateway: Ipv4Addr::new(192, 168, 0, 1),
        }
    }
}

pub struct Router {
    pub ns: Netns,
    pub isp: Isp,
    dir: PathBuf,
    dnsmasq: Option<Process>,
    lease: Lease,
}

/// How long dnsmasq may take to read its hosts file.
const RESERVE_TIMEOUT: Duration = Duration::from_secs(5);

impl Router {
    pub(super) fn new(isp: Isp, internet: &Internet, dir: &Path) -> Result<Router> {
        let ns = Netns::new(&format!("isp{}", isp.letter()))?;
        internet.attach(isp, &ns)?;
        ns.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 &&
             ip addr add {wan4}/24 dev wan && ip -6 addr add {wan6}/64 dev wan nodad &&
             ip route add default via 198.51.100.254 dev wan &&
             ip -6 route add default via 2001:db8:ffff:{l}::fe dev wan",
            wan4 = isp.wan_v4(),
            wan6 = isp.wan_v6(),
            l = isp.letter(),
        ))?;
        let nft = format!(
            "table inet home {{
                counter echo_udp {{}}
                counter from_lan {{}}
                chain forward {{
                    type filter hook forward priority 0;
                    iifname \"lan\" counter name from_lan
                    iifname \"lan\" udp dport {ECHO_PORT} counter name echo_udp
                }}
                chain postrouting {{
                    type nat hook postrouting priority srcnat;
                    oifname \"wan\" masquerade
                }}
            }}"
        );
        ns.run(&["nft", &nft])?;
        let dir = dir.join(format!("isp-{}", isp.letter()));
        std::fs::create_dir_all(&dir)?;
        Ok(Router {
            ns,
            isp,
            dir,
            dnsmasq: None,
            lease: Lease::initial(isp),
        })
    }

    /// Creates the LAN link to the host (the host's end is the ISP's uplink), gives the LAN
    /// side its addresses and (re)starts dnsmasq on it. Also used after the host deleted
    /// its uplink (which takes the router's end with it).
    pub(super) fn connect(&mut self, host: &Netns) -> Result<()> {
        let wan = self.isp.uplink();
        veth(host, wan, &self.ns, "lan")?;
        // The host side, before any client sees it: a renumbering adds the new address
        // before the old one goes (keep the new one when the old primary is deleted), ARP
        // stays per uplink in the shared subnet, replies redirected by the guard are accepted,
        // and IPv6 skips duplicate detection (a second per address) with the seed's metric
        // for router-advertised defaults.
        host.sh(&format!(
            "sysctl -qw net.ipv4.conf.{wan}.promote_secondaries=1 net.ipv4.conf.{wan}.rp_filter=2 \
             net.ipv4.conf.{wan}.arp_ignore=1 net.ipv4.conf.{wan}.arp_announce=2 \
             net.ipv6.conf.{wan}.accept_dad=0 net.ipv6.conf.{wan}.ra_defrtr_metric={metric}",
            metric = self.isp.metric(),
        ))?;
        self.ns.sh(&format!(
            "ip -6 addr add 2001:db8:{l}::1/64 dev lan nodad",
            l = self.isp.letter()
        ))?;
        let lease = self.lease.clone();
        self.serve(lease)
    }

    /// (Re)starts dnsmasq handing out `lease`, forgetting earlier leases and reservations: a
    /// client renewing an address outside the new pool is refused (dnsmasq is authoritative)
    /// and gets a new one. The LAN side gets the gateway address if it lacks it.
    pub fn serve(&mut self, lease: Lease) -> Result<()> {
        self.stop_dhcp();
        let gw = lease.gateway;
        if !self.lan_addresses()?.contains(&gw) {
            self.ns
                .run(&["ip", "addr", "add", &format!("{gw}/24"), "dev", "lan"])?;
        }
        let leases = self.dir.join("leases");
        let _ = std::fs::remove_file(&leases);
        std::fs::write(self.hosts_file(), "")?;
        let (first, last) = lease.pool;
        let args = [
            "dnsmasq".to_string(),
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--port=0".into(),
            "--user=root".into(),
            "--interface=lan".into(),
            "--bind-interfaces".into(),
            "--log-facility=-".into(),
            "--log-dhcp".into(),
            "--dhcp-authoritative".into(),
            format!("--dhcp-leasefile={}", leases.display()),
            format!("--dhcp-hostsfile={}", self.hosts_file().display()),
            format!("--pid-file={}", self.dir.join("pid").display()),
            format!("--dhcp-range=192.168.0.{first},192.168.0.{last},255.255.255.0,2m"),
            format!("--dhcp-option=option:router,{gw}"),
            "--enable-ra".into(),
            format!(
                "--dhcp-range=2001:db8:{}::,ra-only,64,10m",
                self.isp.letter()
            ),
            "--ra-param=lan,high,4,600".into(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.dnsmasq = Some(
            self.ns
                .spawn_logged(&argv, &self.dir.join("dnsmasq.log"))
                .context("starting dnsmasq")?,
        );
        self.lease = lease;
        Ok(())
    }

    /// Reserves `addr` for the device with MAC address `mac` (a `dhcp-host` line), replacing
    /// any earlier reservation, and returns once dnsmasq has re-read it (SIGHUP): renumbering
    /// one client without restarting the server. Its next request for the address it holds is
    /// refused ("static lease available") and its next discovery is offered `addr`.
    pub fn reserve(&self, mac: &str, addr: Ipv4Addr) -> Result<()> {
        let dnsmasq = self.dnsmasq.as_ref().context("dnsmasq is not running")?;
        let log = self.dir.join("dnsmasq.log");
        let marker = format!("read {}", self.hosts_file().display());
        let reads = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches(&marker)
                .count()
        };
        // dnsmasq reads the (empty) file once at start: wait for that before counting.
        let before = wait_for(
            "dnsmasq's first read of its hosts file",
            RESERVE_TIMEOUT,
            || Some(reads()).filter(|n| *n > 0),
            || format!("no {marker:?} in {}", log.display()),
        );
        std::fs::write(self.hosts_file(), format!("{mac},{addr}\n"))?;
        // SAFETY: kill on our own child's pid, which has not been reaped (we hold it).
        unsafe { libc::kill(dnsmasq.pid() as i32, libc::SIGHUP) };
        wait_for(
            "dnsmasq to re-read its hosts file",
            RESERVE_TIMEOUT,
            || (reads() > before).then_some(()),
            || format!("no new {marker:?} in {}", log.display()),
        );
        Ok(())
    }

    fn hosts_file(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Stops answering DHCP (the router is gone as far as the host's client can tell).
    pub fn stop_dhcp(&mut self) {
        if let Some(p) = self.dnsmasq.take() {
            let _ = p.stop(libc::SIGTERM);
        }
    }

    /// Moves the gateway: the LAN side drops the old address (whatever still routes via it
    /// now goes nowhere) and takes `gateway`, and dnsmasq announces the new one.
    pub fn move_gateway(&mut self, gateway: Ipv4Addr) -> Result<()> {
        self.stop_dhcp();
        let old = self.lease.gateway;
        self.ns
            .run(&["ip", "addr", "del", &format!("{old}/24"), "dev", "lan"])?;
        self.serve(Lease {
            gateway,
            ..self.lease.clone()
        })
    }

    fn lan_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self
            .ns
            .run(&["ip", "-o", "-4", "addr", "show", "dev", "lan"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
            .collect())
    }

    /// UDP datagrams to the echo port this router forwarded from its LAN so far.
    pub fn forwarded_udp(&self) -> Result<u64> {
        self.counter("echo_udp")
    }

    /// Packets of any kind (TCP, UDP, ICMP) this router forwarded from its LAN so far.
    pub fn forwarded(&self) -> Result<u64> {
        self.counter("from_lan")
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let out = self
            .ns
            .run(&["nft", "list", "counter", "inet", "home", name])?;
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "packets")
            .and_then(|_| words.next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no packet count in {out:?}"))
    }
}
