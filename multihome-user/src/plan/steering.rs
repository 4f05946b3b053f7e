//! The steering part of the plan (`multihome exec`, the uplink slices): the policy rules that
//! route a socket carrying an uplink's mark through the uplink's table, and the guard's record
//! of each mark's uplink.
//!
//! Per family, before the `from`/`oif` rules at P (an IPv6 socket whose table is empty would
//! otherwise take a source address of another uplink and match its `from` rule: the kernel's
//! `ip6_dst_lookup_tail` looks up again with a fallback source after an error route):
//!
//! ```text
//! P-4  fwmark M_U lookup T_U suppress_prefixlength 0   per uplink: its own subnets
//! P-3  fwmark BASE/MASK lookup main suppress_prefixlength 0   LAN, containers, local networks
//! P-2  fwmark M_U lookup T_U                           per uplink: its default route
//! P-1  fwmark BASE/MASK unreachable                    no route on its uplink: ENETUNREACH
//! ```
//!
//! The `local` table (rule 0) keeps loopback and the host's own addresses. The own-subnet rule
//! comes before `main` because uplinks share subnets (the seed's 192.168.0.0/24 on both): `main`
//! would send uplink B's traffic for its router to router A. The catch-all makes a marked socket
//! whose uplink has no route fail at once rather than leave through another uplink.

use multihome_ebpf::steer::{mark_of_table, MARK_BASE, MARK_MASK};

use crate::config::Config;
use crate::model::{Family, Rule, RT_TABLE_MAIN};

/// The rules every steered uplink shares, per family: `main` without default routes, then the
/// catch-all. Wanted whenever steering is on, whatever the uplinks.
pub(super) fn shared_rules(config: &Config) -> impl Iterator<Item = Rule> + '_ {
    [Family::V4, Family::V6]
        .into_iter()
        .flat_map(move |family| {
            let rule = |priority, table, unreachable| Rule {
                table,
                unreachable,
                suppress_prefix_len: table.map(|_| 0),
                ..mark_rule(config, family, priority, (MARK_BASE, MARK_MASK))
            };
            [
                rule(config.priority - 3, Some(RT_TABLE_MAIN), false),
                rule(config.priority - 1, None, true),
            ]
        })
}

/// The two rules of an uplink with table `table` and routes of `family`.
pub(super) fn uplink_rules(config: &Config, family: Family, table: u32) -> [Rule; 2] {
    let mark = (mark_of_table(table), u32::MAX);
    [
        Rule {
            table: Some(table),
            suppress_prefix_len: Some(0),
            ..mark_rule(config, family, config.priority - 4, mark)
        },
        Rule {
            table: Some(table),
            ..mark_rule(config, family, config.priority - 2, mark)
        },
    ]
}

fn mark_rule(config: &Config, family: Family, priority: u32, fwmark: (u32, u32)) -> Rule {
    Rule {
        family,
        priority,
        protocol: config.protocol,
        src: None,
        oif: None,
        fwmark: Some(fwmark),
        table: None,
        suppress_prefix_len: None,
        unreachable: false,
        other_selectors: false,
    }
}

/// Whether `rule` is a catch-all: added before any other rule and removed after every other,
/// so that no marked socket ever finds a way out that is not its uplink's.
pub(crate) fn is_catch_all(rule: &Rule) -> bool {
    rule.unreachable && rule.fwmark == Some((MARK_BASE, MARK_MASK))
}
