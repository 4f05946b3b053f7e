//! What the operator asked for, checked once at start so that the reconciler never meets a
//! configuration the kernel would refuse (a reserved table, a rule priority past `main`'s, ...).
//!
//! The CLI (clap) parses flags into [`Params`]; [`Config::new`] validates them and fills in the
//! defaults. Every [`ConfigError`] prints as one line naming the problem and the fix.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use multihome_ebpf::steer::mark_of_table;

use crate::model::{RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN, RT_TABLE_UNSPEC};

/// Tables default to `table_base + position` (1-based), so the first uplink gets 1001.
pub(crate) const DEFAULT_TABLE_BASE: u32 = 1000;
/// `from` rules at P, `oif` rules at P+1: before `main` (32766), after `local` (0); the
/// steering rules take P-4 to P-1 (see `plan::steering`).
pub const DEFAULT_PRIORITY: u32 = 1000;
/// The steering rules sit this far below P: the lowest priority P may have is this plus one.
pub(crate) const STEERING_RULES: u32 = 4;
/// The routing protocol number marking everything multihome owns (`multihome` in rt_protos.d).
pub(crate) const DEFAULT_PROTOCOL: u8 = 77;
/// Where the guard's maps and attachments are pinned: a directory of the bpf filesystem.
pub(crate) const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/multihome";

/// The priority of the kernel's `lookup main` rule: ours must all come before it.
const MAIN_RULE_PRIORITY: u32 = 32766;
/// Protocol numbers 0..=4 are the kernel's own (unspec, redirect, kernel, boot, static).
const MIN_PROTOCOL: u32 = 5;
/// The field is a byte; 255 is kept free, as the documented range says (5..=254).
const MAX_PROTOCOL: u32 = 254;
/// IFNAMSIZ - 1: the kernel's limit on interface names.
const MAX_IFNAME_LEN: usize = 15;

/// One `UPLINK` argument: `IFNAME` or `IFNAME=TABLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UplinkSpec {
    pub(crate) name: String,
    pub(crate) table: Option<u32>,
}

impl FromStr for UplinkSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, table) = match s.split_once('=') {
            None => (s, None),
            Some((name, table)) => (name, Some(parse_table(name, table)?)),
        };
        check_ifname(name)?;
        Ok(UplinkSpec {
            name: name.to_string(),
            table,
        })
    }
}

/// One `--gateway IFNAME=ADDR` argument: a fixed gateway that overrides the discovered one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GatewaySpec {
    pub(crate) name: String,
    pub(crate) addr: IpAddr,
}

impl FromStr for GatewaySpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, addr)) = s.split_once('=') else {
            return Err(ConfigError::GatewaySyntax(s.to_string()));
        };
        check_ifname(name)?;
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|_| ConfigError::GatewayAddress(s.to_string()))?;
        Ok(GatewaySpec {
            name: name.to_string(),
            addr,
        })
    }
}

/// Validates a routing protocol number for multihome's objects (also used by `status`,
/// `cleanup` and `check`, which take `--protocol` too).
pub(crate) fn protocol(value: u32) -> Result<u8, ConfigError> {
    u8::try_from(value)
        .ok()
        .filter(|p| (MIN_PROTOCOL..=MAX_PROTOCOL).contains(&u32::from(*p)))
        .ok_or(ConfigError::Protocol(value))
}

/// Validates the priority of the `from` rules (the `oif` rules take the next one, and both must
/// come before the main table's rule); also used by `check`, which takes `--priority` too.
pub(crate) fn priority(value: u32) -> Result<u32, ConfigError> {
    if value <= STEERING_RULES || value.saturating_add(1) >= MAIN_RULE_PRIORITY {
        return Err(ConfigError::Priority(value));
    }
    Ok(value)
}

/// Parses `MULTIHOME_UPLINKS`: `UPLINK` items separated by whitespace and/or commas (systemd
/// `EnvironmentFile=` users write either). An empty string is an empty list.
pub(crate) fn parse_uplink_list(s: &str) -> Result<Vec<UplinkSpec>, ConfigError> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(str::parse)
        .collect()
}

