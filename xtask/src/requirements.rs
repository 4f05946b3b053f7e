//! What a development machine needs and which commands install what is missing.
//!
//! Pure: `setup` observes the machine and runs the commands; everything here only reads text the
//! tools printed and decides, so the decisions are unit-tested without touching the machine.

use std::collections::BTreeSet;
use std::fmt;

use crate::arch::Arch;

/// Debian packages (bookworm names) every machine needs, whatever its architecture; see
/// [`debian_packages`] for the ones that depend on it. `{llvm}` stands for nightly's LLVM major
/// version, so that bpf-linker links against the LLVM that emits the eBPF object's bitcode.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",            // tier 3 (namespaces): `ip` links, addresses, routes, rules, netns
    "bpftool",             // tiers 2-3: inspect attached programs and pinned maps
    "llvm-{llvm}-dev",     // build: bpf-linker links against libLLVM of nightly's major
    "libpolly-{llvm}-dev", // build: llvm-config of llvm-N-dev lists Polly among the libraries
    "zlib1g-dev",          // build: libLLVM's link dependency (bpf-linker)
    "libzstd-dev",         // build: libLLVM's link dependency (bpf-linker)
    "dnsmasq-base",        // tier 3: DHCP server in each ISP router namespace
    "isc-dhcp-client",     // tier 3: dhclient, one of the real DHCP clients under test
    "iperf3",              // tier 3 / bench: throughput through the guard
    "nftables",            // tier 3: NAT in the router namespaces
    "socat",               // tier 3: the "internet" echo service that reports the caller's address
    "tcpdump",             // tier 3: watches which device a packet left by
    "dbus",                // tiers 1, 3: a bus for the D-Bus client's test; networkd and networkctl
    "iputils-ping",        // tier 3: reachability checks between namespaces
    "curl",                // tier 3 / demo: `curl --interface`, as in the seed write-up
    "systemd",             // tier 3: systemd-networkd (part of systemd on bookworm), a DHCP client
    "kmod",                // tier 4: module lookup (modprobe --show-depends, depmod) for the guests
    "cpio",                // tier 4: packs the VM's initramfs
    "xz-utils",            // tier 4: unpacks Debian 13's kernel modules (.ko.xz) for the guest
    "strace",   // tier 3: the unit test holds the daemon's system calls to the unit's filter
    "binutils", // package: strips the binary; tier 4: readelf finds the guests' libraries
    "dpkg-dev", // package: dpkg-gencontrol writes the control file
    "lintian",  // package tier: the packages' policy check
    "golang-go", // tier 3: a Go program (no libc sockets) steered by `multihome exec`
    "gcc",      // tier 3: builds the LD_PRELOAD socket shim the steering test compares with
    "libc6-dev", // tier 3: the shim's headers (dlfcn.h, sys/socket.h)
    "busybox-static", // tier 3: the steering test's static binary (wget without libc sockets)
];

/// The Debian packages for nightly's LLVM major `llvm` on a `host` machine: the common ones,
/// then per architecture the qemu that boots its VM cells (tier 4) and, for every architecture
/// but the host's, the binutils that strip its `multihome` for the package (linking needs no
/// cross toolchain: rust-lld and the musl target's own C library, see `Arch::linker_env`).
#[allow(
    clippy::literal_string_with_formatting_args,
    reason = "`{llvm}` is the package list's placeholder, replaced here"
)]
pub(crate) fn debian_packages(llvm: u32, host: Arch) -> Vec<String> {
    let common = DEBIAN_PACKAGES
        .iter()
        .map(|p| p.replace("{llvm}", &llvm.to_string()));
    let qemu = Arch::ALL.into_iter().map(|a| a.qemu().1.to_string());
    let cross = foreign(host).map(Arch::cross_binutils);
    common.chain(qemu).chain(cross).collect()
}

/// The architectures other than the host's: cross-built.
fn foreign(host: Arch) -> impl Iterator<Item = Arch> {
    Arch::ALL.into_iter().filter(move |&a| a != host)
}

/// The installed targets from `rustup target list --installed`, one triple a line.
pub(crate) fn parse_rust_targets(out: &str) -> BTreeSet<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The LLVM major version from `rustc -vV` ("LLVM version: 22.1.4" -> 22).
pub(crate) fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

/// Installed packages from `dpkg-query -W -f='${Package} ${Status}\n'`: only those whose
/// status is "installed" (a removed package keeps "deinstall ok config-files").
pub(crate) fn parse_dpkg_installed(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            (words.last() == Some("installed")).then(|| name.to_string())
        })
        .collect()
}

