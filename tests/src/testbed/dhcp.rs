//! The host's real DHCP clients. systemd-networkd runs as in the seed (`RouteMetric` 10 and
//! 20) in a private mount namespace: a tmpfs over `/run` holds its configuration, its state
//! and a private system bus for `networkctl`; a read-only sysfs of the host namespace tells it
//! there is no udev to wait for. dhclient runs once per uplink with its own lease file and a
//! minimal script that only sets the address and the default route (nothing outside the
//! namespace changes: no resolv.conf, no hostname).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::netns::{Netns, Process};

use super::Isp;

/// Which DHCP client configures the uplinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Networkd,
    Dhclient,
}

pub(super) enum Clients {
    Networkd {
        process: Process,
        log: PathBuf,
    },
    /// One dhclient per uplink (dhclient has no per-interface renew of its own).
    Dhclient {
        dir: PathBuf,
        running: BTreeMap<&'static str, Process>,
    },
}

const NETWORKD: &str = "/lib/systemd/systemd-networkd";

/// Mounts what networkd needs privately, starts the private bus, then becomes networkd.
const NETWORKD_SH: &str = r#"set -e
mount -t tmpfs -o mode=755 tmpfs /run
mount -t sysfs -o ro sysfs /sys
mkdir -p /run/systemd/network /run/systemd/netif /run/dbus
cp "$1"/*.network /run/systemd/network/
chown systemd-network:systemd-network /run/systemd/netif
dbus-daemon --system --fork
export SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=info
exec "$2"
"#;

/// dhclient's script: the lease's address (replacing the previous one, remembered in
/// $STATE) and its default route with the uplink's metric; all gone when the lease is.
const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
plen() { n=0; for o in $(echo "$1" | tr . ' '); do
  case $o in 255) n=$((n+8));; 254) n=$((n+7));; 252) n=$((n+6));; 248) n=$((n+5));;
  240) n=$((n+4));; 224) n=$((n+3));; 192) n=$((n+2));; 128) n=$((n+1));; esac; done; echo $n; }
case "$reason" in
PREINIT) ip link set dev "$interface" up ;;
BOUND|RENEW|REBIND|REBOOT)
  new="$new_ip_address/$(plen "$new_subnet_mask")"
  ip -4 addr replace "$new" dev "$interface" valid_lft "$new_dhcp_lease_time" preferred_lft "$new_dhcp_lease_time"
  old="$(cat "$STATE" 2>/dev/null)"
  if [ -n "$old" ] && [ "$old" != "$new" ]; then ip -4 addr del "$old" dev "$interface"; fi
  echo "$new" > "$STATE"
  for r in $new_routers; do
    ip -4 route replace default via "$r" dev "$interface" metric "$METRIC" proto dhcp; break
  done ;;
EXPIRE|FAIL|RELEASE|STOP)
  old="$(cat "$STATE" 2>/dev/null)"
  [ -n "$old" ] && ip -4 addr del "$old" dev "$interface"
  rm -f "$STATE"
  ip -4 route del default dev "$interface" metric "$METRIC" 2>/dev/null ;;
esac
exit 0
"#;

/// Quick retries, so a returning router is found within seconds.
const DHCLIENT_CONF: &str = "timeout 600;\nretry 1;\ninitial-interval 1;\nbackoff-cutoff 2;\n\
request subnet-mask, broadcast-address, routers;\n";

impl Clients {
    pub(super) fn start(kind: Client, host: &Netns, dir: &Path) -> Result<Clients> {
        match kind {
            Client::Networkd => start_networkd(host, dir),
            Client::Dhclient => {
                let dir = dir.join("dhclient");
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("script"), DHCLIENT_SCRIPT)?;
                std::fs::write(dir.join("conf"), DHCLIENT_CONF)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    dir.join("script"),
                    std::fs::Permissions::from_mode(0o755),
                )?;
                let mut clients = Clients::Dhclient {
                    dir,
                    running: BTreeMap::new(),
                };
                for isp in [Isp::A, Isp::B] {
                    clients.start_dhclient(host, isp)?;
                }
                Ok(clients)
            }
        }
    }

    /// A new lease now. networkd: `networkctl reconfigure` (its `renew` sends the REQUEST
    /// from a socket bound to the leased address, so dnsmasq's broadcast NAK of a refused
    /// address never reaches it and it would wait for T2); dhclient: restarted on its lease
    /// file (it asks for the old address first, as after a reboot).
    pub(super) fn renew(&mut self, host: &Netns, isp: Isp) -> Result<()> {
        match self {
            Clients::Networkd { .. } => self.networkctl(&["reconfigure", isp.uplink()]),
            Clients::Dhclient { running, .. } => {
                if let Some(p) = running.remove(isp.uplink()) {
                    p.stop(libc::SIGKILL)?;
                }
                self.start_dhclient(host, isp)
            }
        }
    }

    /// The client drops the lease (and, the router being silent, gets none back).
    pub(super) fn release(&mut self, host: &Netns, isp: Isp) -> Result<()> {
        match self {
            Clients::Networkd { .. } => self.networkctl(&["reconfigure", isp.uplink()]),
            Clients::Dhclient { running, dir } => {
                // `dhclient -r` stops the running instance (pid file) and runs RELEASE.
                let mut cmd = host.command("dhclient");
                cmd.arg("-r").args(dhclient_args(dir, isp));
                let out = cmd.output()?;
                if !out.status.success() {
                    bail!("dhclient -r: {}", String::from_utf8_lossy(&out.stderr));
                }
                if let Some(mut p) = running.remove(isp.uplink()) {
                    if p.running() {
                        p.stop(libc::SIGKILL)?;
                    }
                }
                let _ = host;
                Ok(())
            }
        }
    }

    /// The uplink came back (up again, or re-created): networkd sees it by itself; dhclient
    /// is (re)started, as ifupdown's `ifup` would.
    pub(super) fn link_returned(&mut self, host: &Netns, isp: Isp) -> Result<()> {
        match self {
            Clients::Networkd { .. } => Ok(()),
            Clients::Dhclient { .. } => self.renew(host, isp),
        }
    }

    /// `networkctl ARGS` on networkd's private bus.
    pub(super) fn networkctl(&self, args: &[&str]) -> Result<()> {
        let Clients::Networkd { process, .. } = self else {
            bail!("networkctl needs the systemd-networkd testbed");
        };
        let pid = process.pid().to_string();
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", "networkctl"])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "networkctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The end of the client's log, for failure messages.
    pub(super) fn log_tail(&self) -> String {
        let text = match self {
            Clients::Networkd { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            Clients::Dhclient { dir, .. } => ["wan1", "wan2"]
                .iter()
                .map(|w| std::fs::read_to_string(dir.join(format!("{w}.log"))).unwrap_or_default())
                .collect(),
        };
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "\n--- DHCP client log (end) ---\n{}\n",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    fn start_dhclient(&mut self, host: &Netns, isp: Isp) -> Result<()> {
        let Clients::Dhclient { dir, running } = self else {
            unreachable!("dhclient testbed")
        };
        let args = dhclient_args(dir, isp);
        let mut argv = vec!["dhclient", "-d", "-v"];
        argv.extend(args.iter().map(String::as_str));
        let log = dir.join(format!("{}.log", isp.uplink()));
        let process = host
            .spawn_logged(&argv, &log)
            .context("starting dhclient")?;
        running.insert(isp.uplink(), process);
        Ok(())
    }
}

/// Everything a dhclient invocation for `isp`'s uplink shares: private files, the script
/// and its variables, the interface.
fn dhclient_args(dir: &Path, isp: Isp) -> Vec<String> {
    let wan = isp.uplink();
    let file = |ext: &str| dir.join(format!("{wan}.{ext}")).display().to_string();
    vec![
        "-4".into(),
        "-cf".into(),
        dir.join("conf").display().to_string(),
        "-sf".into(),
        dir.join("script").display().to_string(),
        "-lf".into(),
        file("leases"),
        "-pf".into(),
        file("pid"),
        "-e".into(),
        format!("METRIC={}", isp.metric()),
        "-e".into(),
        format!("STATE={}", file("addr")),
        wan.into(),
    ]
}

fn start_networkd(host: &Netns, dir: &Path) -> Result<Clients> {
    let conf = dir.join("networkd");
    std::fs::create_dir_all(&conf)?;
    for isp in [Isp::A, Isp::B] {
        let wan = isp.uplink();
        let metric = isp.metric();
        std::fs::write(
            conf.join(format!("10-{wan}.network")),
            format!(
                "[Match]\nName={wan}\n\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=yes\n\n\
                 [DHCPv4]\nRouteMetric={metric}\n\n[IPv6AcceptRA]\nRouteMetric={metric}\n"
            ),
        )?;
    }
    let log = dir.join("networkd.log");
    let conf_arg = conf.display().to_string();
    let process = host.spawn_logged(
        &[
            "unshare",
            "-m",
            "sh",
            "-c",
            NETWORKD_SH,
            "sh",
            &conf_arg,
            NETWORKD,
        ],
        &log,
    )?;
    Ok(Clients::Networkd { process, log })
}