/// The parsed command line, before validation. `Default` holds the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) uplinks: Vec<UplinkSpec>,
    pub(crate) gateways: Vec<GatewaySpec>,
    pub(crate) table_base: u32,
    pub(crate) priority: u32,
    /// Wider than the protocol field so that an out-of-range value gets our message, not clap's.
    pub(crate) protocol: u32,
    pub(crate) rules: bool,
    pub(crate) ebpf: bool,
    /// Steer the sockets of the uplinks' cgroups (`multihome exec`, slices): the daemon turns
    /// it on once its cgroup hook is attached, so the default is off.
    pub(crate) steer: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            uplinks: Vec::new(),
            gateways: Vec::new(),
            table_base: DEFAULT_TABLE_BASE,
            priority: DEFAULT_PRIORITY,
            protocol: DEFAULT_PROTOCOL.into(),
            rules: true,
            ebpf: true,
            steer: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UplinkConfig {
    pub(crate) name: String,
    pub(crate) table: u32,
    pub(crate) gateway_v4: Option<Ipv4Addr>,
    pub(crate) gateway_v6: Option<Ipv6Addr>,
}

/// A validated configuration: uplinks in the operator's order (the first one wins an address
/// that two uplinks share), each with its own table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) uplinks: Vec<UplinkConfig>,
    /// Priority of the `from ADDR` rules; the `oif` rules use `priority + 1`.
    pub(crate) priority: u32,
    pub(crate) protocol: u8,
    /// Install tables and rules (off with `--no-rules`: guard only).
    pub(crate) rules: bool,
    /// Load the eBPF guard (off with `--no-ebpf`: rules only).
    pub(crate) ebpf: bool,
    /// Steering rules and marks for `multihome exec` and the uplink slices (needs both layers).
    pub(crate) steer: bool,
    pub(crate) table_base: u32,
    /// Positions in `uplinks` by name and by table, so that a pass that looks at a few uplinks
    /// finds them without walking the list (it would grow with the number of uplinks).
    positions: HashMap<String, usize>,
    table_positions: HashMap<u32, usize>,
}

impl Config {
    pub(crate) fn new(params: Params) -> Result<Config, ConfigError> {
        let Params {
            uplinks,
            gateways,
            table_base,
            priority,
            protocol,
            rules,
            ebpf,
            steer,
        } = params;
        if uplinks.is_empty() {
            return Err(ConfigError::NoUplinks);
        }
        if !rules && !ebpf {
            return Err(ConfigError::NothingToDo);
        }
        let priority = self::priority(priority)?;
        let protocol = self::protocol(protocol)?;

        let mut built: Vec<UplinkConfig> = Vec::with_capacity(uplinks.len());
        let mut tables: BTreeMap<u32, String> = BTreeMap::new();
        for (position, spec) in (1u32..).zip(uplinks) {
            check_ifname(&spec.name)?;
            if built.iter().any(|u| u.name == spec.name) {
                return Err(ConfigError::DuplicateUplink(spec.name));
            }
            let table = match spec.table {
                Some(table) => table,
                None => table_base
                    .checked_add(position)
                    .ok_or(ConfigError::TableBase(table_base))?,
            };
            check_table(&spec.name, table, spec.table.is_none())?;
            if let Some(first) = tables.insert(table, spec.name.clone()) {
                return Err(ConfigError::SharedTable {
                    table,
                    first,
                    second: spec.name,
                });
            }
            let mark = mark_of_table(table);
            if let Some(first) = built.iter().find(|u| mark_of_table(u.table) == mark) {
                return Err(ConfigError::SharedMark {
                    mark,
                    first: first.name.clone(),
                    second: spec.name,
                });
            }
            built.push(UplinkConfig {
                name: spec.name,
                table,
                gateway_v4: None,
                gateway_v6: None,
            });
        }

        for gateway in gateways {
            let Some(uplink) = built.iter_mut().find(|u| u.name == gateway.name) else {
                return Err(ConfigError::GatewayUnknownUplink(gateway.name));
            };
            check_gateway(&gateway)?;
            let duplicate = match gateway.addr {
                IpAddr::V4(v4) => uplink.gateway_v4.replace(v4).is_some(),
                IpAddr::V6(v6) => uplink.gateway_v6.replace(v6).is_some(),
            };
            if duplicate {
                return Err(ConfigError::GatewayTwice(gateway.name, gateway.addr));
            }
        }

        Ok(Config {
            positions: (built.iter().enumerate())
                .map(|(position, u)| (u.name.clone(), position))
                .collect(),
            table_positions: (built.iter().enumerate())
                .map(|(position, u)| (u.table, position))
                .collect(),
            uplinks: built,
            priority,
            protocol,
            rules,
            ebpf,
            steer: steer && rules && ebpf,
            table_base,
        })
    }

