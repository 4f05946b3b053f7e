//! Network namespaces for tests: uniquely named, removed (with every process inside) on drop,
//! and swept at the next start when a killed run left them behind.
//!
//! Processes run inside through `nsenter --net=`, never `ip netns exec`: the latter remounts
//! `/sys`, which hides bpffs from the process.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Every namespace the tests make starts with this, followed by the creating process's pid.
const PREFIX: &str = "mht";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails the test loudly when it cannot do what it needs: these tiers need root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN): run `sudo cargo xtask test`"
    );
}

/// A network namespace created by the test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mht<pid>x<n><tag>` with loopback up. `tag` (a few letters) makes names readable.
    pub fn new(tag: &str) -> Result<Netns> {
        sweep_leftovers();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}x{n}{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The guard's pin directory for a daemon in this namespace (bpffs is shared by every
    /// namespace, so each gets its own), removed with the namespace.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir_of(&self.name)
    }

    /// The runtime directory (the daemon's claim and control socket, `RUNTIME_DIRECTORY`) for a
    /// daemon in this namespace, as systemd's `RuntimeDirectory=` would give it: root's, mode
    /// 0755, removed with the namespace. The tests' daemons use it rather than the host's
    /// /run/multihome.
    pub fn runtime_dir(&self) -> PathBuf {
        let dir = runtime_dir_of(&self.name);
        if let Err(err) = fs::create_dir_all(&dir) {
            panic!("creating {}: {err}", dir.display());
        }
        dir
    }

    /// The steering root (`--cgroup-root`) of a daemon in this namespace: cgroups are shared
    /// by every namespace, so each gets its own, removed with the namespace.
    pub fn cgroup_root(&self) -> PathBuf {
        cgroup_root_of(&self.name)
    }

    /// A command that will run inside the namespace, with `RUNTIME_DIRECTORY` naming the
    /// namespace's [`Self::runtime_dir`] (a daemon started there claims it there); a
    /// `multihome` among them steers below the namespace's own cgroup root
    /// (MULTIHOME_CGROUP_ROOT).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program)
            .env("RUNTIME_DIRECTORY", self.runtime_dir())
            .env("MULTIHOME_CGROUP_ROOT", self.cgroup_root());
        cmd
    }

    /// Runs `argv` inside and returns its standard output; a non-zero exit is an error that
    /// carries the command and its standard error.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().context("empty command")?;
        run(self.command(program).args(args))
    }

    /// Runs a shell script inside.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run(&["sh", "-c", script])
    }

    /// Starts a long-running process inside, stopped when the returned guard drops.
    pub fn spawn(&self, argv: &[&str]) -> Result<Process> {
        self.spawn_with(argv, |_| ())
    }

    /// Like `spawn`, with standard output and error appended to `log`.
    pub fn spawn_logged(&self, argv: &[&str], log: &std::path::Path) -> Result<Process> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        self.spawn_with(argv, |cmd| {
            cmd.stdout(out).stderr(err);
        })
    }

    fn spawn_with(&self, argv: &[&str], setup: impl FnOnce(&mut Command)) -> Result<Process> {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        setup(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {argv:?} in {}", self.name))?;
        let process = Process { child };
        self.wait_inside(process.pid())?;
        Ok(process)
    }

    /// Waits until `pid` has entered this namespace (nsenter forks nothing, but it has to get
    /// there first) or has already exited, so that removing the namespace is sure to find and
    /// stop it.
    fn wait_inside(&self, pid: u32) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let want = fs::metadata(self.path())?.ino();
        for _ in 0..500 {
            match fs::metadata(format!("/proc/{pid}/ns/net")) {
                Ok(meta) if meta.ino() == want => return Ok(()),
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                // Gone already (a command that fails fast, e.g. a refused second daemon):
                // nothing is left to stop; its exit status tells the caller what happened.
                Err(_) => return Ok(()),
            }
        }
        bail!("process {pid} did not enter {} within a second", self.name)
    }

    /// Runs `f` on a thread whose network namespace is this one: sockets it opens (netlink,
    /// the guard's TCX attachments, test traffic) live here.
    pub fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let file = fs::File::open(self.path()).expect("opening the namespace file");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a namespace fd only changes this thread's namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Whether an interface of this name exists here.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.run(&["ip", "link", "show", "dev", ifname]).is_ok()
    }

    /// The ifindex of an interface here (from `ip -o link`: `/sys` shows the caller's namespace).
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.run(&["ip", "-o", "link", "show", "dev", ifname])?;
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no ifindex in {out:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// A veth pair from `a` (named `a_name`) to `b` (named `b_name`), both up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.run(&[
        "ip",
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.run(&["ip", "link", "set", a_name, "up"])?;
    b.run(&["ip", "link", "set", b_name, "up"])?;
    Ok(())
}

