//! The package tier: the .deb files `cargo xtask package --test` has just built (it names them
//! in the environment), checked with the real tools: `dpkg-deb` for the file lists and control
//! fields, lintian for policy, and dpkg itself installing this machine's package, upgrading to
//! it from the previous version, removing and purging it, with nothing left behind.
//!
//! Not run by a plain `cargo test` (`test = false` in Cargo.toml): without the packages it
//! cannot do anything. PID 1 here is not systemd, so deb-systemd-invoke starts and restarts
//! nothing; deb-systemd-helper still records the enablement, which is checked. That an upgrade
//! restarts the running service exactly once needs a real systemd: the VM tier's job.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use multihome_tests::bed::one_uplink;
use multihome_tests::netns::require_root;

/// Every file each package installs.
const FILES: &[&str] = &[
    "/etc/default/multihome",
    "/etc/iproute2/rt_protos.d/multihome.conf",
    "/lib/systemd/system/multihome-cleanup.service",
    "/lib/systemd/system/multihome.service",
    "/usr/bin/multihome",
    "/usr/share/bash-completion/completions/multihome",
    "/usr/share/doc/multihome/changelog.Debian.gz",
    "/usr/share/doc/multihome/copyright",
    "/usr/share/fish/vendor_completions.d/multihome.fish",
    "/usr/share/lintian/overrides/multihome",
    "/usr/share/man/man1/multihome-check.1.gz",
    "/usr/share/man/man1/multihome-cleanup.1.gz",
    "/usr/share/man/man1/multihome-exec.1.gz",
    "/usr/share/man/man1/multihome-reload.1.gz",
    "/usr/share/man/man1/multihome-run.1.gz",
    "/usr/share/man/man1/multihome-status.1.gz",
    "/usr/share/man/man1/multihome.1.gz",
    "/usr/share/zsh/vendor-completions/_multihome",
];

const CONFFILES: &[&str] = &[
    "/etc/default/multihome",
    "/etc/iproute2/rt_protos.d/multihome.conf",
];

/// The lintian warnings kept, each explained in docs/packaging.md.
const KEPT_WARNINGS: &[&str] = &["initial-upload-closes-no-bugs"];

/// The informational tags lintian gives, each explained in docs/packaging.md.
const KNOWN_INFO: &[&str] = &["package-supports-alternative-init-but-no-init.d-script"];

const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/multihome.service";
const DSH_STATE: &str = "/var/lib/systemd/deb-systemd-helper-enabled/multihome.service.dsh-also";
const DSH_WANTS: &str =
    "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/multihome.service";

/// A package path the runner set in the environment.
fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set: the package tier runs through `cargo xtask package --test` \
             (or `cargo xtask test`), which builds the packages and names them"
        )
    });
    PathBuf::from(value)
}

/// Every package built, with its architecture.
fn packages() -> Vec<(PathBuf, String)> {
    let list = env_path("MULTIHOME_PACKAGES");
    let debs: Vec<(PathBuf, String)> = std::env::split_paths(&list)
        .map(|deb| {
            let arch = field(&deb, "Architecture");
            (deb, arch)
        })
        .collect();
    assert!(!debs.is_empty(), "MULTIHOME_PACKAGES names no package");
    debs
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|err| panic!("cannot start {cmd:?}: {err}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn field(deb: &Path, name: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_owned()
}

/// A directory of this test's, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mh-package-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The package's files (`dpkg-deb -x`) and control area (`dpkg-deb -e`).
fn unpack(deb: &Path, scratch: &Scratch) -> (PathBuf, PathBuf) {
    let (root, control) = (scratch.0.join("root"), scratch.0.join("DEBIAN"));
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    (root, control)
}

/// One line of `dpkg-deb -c`: mode string, owner, size, path (absolute).
struct Entry {
    mode: String,
    owner: String,
    size: u64,
    path: String,
}

fn listing(deb: &Path) -> Vec<Entry> {
    stdout(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            Entry {
                mode: words[0].to_owned(),
                owner: words[1].to_owned(),
                size: words[2].parse().unwrap(),
                path: words[5]
                    .trim_start_matches('.')
                    .trim_end_matches('/')
                    .to_owned(),
            }
        })
        .collect()
}