/// Whether `rustup component list --installed --toolchain nightly` lists rust-src.
pub(crate) fn has_rust_src(components: &str) -> bool {
    components
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src-"))
}

/// What is known about the bpf-linker on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Linker {
    /// No `bpf-linker` binary.
    Missing,
    /// Installed by `cargo install` with these features (`llvm-N` names the LLVM it links).
    Cargo { features: Vec<String> },
    /// A binary cargo has no record of: its LLVM cannot be told.
    Unrecorded,
}

/// Cargo's record of bpf-linker in `~/.cargo/.crates2.json`: the features it was built with.
pub(crate) fn parse_crates2_linker(crates2: &str) -> Option<Vec<String>> {
    let json: serde_json::Value = serde_json::from_str(crates2).ok()?;
    let installs = json.get("installs")?.as_object()?;
    let (_, entry) = installs
        .iter()
        .find(|(key, _)| key.split(' ').next() == Some("bpf-linker"))?;
    let features = entry.get("features")?.as_array()?;
    Some(
        features
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect(),
    )
}

/// The machine as observed by `setup`.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    /// The machine's architecture.
    pub host: Arch,
    /// Nightly's LLVM major version.
    pub llvm: u32,
    /// Installed Debian packages; `None` off Debian (dpkg cannot be asked).
    pub packages: Option<BTreeSet<String>>,
    pub rust_src: bool,
    /// Targets installed for the workspace's toolchain (the one running xtask).
    pub rust_targets: BTreeSet<String>,
    pub linker: Linker,
}

/// The state of one required thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Present,
    Missing,
    /// Cannot be checked on this machine (a Debian package off Debian).
    Unknown,
}

/// One required thing and its state, as `setup` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub what: String,
    pub state: State,
    /// Why a present-looking thing is not good enough (e.g. the LLVM it was built for).
    pub note: Option<String>,
}

/// A command that installs something: environment assignments, then the argument vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cmd {
    pub env: Vec<(&'static str, String)>,
    /// A directory put in front of `PATH` (shown as `PATH=DIR:$PATH`).
    pub path_prefix: Option<String>,
    pub argv: Vec<String>,
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={v} ")?;
        }
        if let Some(dir) = &self.path_prefix {
            write!(f, "PATH={dir}:$PATH ")?;
        }
        write!(f, "{}", self.argv.join(" "))
    }
}

/// The checks, and the commands that install whatever is not present, in the order they must
/// run (LLVM's packages before the bpf-linker build that links against them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub checks: Vec<Check>,
    pub commands: Vec<Cmd>,
}

/// The bpf-linker feature naming the LLVM major it links against.
fn llvm_feature(llvm: u32) -> String {
    format!("llvm-{llvm}")
}

/// Decides what is missing on `observed` and how to install it.
pub(crate) fn plan(observed: &Observed) -> Plan {
    let mut checks = Vec::new();
    let mut missing_packages = Vec::new();
    for package in debian_packages(observed.llvm, observed.host) {
        let state = match &observed.packages {
            None => State::Unknown,
            Some(installed) if installed.contains(&package) => State::Present,
            Some(_) => State::Missing,
        };
        if state != State::Present {
            missing_packages.push(package.clone());
        }
        checks.push(Check {
            what: format!("apt {package}"),
            state,
            note: None,
        });
    }
    checks.push(Check {
        what: "rustup nightly rust-src".into(),
        state: if observed.rust_src {
            State::Present
        } else {
            State::Missing
        },
        note: None,
    });
    // Every architecture's, the host's too: multihome is always built for its musl target.
    let mut missing_targets = Vec::new();
    for arch in Arch::ALL {
        let present = observed.rust_targets.contains(arch.triple());
        if !present {
            missing_targets.push(arch.triple().to_string());
        }
        checks.push(Check {
            what: format!("rustup target {}", arch.triple()),
            state: if present {
                State::Present
            } else {
                State::Missing
            },
            note: None,
        });
    }
    let feature = llvm_feature(observed.llvm);
    let (linker_state, linker_note) = match &observed.linker {
        Linker::Missing => (State::Missing, None),
        Linker::Cargo { features } if features.contains(&feature) => (State::Present, None),
        Linker::Cargo { features } => (
            State::Missing,
            Some(format!("built with features [{}]", features.join(", "))),
        ),
        Linker::Unrecorded => (
            State::Missing,
            Some("not installed by cargo: LLVM unknown".into()),
        ),
    };
    checks.push(Check {
        what: format!("bpf-linker ({feature})"),
        state: linker_state,
        note: linker_note,
    });

    let mut commands = Vec::new();
    if !missing_packages.is_empty() {
        commands.push(Cmd {
            env: vec![],
            path_prefix: None,
            argv: apt("update"),
        });
        let mut argv = apt("install -y --no-install-recommends");
        argv.extend(missing_packages);
        commands.push(Cmd {
            env: vec![("DEBIAN_FRONTEND", "noninteractive".into())],
            path_prefix: None,
            argv,
        });
    }
    if !observed.rust_src {
        commands.push(Cmd {
            env: vec![],
            path_prefix: None,
            argv: words("rustup component add rust-src --toolchain nightly"),
        });
    }
    if !missing_targets.is_empty() {
        let mut argv = words("rustup target add");
        argv.extend(missing_targets);
        commands.push(Cmd {
            env: vec![],
            path_prefix: None,
            argv,
        });
    }
    if linker_state != State::Present {
        commands.push(linker_install(
            observed.llvm,
            observed.linker != Linker::Missing,
        ));
    }
    Plan { checks, commands }
}