    /// The position in `uplinks` of the uplink with this name.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.positions.get(name).copied()
    }

    /// The position in `uplinks` of the uplink with this table.
    pub(crate) fn table_position(&self, table: u32) -> Option<usize> {
        self.table_positions.get(&table).copied()
    }
}

/// The kernel's `dev_valid_name`: names it would refuse can never appear, so waiting for one
/// would wait forever.
fn check_ifname(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(ConfigError::InterfaceName(name.to_string()))
    }
}

fn parse_table(name: &str, table: &str) -> Result<u32, ConfigError> {
    // Digits only: `u32::from_str` would also take a leading '+'.
    if table.is_empty() || !table.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::TableSyntax(format!("{name}={table}")));
    }
    table
        .parse()
        .map_err(|_| ConfigError::TableRange(name.to_string(), table.to_string()))
}

/// Tables 0 and 253..=255 are the kernel's (unspec, default, main, local).
fn check_table(name: &str, table: u32, derived: bool) -> Result<(), ConfigError> {
    let reserved = [
        RT_TABLE_UNSPEC,
        RT_TABLE_DEFAULT,
        RT_TABLE_MAIN,
        RT_TABLE_LOCAL,
    ];
    if reserved.contains(&table) {
        return Err(ConfigError::ReservedTable {
            name: name.to_string(),
            table,
            derived,
        });
    }
    Ok(())
}

/// A next hop must be a unicast address of its family. An IPv4-mapped IPv6 address is an IPv4
/// gateway in the wrong family: the kernel would take it as an IPv6 next hop, which no IPv4 route
/// can use.
fn check_gateway(gateway: &GatewaySpec) -> Result<(), ConfigError> {
    let unusable = match gateway.addr {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(ConfigError::GatewayFamily(gateway.name.clone(), v6, v4));
            }
            v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()
        }
    };
    if unusable {
        return Err(ConfigError::GatewayNotUnicast(
            gateway.name.clone(),
            gateway.addr,
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error(
        "no uplink given: name at least one (multihome run vlan101 vlan102, or MULTIHOME_UPLINKS)"
    )]
    NoUplinks,
    #[error("--no-rules and --no-ebpf together leave nothing to do: drop one of them")]
    NothingToDo,
    #[error(
        "invalid interface name {0:?}: use 1 to 15 characters without '/', ':' or spaces (not \".\" or \"..\")"
    )]
    InterfaceName(String),
    #[error("uplink {0} is given twice: name each uplink once")]
    DuplicateUplink(String),
    #[error("invalid uplink {0:?}: write IFNAME or IFNAME=TABLE with TABLE a number")]
    TableSyntax(String),
    #[error(
        "table {1} of uplink {0} is out of range: use a number from 1 to 4294967295 except 253-255"
    )]
    TableRange(String, String),
    #[error("{}", reserved_table(name, *table, *derived))]
    ReservedTable {
        name: String,
        table: u32,
        derived: bool,
    },
    #[error("--table-base {0} leaves no table for every uplink: use a smaller --table-base")]
    TableBase(u32),
    #[error("uplinks {first} and {second} both use table {table}: give each uplink its own table")]
    SharedTable {
        table: u32,
        first: String,
        second: String,
    },
    #[error(
        "--priority {0} is invalid: use 5 to 32764 (rules use P-4 to P+1, before main at 32766)"
    )]
    Priority(u32),
    #[error(
        "uplinks {first} and {second} would share the steering mark {mark:#x} (their tables \
         agree in the low 16 bits): give one of them another table"
    )]
    SharedMark {
        mark: u32,
        first: String,
        second: String,
    },
    #[error("--protocol {0} is invalid: use 5 to 254 (0-4 are the kernel's own)")]
    Protocol(u32),
    #[error("invalid --gateway {0:?}: write IFNAME=ADDR")]
    GatewaySyntax(String),
    #[error("invalid --gateway {0:?}: ADDR must be an IPv4 or IPv6 address")]
    GatewayAddress(String),
    #[error(
        "--gateway for {0}, which is not an uplink: add {0} to the uplinks or drop the --gateway"
    )]
    GatewayUnknownUplink(String),
    #[error("--gateway {0}={1}: {1} is an IPv4 address in IPv6 form, write {0}={2}")]
    GatewayFamily(String, Ipv6Addr, Ipv4Addr),
    #[error("--gateway {0}={1}: a gateway must be a unicast address, give the router's address")]
    GatewayNotUnicast(String, IpAddr),
    #[error("--gateway {0}={1}: {0} already has a gateway of that family, give one per family")]
    GatewayTwice(String, IpAddr),
}