/// ELF e_machine for the Debian architecture.
fn elf_machine(arch: &str) -> u16 {
    match arch {
        "amd64" => 62,
        "arm64" => 183,
        other => panic!("no package is built for {other}"),
    }
}

#[test]
fn every_package_holds_what_debian_policy_puts_where() {
    for (deb, arch) in packages() {
        let entries = listing(&deb);
        let files: Vec<&str> = entries
            .iter()
            .filter(|e| !e.mode.starts_with('d'))
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(files, FILES, "{}", deb.display());
        for entry in &entries {
            let want = if entry.mode.starts_with('d') || entry.path == "/usr/bin/multihome" {
                "rwxr-xr-x"
            } else {
                "rw-r--r--"
            };
            assert_eq!(&entry.mode[1..], want, "{}", entry.path);
            assert_eq!(entry.owner, "root/root", "{}", entry.path);
        }

        let scratch = Scratch::new(&format!("files-{arch}"));
        let (root, _) = unpack(&deb, &scratch);
        let binary = fs::read(root.join("usr/bin/multihome")).unwrap();
        assert_eq!(&binary[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([binary[18], binary[19]]),
            elf_machine(&arch),
            "{}: the binary is not for {arch}",
            deb.display()
        );
        let sections = stdout(
            Command::new("readelf")
                .arg("-S")
                .arg(root.join("usr/bin/multihome")),
        );
        assert!(
            !sections.contains(".debug_info") && !sections.contains(".symtab"),
            "not stripped:\n{sections}"
        );
        let unit = fs::read_to_string(root.join("lib/systemd/system/multihome.service")).unwrap();
        assert!(
            unit.contains(
                "\nExecStart=/usr/bin/multihome run --idle-without-uplinks $MULTIHOME_OPTS\n"
            ),
            "{unit}"
        );
        let default = fs::read_to_string(root.join("etc/default/multihome")).unwrap();
        assert!(
            !default.lines().any(|l| l.starts_with("MULTIHOME_UPLINKS=")),
            "the shipped configuration must name no uplink (the service idles until the \
             operator does):\n{default}"
        );
        let copyright = fs::read_to_string(root.join("usr/share/doc/multihome/copyright")).unwrap();
        assert!(copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        ));
        assert!(copyright.contains("\n aya 0.14."), "{copyright}");
        assert!(
            !copyright.contains("clap_derive"),
            "a proc-macro is not linked"
        );
        // gzip -9n: no file name and no time stamp in the header, the best compression flag.
        for page in FILES.iter().filter(|f| f.ends_with(".gz")) {
            let bytes = fs::read(root.join(&page[1..])).unwrap();
            assert_eq!(&bytes[..3], b"\x1f\x8b\x08", "{page}");
            assert_eq!(bytes[3] & 0x08, 0, "{page} records its file name");
            assert_eq!(&bytes[4..8], [0; 4], "{page} records a time stamp");
            assert_eq!(bytes[8], 2, "{page} is not gzip -9");
            run(Command::new("gzip").arg("-t").arg(root.join(&page[1..])));
        }
    }
}