/// bpf-linker's version: the newest release; its own Cargo.lock (`--locked`) builds with stable
/// 1.95, where a fresh resolution could pick dependencies needing a newer rustc.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// `cargo install` of bpf-linker for LLVM `llvm`, found through its `llvm-config` on `PATH`;
/// `--force` replaces a binary built for another LLVM.
fn linker_install(llvm: u32, replace: bool) -> Cmd {
    let mut argv = words("cargo install --locked bpf-linker --version");
    argv.push(BPF_LINKER_VERSION.into());
    argv.extend(words("--no-default-features --features"));
    argv.push(llvm_feature(llvm));
    if replace {
        argv.push("--force".into());
    }
    Cmd {
        env: vec![],
        path_prefix: Some(format!("/usr/lib/llvm-{llvm}/bin")),
        argv,
    }
}

/// An apt-get command that waits (up to 10 minutes) for another apt or dpkg to finish instead
/// of failing at once: other work on the machine may hold dpkg's lock.
fn apt(args: &str) -> Vec<String> {
    let mut argv = words("apt-get -o DPkg::Lock::Timeout=600");
    argv.extend(words(args));
    argv
}

fn words(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_present(llvm: u32) -> Observed {
        Observed {
            host: Arch::Amd64,
            llvm,
            packages: Some(debian_packages(llvm, Arch::Amd64).into_iter().collect()),
            rust_src: true,
            rust_targets: ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"]
                .map(String::from)
                .into(),
            linker: Linker::Cargo {
                features: vec![llvm_feature(llvm)],
            },
        }
    }

    fn rendered(plan: &Plan) -> Vec<String> {
        plan.commands.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn llvm_major_is_read_from_rustc_vv() {
        let out = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                   host: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(out), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.97.0\n"), None);
        assert_eq!(parse_llvm_major("LLVM version: x.1\n"), None);
    }

    #[test]
    fn package_list_follows_the_llvm_major() {
        let packages = debian_packages(21, Arch::Amd64);
        assert!(packages.contains(&"llvm-21-dev".to_string()));
        assert!(packages.contains(&"libpolly-21-dev".to_string()));
        assert!(!packages.iter().any(|p| p.contains('{')));
    }

    #[test]
    fn every_architectures_qemu_and_the_other_ones_binutils() {
        let on_amd64 = debian_packages(22, Arch::Amd64);
        for package in [
            "qemu-system-x86",
            "qemu-system-arm",
            "binutils-aarch64-linux-gnu",
        ] {
            assert!(on_amd64.contains(&package.to_string()), "{package}");
        }
        assert!(!on_amd64.iter().any(|p| p.contains("x86-64-linux-gnu")));
        // No cross compiler: rust-lld links every architecture.
        assert!(!on_amd64.iter().any(|p| p.starts_with("gcc-")));
        let on_arm64 = debian_packages(22, Arch::Arm64);
        assert!(on_arm64.contains(&"binutils-x86-64-linux-gnu".to_string()));
        assert!(!on_arm64.contains(&"binutils-aarch64-linux-gnu".to_string()));
    }

    #[test]
    fn rustup_lists_installed_targets_one_a_line() {
        let targets = parse_rust_targets("aarch64-unknown-linux-gnu\nx86_64-unknown-linux-gnu\n");
        assert!(targets.contains("aarch64-unknown-linux-gnu"));
        assert_eq!(targets.len(), 2);
    }

    #[test]
    fn a_missing_target_is_added_to_the_workspace_toolchain() {
        let mut observed = all_present(22);
        observed.rust_targets.remove("aarch64-unknown-linux-musl");
        let plan = plan(&observed);
        assert_eq!(
            rendered(&plan),
            ["rustup target add aarch64-unknown-linux-musl"]
        );
        assert!(plan
            .checks
            .iter()
            .any(|c| c.what == "rustup target aarch64-unknown-linux-musl"
                && c.state == State::Missing));
        // The host's own musl target too: the host's binary is built for it as well.
        let mut observed = all_present(22);
        observed.rust_targets.remove("x86_64-unknown-linux-musl");
        assert_eq!(
            rendered(&super::plan(&observed)),
            ["rustup target add x86_64-unknown-linux-musl"]
        );
    }

    #[test]
    fn dpkg_status_counts_only_installed_packages() {
        let out = "iproute2 install ok installed\ncpio deinstall ok config-files\n\
                   curl hold ok installed\nsocat install ok unpacked\n";
        let installed = parse_dpkg_installed(out);
        assert_eq!(
            installed.into_iter().collect::<Vec<_>>(),
            ["curl", "iproute2"]
        );
    }

    #[test]
    fn rust_src_is_found_among_components() {
        assert!(has_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn crates2_gives_the_linker_features() {
        let json = r#"{"installs":{"bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":
            {"bins":["bpf-linker"],"features":["llvm-22"],"no_default_features":true}}}"#;
        assert_eq!(
            parse_crates2_linker(json),
            Some(vec!["llvm-22".to_string()])
        );
        let other = r#"{"installs":{"bpf-linkerx 1.0.0 (registry)":{"features":["llvm-22"]}}}"#;
        assert_eq!(parse_crates2_linker(other), None);
        assert_eq!(parse_crates2_linker("not json"), None);
    }

    #[test]
    fn nothing_to_do_when_everything_is_present() {
        let plan = plan(&all_present(22));
        assert!(plan.commands.is_empty());
        assert!(plan.checks.iter().all(|c| c.state == State::Present));
        // Packages, rust-src, both musl targets, bpf-linker.
        assert_eq!(
            plan.checks.len(),
            debian_packages(22, Arch::Amd64).len() + 4
        );
    }

    #[test]
    fn missing_packages_are_installed_after_one_update() {
        let mut observed = all_present(22);
        let packages = observed.packages.as_mut().unwrap();
        packages.remove("cpio");
        packages.remove("llvm-22-dev");
        assert_eq!(
            rendered(&plan(&observed)),
            [
                "apt-get -o DPkg::Lock::Timeout=600 update",
                "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
                 --no-install-recommends llvm-22-dev cpio",
            ]
        );
    }

    #[test]
    fn linker_for_another_llvm_is_rebuilt_for_nightlys() {
        let mut observed = all_present(22);
        observed.linker = Linker::Cargo {
            features: vec!["llvm-21".into()],
        };
        let plan = plan(&observed);
        assert_eq!(
            rendered(&plan),
            ["PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker --version 0.13.0 \
              --no-default-features --features llvm-22 --force"]
        );
        let linker = plan.checks.last().unwrap();
        assert_eq!(linker.state, State::Missing);
        assert_eq!(
            linker.note.as_deref(),
            Some("built with features [llvm-21]")
        );
    }

    #[test]
    fn missing_linker_is_installed_without_force() {
        let mut observed = all_present(22);
        observed.linker = Linker::Missing;
        assert!(!rendered(&plan(&observed))[0].contains("--force"));
    }

    #[test]
    fn off_debian_every_package_is_named_and_apt_comes_before_cargo() {
        let observed = Observed {
            host: Arch::Amd64,
            llvm: 22,
            packages: None,
            rust_src: false,
            rust_targets: BTreeSet::new(),
            linker: Linker::Unrecorded,
        };
        let plan = plan(&observed);
        let commands = rendered(&plan);
        assert_eq!(commands.len(), 5);
        assert_eq!(commands[0], "apt-get -o DPkg::Lock::Timeout=600 update");
        for package in debian_packages(22, Arch::Amd64) {
            assert!(
                commands[1].contains(&package),
                "{package} not in {}",
                commands[1]
            );
        }
        assert_eq!(
            commands[2],
            "rustup component add rust-src --toolchain nightly"
        );
        assert_eq!(
            commands[3],
            "rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl"
        );
        assert!(commands[4].contains("--features llvm-22 --force"));
        assert!(plan
            .checks
            .iter()
            .take(debian_packages(22, Arch::Amd64).len())
            .all(|c| c.state == State::Unknown));
    }
}