fn reserved_table(name: &str, table: u32, derived: bool) -> String {
    let fix = if derived {
        "use another --table-base or IFNAME=TABLE"
    } else {
        "use another table number"
    };
    format!("uplink {name} would use table {table}, which is reserved by the kernel: {fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(items: &[&str]) -> Vec<UplinkSpec> {
        items.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn gateways(items: &[&str]) -> Vec<GatewaySpec> {
        items.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn params(uplinks: &[&str]) -> Params {
        Params {
            uplinks: specs(uplinks),
            ..Params::default()
        }
    }

    fn uplink(name: &str, table: u32) -> UplinkConfig {
        UplinkConfig {
            name: name.into(),
            table,
            gateway_v4: None,
            gateway_v6: None,
        }
    }

    #[test]
    fn uplink_spec_parsing() {
        let cases: &[(&str, Result<UplinkSpec, ConfigError>)] = &[
            (
                "vlan101",
                Ok(UplinkSpec {
                    name: "vlan101".into(),
                    table: None,
                }),
            ),
            (
                "wan=200",
                Ok(UplinkSpec {
                    name: "wan".into(),
                    table: Some(200),
                }),
            ),
            (
                "a",
                Ok(UplinkSpec {
                    name: "a".into(),
                    table: None,
                }),
            ),
            (
                "abcdefghijklmno",
                Ok(UplinkSpec {
                    name: "abcdefghijklmno".into(),
                    table: None,
                }),
            ),
            (
                "wan=4294967295",
                Ok(UplinkSpec {
                    name: "wan".into(),
                    table: Some(u32::MAX),
                }),
            ),
            (
                "abcdefghijklmnop",
                Err(ConfigError::InterfaceName("abcdefghijklmnop".into())),
            ),
            ("", Err(ConfigError::InterfaceName("".into()))),
            ("=5", Err(ConfigError::InterfaceName("".into()))),
            (".", Err(ConfigError::InterfaceName(".".into()))),
            ("..", Err(ConfigError::InterfaceName("..".into()))),
            ("a/b", Err(ConfigError::InterfaceName("a/b".into()))),
            ("eth0:1", Err(ConfigError::InterfaceName("eth0:1".into()))),
            ("eth 0", Err(ConfigError::InterfaceName("eth 0".into()))),
            ("wan=", Err(ConfigError::TableSyntax("wan=".into()))),
            ("wan=x", Err(ConfigError::TableSyntax("wan=x".into()))),
            ("wan=+5", Err(ConfigError::TableSyntax("wan=+5".into()))),
            ("wan=-5", Err(ConfigError::TableSyntax("wan=-5".into()))),
            ("wan=1=2", Err(ConfigError::TableSyntax("wan=1=2".into()))),
            (
                "wan=4294967296",
                Err(ConfigError::TableRange("wan".into(), "4294967296".into())),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<UplinkSpec>(), want, "{input:?}");
        }
    }

    #[test]
    fn uplink_list_parsing() {
        let cases: &[(&str, Result<Vec<&str>, ConfigError>)] = &[
            ("", Ok(vec![])),
            ("  \n ", Ok(vec![])),
            ("vlan101", Ok(vec!["vlan101"])),
            ("vlan101 vlan102", Ok(vec!["vlan101", "vlan102"])),
            ("vlan101,vlan102=1200", Ok(vec!["vlan101", "vlan102=1200"])),
            (" vlan101 ,\tvlan102 ,, ", Ok(vec!["vlan101", "vlan102"])),
            ("vlan101 a/b", Err(ConfigError::InterfaceName("a/b".into()))),
        ];
        for (input, want) in cases {
            let want = want.clone().map(|items| specs(&items));
            assert_eq!(parse_uplink_list(input), want, "{input:?}");
        }
    }

    #[test]
    fn gateway_spec_parsing() {
        let cases: &[(&str, Result<GatewaySpec, ConfigError>)] = &[
            (
                "wan=192.168.0.1",
                Ok(GatewaySpec {
                    name: "wan".into(),
                    addr: "192.168.0.1".parse().unwrap(),
                }),
            ),
            (
                "wan=fe80::1",
                Ok(GatewaySpec {
                    name: "wan".into(),
                    addr: "fe80::1".parse().unwrap(),
                }),
            ),
            ("wan", Err(ConfigError::GatewaySyntax("wan".into()))),
            (
                "wan=router",
                Err(ConfigError::GatewayAddress("wan=router".into())),
            ),
            ("wan=", Err(ConfigError::GatewayAddress("wan=".into()))),
            ("a/b=1.2.3.4", Err(ConfigError::InterfaceName("a/b".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<GatewaySpec>(), want, "{input:?}");
        }
    }

    #[test]
    fn valid_configurations() {
        let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        let v6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
        let cases: Vec<(&str, Params, Vec<UplinkConfig>)> = vec![
            (
                "defaults: table base + 1-based position",
                params(&["vlan101", "vlan102"]),
                vec![uplink("vlan101", 1001), uplink("vlan102", 1002)],
            ),
            (
                "explicit table, the others keep their position",
                params(&["a", "b=42", "c"]),
                vec![uplink("a", 1001), uplink("b", 42), uplink("c", 1003)],
            ),
            (
                "table base",
                Params {
                    table_base: 100,
                    ..params(&["a", "b"])
                },
                vec![uplink("a", 101), uplink("b", 102)],
            ),
            (
                "gateways of both families",
                Params {
                    gateways: gateways(&["b=192.168.0.254", "b=fe80::1", "a=2001:db8::1"]),
                    ..params(&["a", "b"])
                },
                vec![
                    UplinkConfig {
                        gateway_v6: v6("2001:db8::1"),
                        ..uplink("a", 1001)
                    },
                    UplinkConfig {
                        gateway_v4: v4("192.168.0.254"),
                        gateway_v6: v6("fe80::1"),
                        ..uplink("b", 1002)
                    },
                ],
            ),
            (
                "extreme but legal values",
                Params {
                    priority: 32764,
                    protocol: 254,
                    ..params(&["a=252", "b=256"])
                },
                vec![uplink("a", 252), uplink("b", 256)],
            ),
            (
                "the lowest priority that leaves room for the steering rules",
                Params {
                    priority: 5,
                    ..params(&["a=252", "b=256"])
                },
                vec![uplink("a", 252), uplink("b", 256)],
            ),
        ];
        for (what, params, want) in cases {
            let (priority, protocol, table_base) =
                (params.priority, params.protocol, params.table_base);
            let config = Config::new(params).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(config.uplinks, want, "{what}");
            assert_eq!(config.priority, priority, "{what}");
            assert_eq!(u32::from(config.protocol), protocol, "{what}");
            assert_eq!(config.table_base, table_base, "{what}");
        }
    }

    #[test]
    fn defaults() {
        let config = Config::new(params(&["wan"])).unwrap();
        assert_eq!(config.priority, 1000);
        assert_eq!(config.protocol, 77);
        assert_eq!(config.table_base, 1000);
        assert!(config.rules && config.ebpf);
        let table = |name| config.position(name).map(|p| config.uplinks[p].table);
        assert_eq!(table("wan"), Some(1001));
        assert_eq!(table("lan"), None);
        assert_eq!(config.position("wan"), Some(0));
        assert_eq!(config.table_position(1001), Some(0));
        assert_eq!(config.table_position(1000), None);
    }

    #[test]
    fn invalid_configurations() {
        let e = ConfigError::ReservedTable {
            name: "a".into(),
            table: 0,
            derived: false,
        };
        let reserved = |name: &str, table: u32, derived: bool| ConfigError::ReservedTable {
            name: name.into(),
            table,
            derived,
        };
        let cases: Vec<(&str, Params, ConfigError)> = vec![
            ("no uplink", params(&[]), ConfigError::NoUplinks),
            (
                "nothing to do",
                Params {
                    rules: false,
                    ebpf: false,
                    ..params(&["a"])
                },
                ConfigError::NothingToDo,
            ),
            (
                "duplicate uplink",
                params(&["a", "b", "a=7"]),
                ConfigError::DuplicateUplink("a".into()),
            ),
            ("table 0", params(&["a=0"]), e),
            ("table 253", params(&["a=253"]), reserved("a", 253, false)),
            ("table main", params(&["a=254"]), reserved("a", 254, false)),
            ("table local", params(&["a=255"]), reserved("a", 255, false)),
            (
                "derived table hits a reserved one",
                Params {
                    table_base: 251,
                    ..params(&["a", "b"])
                },
                reserved("b", 253, true),
            ),
            (
                "derived table overflows",
                Params {
                    table_base: u32::MAX,
                    ..params(&["a"])
                },
                ConfigError::TableBase(u32::MAX),
            ),
            (
                "explicit table collides with a derived one",
                params(&["a", "b=1001"]),
                ConfigError::SharedTable {
                    table: 1001,
                    first: "a".into(),
                    second: "b".into(),
                },
            ),
            (
                "two explicit tables collide",
                params(&["a=7", "b=7"]),
                ConfigError::SharedTable {
                    table: 7,
                    first: "a".into(),
                    second: "b".into(),
                },
            ),
            (
                "priority 0",
                Params {
                    priority: 0,
                    ..params(&["a"])
                },
                ConfigError::Priority(0),
            ),
            (
                "steering rules would reach priority 0",
                Params {
                    priority: 4,
                    ..params(&["a"])
                },
                ConfigError::Priority(4),
            ),
            (
                "tables that share a steering mark",
                params(&["a=1001", "b=66537"]),
                ConfigError::SharedMark {
                    mark: 0x6d68_03e9,
                    first: "a".into(),
                    second: "b".into(),
                },
            ),
            (
                "oif rule would reach main",
                Params {
                    priority: 32765,
                    ..params(&["a"])
                },
                ConfigError::Priority(32765),
            ),
            (
                "priority past main",
                Params {
                    priority: u32::MAX,
                    ..params(&["a"])
                },
                ConfigError::Priority(u32::MAX),
            ),
            (
                "protocol kernel",
                Params {
                    protocol: 2,
                    ..params(&["a"])
                },
                ConfigError::Protocol(2),
            ),
            (
                "protocol 4",
                Params {
                    protocol: 4,
                    ..params(&["a"])
                },
                ConfigError::Protocol(4),
            ),
            (
                "protocol 255",
                Params {
                    protocol: 255,
                    ..params(&["a"])
                },
                ConfigError::Protocol(255),
            ),
            (
                "protocol 300",
                Params {
                    protocol: 300,
                    ..params(&["a"])
                },
                ConfigError::Protocol(300),
            ),
            (
                "gateway for an unknown uplink",
                Params {
                    gateways: gateways(&["c=192.168.0.1"]),
                    ..params(&["a"])
                },
                ConfigError::GatewayUnknownUplink("c".into()),
            ),
            (
                "IPv4 gateway written as IPv6",
                Params {
                    gateways: gateways(&["a=::ffff:192.168.0.1"]),
                    ..params(&["a"])
                },
                ConfigError::GatewayFamily(
                    "a".into(),
                    "::ffff:192.168.0.1".parse().unwrap(),
                    "192.168.0.1".parse().unwrap(),
                ),
            ),
            (
                "two IPv4 gateways",
                Params {
                    gateways: gateways(&["a=192.168.0.1", "a=192.168.0.2"]),
                    ..params(&["a"])
                },
                ConfigError::GatewayTwice("a".into(), "192.168.0.2".parse().unwrap()),
            ),
            (
                "multicast gateway",
                Params {
                    gateways: gateways(&["a=ff02::1"]),
                    ..params(&["a"])
                },
                ConfigError::GatewayNotUnicast("a".into(), "ff02::1".parse().unwrap()),
            ),
            (
                "unspecified gateway",
                Params {
                    gateways: gateways(&["a=0.0.0.0"]),
                    ..params(&["a"])
                },
                ConfigError::GatewayNotUnicast("a".into(), "0.0.0.0".parse().unwrap()),
            ),
            (
                "broadcast gateway",
                Params {
                    gateways: gateways(&["a=255.255.255.255"]),
                    ..params(&["a"])
                },
                ConfigError::GatewayNotUnicast("a".into(), "255.255.255.255".parse().unwrap()),
            ),
            (
                "invalid name built by hand",
                Params {
                    uplinks: vec![UplinkSpec {
                        name: "a:b".into(),
                        table: None,
                    }],
                    ..Params::default()
                },
                ConfigError::InterfaceName("a:b".into()),
            ),
        ];
        for (what, params, want) in cases {
            let got = Config::new(params);
            assert_eq!(got, Err(want), "{what}");
            let message = got.unwrap_err().to_string();
            assert!(!message.contains('\n'), "{what}: one line: {message}");
            assert!(message.contains(": "), "{what}: names a fix: {message}");
        }
    }
}