/// The seed's two uplinks without DHCP: namespaces `host` and two routers (named from
/// `names`), wan1 (192.168.0.10/24) and wan2 (192.168.0.20/24) to routers that are both
/// 192.168.0.1, with wan1's default route preferred (metric 10 against 20).
pub fn two_static_uplinks(names: [&str; 3]) -> Result<(Netns, [Netns; 2])> {
    let [host, a, b] = names;
    let host = Netns::new(host)?;
    let routers = [Netns::new(a)?, Netns::new(b)?];
    for (router, wan) in routers.iter().zip(["wan1", "wan2"]) {
        veth(&host, wan, router, "lan")?;
        router.run(&["ip", "addr", "add", "192.168.0.1/24", "dev", "lan"])?;
    }
    host.sh(
        "ip addr add 192.168.0.10/24 dev wan1 && ip addr add 192.168.0.20/24 dev wan2 &&
         ip route add default via 192.168.0.1 dev wan1 metric 10 proto dhcp &&
         ip route add default via 192.168.0.1 dev wan2 metric 20 proto dhcp",
    )?;
    Ok((host, routers))
}

/// A process started in a namespace, killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (false once it exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits for the exit.
    pub fn stop(mut self, signal: i32) -> Result<std::process::ExitStatus> {
        // SAFETY: kill on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        Ok(self.child.wait()?)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn pin_dir_of(name: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf").join(name)
}

/// Under the temporary directory, named for the namespace with `RUNTIME_SUFFIX`.
fn runtime_dir_of(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}{RUNTIME_SUFFIX}"))
}

const RUNTIME_SUFFIX: &str = "-run";

/// Where the cgroup2 hierarchy is mounted (from mountinfo: /sys/fs/cgroup/unified on hybrid
/// hosts, /sys/fs/cgroup on unified ones).
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split(' ').collect();
            (fs.starts_with("cgroup2 ") && fields.get(3) == Some(&"/"))
                .then(|| PathBuf::from(fields[4]))
        })
        .expect("no cgroup2 hierarchy is mounted: the steering tests need one")
}

fn cgroup_root_of(name: &str) -> PathBuf {
    cgroup2_mount().join(format!("{name}.slice"))
}

/// Removes the cgroup `dir` and its descendants (children first); those still holding a
/// process stay.
pub fn remove_cgroup_tree(dir: &std::path::Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Kills what runs in a namespace and deletes it, with the guard pins a killed daemon left
/// (they would keep its programs loaded).
fn remove(name: &str) {
    if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", name])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain kill(2); the pid is a process inside the namespace being removed.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // SIGKILL is delivered asynchronously: wait (bounded) until nothing runs inside, so that
    // the namespace and its devices are really gone when this returns.
    for _ in 0..200 {
        match run(Command::new("ip").args(["netns", "pids", name])) {
            Ok(pids) if !pids.trim().is_empty() => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => break,
        }
    }
    let _ = run(Command::new("ip").args(["netns", "del", name]));
    let _ = fs::remove_dir_all(pin_dir_of(name));
    let _ = fs::remove_dir_all(runtime_dir_of(name));
    remove_cgroup_tree(&cgroup_root_of(name));
}

/// Deletes namespaces (and pin directories) of this prefix whose creating process is gone.
fn sweep_leftovers() {
    let temp = std::env::temp_dir();
    let cgroups = cgroup2_mount();
    for dir in [
        Path::new("/run/netns"),
        Path::new("/sys/fs/bpf"),
        &temp,
        &cgroups,
    ] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // In the temporary directory only runtime directories, in the cgroup tree only
            // steering roots: remove() takes them with their namespace's name.
            let name = match name.strip_suffix(RUNTIME_SUFFIX) {
                Some(ns) if dir == temp => ns.to_owned(),
                _ if dir == temp => continue,
                _ if dir == cgroups => match name.strip_suffix(".slice") {
                    Some(ns) => ns.to_owned(),
                    None => continue,
                },
                _ => name,
            };
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('x').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                remove(&name);
            }
        }
    }
}