#[test]
fn control_fields_are_complete_and_depends_only_on_run_time_libraries() {
    for (deb, arch) in packages() {
        let name = deb.file_name().unwrap().to_str().unwrap().to_owned();
        let version = field(&deb, "Version");
        assert_eq!(name, format!("multihome_{version}_{arch}.deb"));
        assert_eq!(field(&deb, "Package"), "multihome");
        assert_eq!(field(&deb, "Section"), "net");
        assert_eq!(field(&deb, "Priority"), "optional");
        let maintainer = field(&deb, "Maintainer");
        assert!(
            maintainer.contains(" <") && maintainer.ends_with('>'),
            "{maintainer}"
        );
        let description = field(&deb, "Description");
        assert!(
            description.starts_with("source-based egress for hosts with several DHCP uplinks\n"),
            "{description}"
        );
        assert!(description.contains("/etc/default/multihome"));

        let scratch = Scratch::new(&format!("control-{arch}"));
        let (root, control) = unpack(&deb, &scratch);
        // dpkg-gencontrol's sum: each file in KiB rounded up, one per directory, the control
        // area included as it was when it ran (md5sums comes after, as with dh_md5sums).
        let entries = listing(&deb);
        let files: u64 = entries
            .iter()
            .filter(|e| !e.path.is_empty())
            .map(|e| {
                if e.mode.starts_with('d') {
                    1
                } else {
                    e.size.div_ceil(1024)
                }
            })
            .sum();
        let control_area: u64 = fs::read_dir(&control)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name() != "md5sums")
            .map(|e| e.metadata().unwrap().len().div_ceil(1024))
            .sum::<u64>()
            + 1;
        let installed: u64 = field(&deb, "Installed-Size").parse().unwrap();
        assert_eq!(
            installed,
            files + control_area,
            "Installed-Size: files {files} KiB, control area {control_area} KiB"
        );

        // The binary is static (musl): no program interpreter, no library, so
        // no Depends at all and no glibc floor; it installs and runs on Debian 11's glibc 2.31
        // as on the newest.
        let binary = root.join("usr/bin/multihome");
        let headers = stdout(
            Command::new("readelf")
                .args(["-d", "-l", "-h"])
                .arg(&binary),
        );
        assert!(
            !headers.contains("(NEEDED)") && !headers.contains("program interpreter"),
            "the binary links libraries: {headers}"
        );
        // A static PIE where Rust's musl target makes one (x86-64), a plain static executable
        // on arm64 (lintian's verdicts on both are overridden: dist/debian/lintian-overrides).
        let kind = if arch == "amd64" {
            "DYN (Position-Independent Executable"
        } else {
            "EXEC (Executable file)"
        };
        assert!(headers.contains(kind), "{arch}: not {kind}:\n{headers}");
        assert_eq!(
            field(&deb, "Depends"),
            "",
            "a static binary depends on nothing"
        );

        let conffiles = fs::read_to_string(control.join("conffiles")).unwrap();
        assert_eq!(conffiles.lines().collect::<Vec<_>>(), CONFFILES);
        // md5sums covers every file, and every sum is right.
        let sums = fs::read_to_string(control.join("md5sums")).unwrap();
        let listed: Vec<String> = sums
            .lines()
            .map(|l| format!("/{}", l.split_whitespace().nth(1).unwrap()))
            .collect();
        assert_eq!(listed, FILES);
        run(Command::new("md5sum")
            .args(["--check", "--quiet"])
            .arg(control.join("md5sums"))
            .current_dir(&root));
        for script in ["postinst", "prerm", "postrm"] {
            let path = control.join(script);
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o755,
                "{script}"
            );
            run(Command::new("sh").arg("-n").arg(&path));
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("#!/bin/sh\n") && text.contains("\nset -e\n"),
                "{script}"
            );
        }
        let postinst = fs::read_to_string(control.join("postinst")).unwrap();
        assert!(postinst.contains("deb-systemd-helper enable 'multihome.service'"));
        assert!(postinst.contains("_dh_action=restart"));
        let prerm = fs::read_to_string(control.join("prerm")).unwrap();
        // Restart after upgrade: prerm stops the service on remove only, never on upgrade.
        assert!(prerm.contains(
            "[ \"$1\" = remove ] && [ -d /run/systemd/system ] ; then\n\
             \tdeb-systemd-invoke stop 'multihome.service'"
        ));
        assert_eq!(prerm.matches("deb-systemd-invoke").count(), 1);
    }
}

