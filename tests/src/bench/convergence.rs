//! Convergence: how long after an uplink's address changes the new address is fully routed,
//! for multihome and for the seed's hook reduced to its fastest form, on the same sequence of
//! renumberings of wan2 (every tenth one with a new gateway, as a renewed lease may bring).
//!
//! Timing, per renumbering: `t0` is the watcher's timestamp of RTM_NEWADDR for the new address.
//! "In place" for multihome is: RTM_NEWRULE `from NEW lookup 1002`, the map entry for NEW (read
//! when the rule is seen: the daemon writes the map before the rule, so it must already be
//! there; if not, it is polled for and its time used), and, when the gateway changed, the table
//! default route via the new gateway (RTM_NEWROUTE). The table's prefix route exists throughout
//! (its `src` follows the primary address, which changes when the old address goes).
//! For the baseline it is RTM_NEWRULE `from NEW lookup 100` (its routes do not name the address).
//! Then the old address is deleted and, once no notification has come for 40 ms, the end
//! state is checked with `ip`: rule from NEW present, none from OLD, table default route via the current gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::bed::{two_uplinks, Batch, Multihome, TwoUplinks, GATEWAY, OTHER_GATEWAY, WAN2_ADDR};
use super::report::{ratio, Figure, Row, Section, Summary};
use super::watch::{Note, Watcher, PATIENCE};
use crate::netns::Process;

/// No notification for this long means the system under test has finished reacting.
const QUIET: Duration = Duration::from_millis(40);

/// One renumbering of wan2.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub old: Ipv4Addr,
    pub new: Ipv4Addr,
    /// The gateway the DHCP client switches to before binding the new address.
    pub gateway: Option<Ipv4Addr>,
}

/// `n` renumberings from 192.168.0.20 through 192.168.0.30..229, every tenth with a gateway
/// switch between .1 and .254.
pub fn steps(n: usize) -> Vec<Step> {
    let gateways: [Ipv4Addr; 2] = [GATEWAY.parse().unwrap(), OTHER_GATEWAY.parse().unwrap()];
    let mut old: Ipv4Addr = WAN2_ADDR.parse().unwrap();
    (0..n)
        .map(|i| {
            let new = Ipv4Addr::new(192, 168, 0, 30 + (i % 200) as u8);
            let gateway = (i % 10 == 9).then(|| gateways[(i / 10 + 1) % 2]);
            let step = Step { old, new, gateway };
            old = new;
            step
        })
        .collect()
}

/// What one system did over the sequence.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Milliseconds from the address event to "in place", for each renumbering that got there.
    pub times_ms: Vec<f64>,
    /// Renumberings that were not in place within the patience.
    pub timeouts: u64,
    /// End states that were wrong (rule missing or stale, default route via an old gateway).
    pub wrong: u64,
    pub stale_gateway: u64,
    pub missing_rule: u64,
    /// Map entries not yet there when the rule was (multihome only).
    pub map_late: u64,
}

/// Who keeps wan2's table and rule.
enum System<'a> {
    Multihome { pin_dir: &'a Path },
    Baseline,
}

impl System<'_> {
    fn table(&self) -> u32 {
        match self {
            System::Multihome { .. } => 1002,
            System::Baseline => 100,
        }
    }
}