#[test]
fn lintian_reports_no_errors_and_only_the_documented_warnings() {
    for (deb, _) in packages() {
        let start = Instant::now();
        let out = Command::new("lintian")
            .args(["--display-info", "--tag-display-limit", "0"])
            .arg(&deb)
            .output()
            .expect("lintian (cargo xtask setup installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        println!(
            "lintian {} ({:.0} s):\n{text}",
            deb.display(),
            start.elapsed().as_secs_f64()
        );
        let mut tags: BTreeMap<char, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ": ");
            let (Some(kind), Some("multihome"), Some(rest)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let tag = rest.split_whitespace().next().unwrap().to_owned();
            tags.entry(kind.chars().next().unwrap())
                .or_default()
                .insert(tag);
        }
        let of = |kind| tags.get(&kind).cloned().unwrap_or_default();
        assert!(of('E').is_empty(), "lintian errors: {:?}\n{text}", of('E'));
        let kept: BTreeSet<String> = KEPT_WARNINGS.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            of('W'),
            kept,
            "warnings differ from docs/packaging.md's list"
        );
        let known: BTreeSet<String> = KNOWN_INFO.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            of('I'),
            known,
            "info tags differ from docs/packaging.md's list"
        );
        assert!(
            out.status.success(),
            "lintian failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// dpkg's frontend lock, held for the whole life cycle (as apt holds it around its dpkg
/// runs), so that no apt or dpkg elsewhere on the machine changes the file system meanwhile;
/// our own dpkg runs are told it is held (DPKG_FRONTEND_LOCKED).
struct FrontendLock {
    _file: fs::File,
}

impl FrontendLock {
    fn acquire() -> FrontendLock {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open("/var/lib/dpkg/lock-frontend")
            .expect("opening dpkg's frontend lock");
        let start = Instant::now();
        loop {
            // SAFETY: a zeroed flock is a valid argument; fcntl only reads it.
            let mut lock: libc::flock = unsafe { std::mem::zeroed() };
            lock.l_type = libc::F_WRLCK as i16;
            lock.l_whence = libc::SEEK_SET as i16;
            // SAFETY: F_SETLK on an open file with a valid struct flock.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
                return FrontendLock { _file: file };
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "dpkg's frontend lock was held by someone else for 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `dpkg --install DEB` under our frontend lock, with no terminal to ask questions on.
fn dpkg_install(deb: &Path) -> String {
    let out = Command::new("dpkg")
        .arg("--install")
        .arg(deb)
        .env("DPKG_FRONTEND_LOCKED", "1")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ dpkg --install {}\n{text}", deb.display());
    assert!(out.status.success(), "dpkg --install failed:\n{text}");
    text
}

/// dpkg's abbreviated status of multihome ("ii ", "rc "), or None when dpkg does not know it.
fn status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev} ${Version}", "multihome"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Purges multihome on drop unless the test got to the end: a failed test leaves nothing.
struct Installed {
    done: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.done && status().is_some() {
            eprintln!("package tier: purging multihome after a failure");
            let _ = purge_isolated().status();
        }
    }
}

/// `dpkg --purge multihome` in a network namespace and bpffs of its own: the prerm's cleanup
/// (when the package is still installed) cannot touch the host's routing or pins.
fn purge_isolated() -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "sh", "-c"])
        .arg("mount -t bpf bpf /sys/fs/bpf && dpkg --purge multihome")
        .env("DPKG_FRONTEND_LOCKED", "1")
        .stdin(Stdio::null());
    cmd
}

/// What the file system holds where a package can leave anything: path -> kind, mode, owner,
/// size (not times: dpkg's own files change those) and a link's target.
fn snapshot() -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let what = if meta.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&path).unwrap_or_default())
            } else {
                let size = if meta.is_dir() { 0 } else { meta.len() };
                format!("{:o} {}:{} {size}", meta.mode(), meta.uid(), meta.gid())
            };
            out.insert(path.clone(), what);
            if meta.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    for dir in ["/etc", "/usr", "/var/lib/systemd", "/var/lib/dpkg/info"] {
        walk(Path::new(dir), &mut out);
    }
    out
}

fn difference(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) -> Vec<String> {
    let mut diff = Vec::new();
    for (path, what) in after {
        match before.get(path) {
            None => diff.push(format!("left behind: {} ({what})", path.display())),
            Some(was) if was != what => {
                diff.push(format!("changed: {} ({was} -> {what})", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        diff.push(format!("removed: {}", path.display()));
    }
    diff
}

/// What deb-systemd-helper records for an enabled unit (with no systemd running, it is all
/// there is): the [Install] section's symlink, the list of the links it made, and its record
/// that it enabled the unit.
fn assert_enabled() {
    let link = fs::read_link(WANTS).unwrap_or_else(|_| panic!("{WANTS} is missing"));
    assert_eq!(link, Path::new("/lib/systemd/system/multihome.service"));
    let state = fs::read_to_string(DSH_STATE).unwrap_or_else(|_| panic!("{DSH_STATE} is missing"));
    assert_eq!(state.trim(), WANTS);
    // Its record that enable ran (an empty file): kept, an upgrade does not enable again a
    // unit the operator disabled.
    assert!(Path::new(DSH_WANTS).is_file(), "{DSH_WANTS} is missing");
}

/// The operator's configuration, which an upgrade keeps and remove leaves for purge.
const CONFIGURED: &str = "MULTIHOME_UPLINKS=\"wan1\"\n";

#[test]
fn install_upgrade_remove_and_purge_leave_nothing_behind() {
    require_root();
    let native = env_path("MULTIHOME_NATIVE_PACKAGE");
    let previous = env_path("MULTIHOME_PREVIOUS_PACKAGE");
    let (old, new) = (field(&previous, "Version"), field(&native, "Version"));
    let newer = Command::new("dpkg")
        .args(["--compare-versions", &old, "lt", &new])
        .status()
        .unwrap();
    assert!(newer.success(), "{old} is not older than {new}");

    let _lock = FrontendLock::acquire();
    if let Some(known) = status() {
        panic!(
            "dpkg already knows multihome ({known}): this test installs and purges it, so it \
             will not touch an installation it did not make; purge it first \
             (dpkg --purge multihome)"
        );
    }
    let before = snapshot();
    let mut installed = Installed { done: false };

    // Install the previous version: every file in place, the service enabled.
    dpkg_install(&previous);
    assert_eq!(status().unwrap(), format!("ii  {old}"));
    for file in FILES {
        assert!(Path::new(file).exists(), "{file} is not installed");
    }
    assert_enabled();

    // The operator configures it; the upgrade keeps that and the enablement.
    fs::write("/etc/default/multihome", CONFIGURED).unwrap();
    dpkg_install(&native);
    assert_eq!(status().unwrap(), format!("ii  {new}"));
    assert_eq!(
        fs::read_to_string("/etc/default/multihome").unwrap(),
        CONFIGURED
    );
    assert_enabled();
    // dpkg --verify: only the conffile the operator changed differs from the package.
    let verify = Command::new("dpkg")
        .args(["--verify", "multihome"])
        .output()
        .unwrap();
    let verify = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.trim(), "??5?????? c /etc/default/multihome");

    // Remove, run where a stopped daemon (--keep-on-exit) left its rules and guard: the
    // prerm's cleanup removes them.
    let (left, removal, after) = remove_beside_leftovers();
    assert!(
        left.contains("proto 77"),
        "no rules left to clean up:\n{left}"
    );
    assert!(
        left.contains("/sys/fs/bpf/multihome/SRC_V4"),
        "no guard pinned:\n{left}"
    );
    assert!(removal.contains("removed ipv4 rule"), "{removal}");
    assert!(
        !after.contains("proto 77"),
        "rules left after remove:\n{after}"
    );
    assert!(
        !after.contains("/sys/fs/bpf/multihome"),
        "pins left after remove:\n{after}"
    );
    assert_eq!(status().unwrap(), format!("rc  {new}"));
    for file in FILES.iter().filter(|f| !CONFFILES.contains(f)) {
        assert!(
            !Path::new(file).exists(),
            "{file} is still there after remove"
        );
    }
    assert_eq!(
        fs::read_to_string("/etc/default/multihome").unwrap(),
        CONFIGURED
    );
    // As with any debhelper package, remove keeps the enablement (a reinstall keeps the
    // operator's choice); purge forgets it.
    assert!(
        fs::symlink_metadata(WANTS).is_ok(),
        "{WANTS} went with remove"
    );

    // Installed again over the kept configuration: enabled, the configuration untouched. Then
    // the operator disables the unit, and an upgrade (a reinstall: postinst runs the same way)
    // leaves it disabled.
    dpkg_install(&native);
    assert_eq!(status().unwrap(), format!("ii  {new}"));
    assert_enabled();
    assert_eq!(
        fs::read_to_string("/etc/default/multihome").unwrap(),
        CONFIGURED
    );
    run(Command::new("systemctl").args(["disable", "multihome.service"]));
    assert!(
        fs::symlink_metadata(WANTS).is_err(),
        "{WANTS} survived disable"
    );
    dpkg_install(&native);
    assert!(
        fs::symlink_metadata(WANTS).is_err(),
        "an upgrade enabled the unit the operator had disabled"
    );

    // Purge: the conffiles, the enablement records and dpkg's record go; the file system is as
    // before.
    let purge = stdout(&mut purge_isolated());
    println!("{purge}");
    assert!(
        purge.contains("Purging configuration files for multihome"),
        "{purge}"
    );
    assert_eq!(status(), None);
    installed.done = true;
    let dpkg_status = fs::read_to_string("/var/lib/dpkg/status").unwrap();
    assert!(!dpkg_status.contains("\nPackage: multihome\n"));
    let diff = difference(&before, &snapshot());
    assert!(
        diff.is_empty(),
        "the file system differs after purge:\n{}",
        diff.join("\n")
    );
}

/// In a namespace with an uplink and a private bpffs, runs the installed daemon with
/// --keep-on-exit and stops it, then `dpkg --remove multihome` there; returns what was left
/// before, dpkg's output, and what is left after.
fn remove_beside_leftovers() -> (String, String, String) {
    let (host, _router) = one_uplink();
    let script = r#"
        set -e
        mount -t bpf bpf /sys/fs/bpf
        log=$(mktemp)
        multihome run --keep-on-exit wan1 >"$log" 2>&1 &
        pid=$!
        i=0
        until grep -q 'running:' "$log"; do
            i=$((i + 1))
            if [ $i -gt 1000 ] || ! kill -0 $pid 2>/dev/null; then cat "$log"; exit 1; fi
            sleep 0.01
        done
        kill -TERM $pid
        wait $pid
        rm "$log"
        pins() { find /sys/fs/bpf -path '*/multihome*' | sort | tr '\n' ' '; }
        echo "== left"; ip -N rule show; echo "pins: $(pins)"
        echo "== remove"; dpkg --remove multihome 2>&1
        echo "== after"; ip -N rule show; echo "pins: $(pins)"
    "#;
    let out = host
        .command("unshare")
        .args(["--mount", "sh", "-c", script])
        .env("DPKG_FRONTEND_LOCKED", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the removal beside leftovers failed:\n{text}"
    );
    let part = |from: &str, to: &str| {
        let start = text.find(from).unwrap() + from.len();
        let end = text[start..].find(to).map_or(text.len(), |e| start + e);
        text[start..end].to_owned()
    };
    (
        part("== left", "== remove"),
        part("== remove", "== after"),
        part("== after", "\0"),
    )
}