/// The seed's networkd-dispatcher hook as a shell loop on `ip monitor address`: the same four
/// commands, the gateway from the DHCP client's default route, the /24 prefix by string surgery
/// (no fork), on every new address of wan2. It first sets up the initial state, as the seed's
/// hook did when the link became routable.
fn hook_script(initial: Ipv4Addr) -> String {
    format!(
        r#"exec 2>/dev/null
set -- $(ip -4 route show default dev wan2); GW=$3
ip route add 0.0.0.0/0 dev wan2 via $GW table 100
ip route add {prefix}.0/24 dev wan2 table 100
ip rule add from {initial} table 100 prio 200
ip -o -4 monitor address dev wan2 | while read -r idx dev fam addr rest; do
  [ "$idx" = Deleted ] && continue
  ADDR=${{addr%/*}}
  set -- $(ip -4 route show default dev wan2); GW=$3
  ip rule del table 100 prio 200
  ip route add 0.0.0.0/0 dev wan2 via $GW table 100
  ip route add ${{ADDR%.*}}.0/24 dev wan2 table 100
  ip rule add from $ADDR table 100 prio 200
done
"#,
        prefix = initial.to_string().rsplit_once('.').unwrap().0
    )
}

pub struct Results {
    pub multihome: Outcome,
    pub baseline: Outcome,
}

pub fn run(bin: &Path, n: usize) -> Result<Results> {
    let bed = two_uplinks()?;
    let watcher = Watcher::start(&bed.host)?;
    let mut batch = Batch::start(&bed.host)?;
    let plan = steps(n);

    let daemon = Multihome::start(&bed.host, bin, &["wan1", "wan2"])?;
    let pin_dir = bed.host.pin_dir();
    let multihome = replay(
        &bed,
        &watcher,
        &mut batch,
        &plan,
        &System::Multihome { pin_dir: &pin_dir },
    )
    .context("multihome's run")?;
    daemon.stop()?;

    // Back to the start, then the hook on the same sequence.
    let last = plan.last().map_or(WAN2_ADDR.parse()?, |s| s.new);
    bed.host.sh(&format!(
        "ip addr add {WAN2_ADDR}/24 dev wan2 && ip addr del {last}/24 dev wan2 &&
         ip route replace default via {GATEWAY} dev wan2 metric 20 proto dhcp"
    ))?;
    let hook = bed
        .host
        .spawn(&["sh", "-c", &hook_script(WAN2_ADDR.parse()?)])?;
    wait_rule(&bed.host, WAN2_ADDR, 100)?;
    std::thread::sleep(Duration::from_millis(300)); // `ip monitor` subscribes after that
    let baseline = replay(&bed, &watcher, &mut batch, &plan, &System::Baseline)
        .context("the baseline's run")?;
    drop::<Process>(hook);
    Ok(Results {
        multihome,
        baseline,
    })
}

fn wait_rule(host: &crate::netns::Netns, addr: &str, table: u32) -> Result<()> {
    let start = Instant::now();
    while !host
        .sh("ip -4 rule show")?
        .contains(&format!("from {addr} lookup {table}"))
    {
        if start.elapsed() > PATIENCE {
            anyhow::bail!("no rule from {addr} lookup {table} in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn replay(
    bed: &TwoUplinks,
    watcher: &Watcher,
    batch: &mut Batch,
    plan: &[Step],
    system: &System,
) -> Result<Outcome> {
    let table = system.table();
    let maps = match system {
        System::Multihome { pin_dir } => Some(multihome::guard::PinnedMaps::open(pin_dir)?),
        System::Baseline => None,
    };
    let mut gateway: Ipv4Addr = GATEWAY.parse()?;
    let mut out = Outcome::default();
    for step in plan {
        watcher.drain();
        let mut commands = String::new();
        if let Some(gw) = step.gateway {
            gateway = gw;
            commands += &format!("route replace default via {gw} dev wan2 metric 20 proto dhcp\n");
        }
        commands += &format!("addr add {}/24 dev wan2\n", step.new);
        batch.send(&commands)?;
        let deadline = Instant::now() + PATIENCE;
        let new = IpAddr::V4(step.new);
        let gw = IpAddr::V4(gateway);
        let mut t0 = None;
        let mut rule = None;
        let mut route = step.gateway.is_none() || maps.is_none();
        let mut route_at = None;
        while t0.is_none() || rule.is_none() || !route {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let Ok((at, note)) = watcher.notes.recv_timeout(left) else {
                break;
            };
            match note {
                Note::Addr {
                    added: true, addr, ..
                } if addr == new => t0 = Some(at),
                Note::Rule {
                    added: true,
                    table: t,
                    src: Some(src),
                } if t == table && src == new => rule = Some(at),
                Note::Route {
                    added: true,
                    table: t,
                    dst_len: 0,
                    gateway: Some(g),
                    ..
                } if t == table && g == gw => {
                    route = true;
                    route_at = Some(at);
                }
                _ => {}
            }
        }
        match (t0, rule, route) {
            (Some(t0), Some(rule), true) => {
                let mut done = rule.max(route_at.unwrap_or(rule));
                if let Some(maps) = &maps {
                    if !maps.entries()?.contains_key(&new) {
                        out.map_late += 1;
                        while !maps.entries()?.contains_key(&new) && Instant::now() < deadline {}
                        done = done.max(Instant::now());
                    }
                }
                out.times_ms
                    .push(done.saturating_duration_since(t0).as_secs_f64() * 1e3);
            }
            _ => out.timeouts += 1,
        }
        // The old lease goes; multihome then removes its rule (the hook ignores deletions).
        batch.send(&format!("addr del {}/24 dev wan2", step.old))?;
        let old = IpAddr::V4(step.old);
        let settled = Instant::now() + PATIENCE;
        match system {
            System::Multihome { .. } => watcher.wait(
                settled,
                |n| matches!(n, Note::Rule { added: false, src: Some(s), .. } if *s == old),
            ),
            System::Baseline => watcher.wait(
                settled,
                |n| matches!(n, Note::Addr { added: false, addr, .. } if *addr == old),
            ),
        };
        // Then until nothing moves: the hook also reacts to the promotion of the new address
        // (announced as a new address when the old primary goes).
        watcher.quiet(QUIET, Instant::now() + PATIENCE);
        let state = bed.host.sh(&format!(
            "ip -4 rule show; echo ---; ip -4 route show table {table}"
        ))?;
        let (missing_rule, stale_gateway) = judge(&state, step, gateway, table);
        out.missing_rule += u64::from(missing_rule);
        out.stale_gateway += u64::from(stale_gateway);
        out.wrong += u64::from(missing_rule || stale_gateway);
    }
    Ok(out)
}

/// Whether the end state lacks the rule for the new address (or keeps the old one), and whether
/// the table's default route is via a gateway other than the current one.
pub fn judge(state: &str, step: &Step, gateway: Ipv4Addr, table: u32) -> (bool, bool) {
    let (rules, routes) = state.split_once("---").unwrap_or((state, ""));
    let has = |addr: Ipv4Addr| {
        rules
            .lines()
            .any(|l| l.contains(&format!("from {addr} lookup {table}")))
    };
    let missing_rule = !has(step.new) || has(step.old);
    let stale_gateway = !routes
        .lines()
        .any(|l| l.starts_with(&format!("default via {gateway} dev wan2")));
    (missing_rule, stale_gateway)
}

pub fn section(results: &Results, n: usize) -> Section {
    let mh = Summary::of(&results.multihome.times_ms);
    let base = Summary::of(&results.baseline.times_ms);
    let speedup = ratio(base.map(|s| s.p50), mh.map(|s| s.p50));
    let outcome_rows = |name: &str, o: &Outcome| {
        vec![
            Row::new(
                format!("{name}: wrong end states (missing/stale rule, stale gateway)"),
                Figure::Text(format!(
                    "{} of {n} ({} rule, {} gateway)",
                    o.wrong, o.missing_rule, o.stale_gateway
                )),
            ),
            Row::new(
                format!("{name}: not in place within 2 s"),
                Figure::Count(o.timeouts),
            ),
        ]
    };
    let mut rows = vec![
        Row::new("multihome", Figure::Dist(mh, "ms")).goal("p99 < 1 ms", mh.map(|s| s.p99 < 1.0)),
        Row::new("baseline (ip monitor + sh hook)", Figure::Dist(base, "ms")),
        Row::new("baseline p50 / multihome p50", Figure::Value(speedup, "x"))
            .goal(">= 10x", speedup.map(|r| r >= 10.0)),
    ];
    rows.extend(outcome_rows("multihome", &results.multihome));
    rows.push(Row::new(
        "multihome: map entry not yet there when the rule was",
        Figure::Count(results.multihome.map_late),
    ));
    rows.extend(outcome_rows("baseline", &results.baseline));
    Section {
        title: "Convergence",
        method: format!(
            "{n} renumberings of wan2 (add new address, then delete the old one; every tenth \
             with a gateway switch by `ip route replace` of the DHCP default route first). Time \
             from RTM_NEWADDR of the new address to the last of: RTM_NEWRULE `from NEW`, the \
             map entry (read when the rule is seen), and, on gateway switches, RTM_NEWROUTE of \
             the table's default via the new gateway; all timestamped by a raw rtnetlink \
             watcher in the host namespace. Baseline: the seed's four `ip rule`/`ip route` \
             commands in a sh loop on `ip -o -4 monitor address dev wan2`, same sequence, time \
             to its RTM_NEWRULE. End state checked with `ip rule`/`ip route` after the old \
             address is gone and nothing has moved for 40 ms."
        ),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_chain_addresses_and_switch_gateways_every_tenth() {
        let s = steps(25);
        assert_eq!(s[0].old.to_string(), "192.168.0.20");
        assert_eq!(s[0].new.to_string(), "192.168.0.30");
        assert!(s
            .windows(2)
            .all(|w| w[0].new == w[1].old && w[1].old != w[1].new));
        let switches: Vec<String> = s
            .iter()
            .filter_map(|s| s.gateway.map(|g| g.to_string()))
            .collect();
        assert_eq!(switches, ["192.168.0.254", "192.168.0.1"]);
        assert_eq!(steps(250)[210].new.to_string(), "192.168.0.40");
    }

    #[test]
    fn judge_finds_missing_rules_and_stale_gateways() {
        let step = Step {
            old: "192.168.0.30".parse().unwrap(),
            new: "192.168.0.31".parse().unwrap(),
            gateway: None,
        };
        let gw = "192.168.0.1".parse().unwrap();
        let good = "200:\tfrom 192.168.0.31 lookup 100\n---\ndefault via 192.168.0.1 dev wan2\n";
        assert_eq!(judge(good, &step, gw, 100), (false, false));
        let stale = good.replace("via 192.168.0.1 ", "via 192.168.0.254 ");
        assert_eq!(judge(&stale, &step, gw, 100), (false, true));
        let both = good.replace("---", "200:\tfrom 192.168.0.30 lookup 100\n---");
        assert_eq!(judge(&both, &step, gw, 100), (true, false));
        assert_eq!(judge("---\n", &step, gw, 100), (true, true));
    }
}
