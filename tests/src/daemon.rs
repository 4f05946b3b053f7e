//! The `multihome` binary run as the tests' daemon: inside a test namespace, with its own pin
//! directory (bpffs is shared by every namespace), its output kept for failure messages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::netns::{Netns, Process};

/// The workspace's `multihome` binary.
pub fn multihome_bin() -> PathBuf {
    built_bin("multihome")
}

/// A binary of the workspace in `target/<profile>/`, found from a test executable (in
/// `deps/` below it) as well as from a binary in that directory itself (the demo).
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let bin = [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: build the workspace first (`cargo xtask test` does)",
            exe.display()
        )
    })
}

/// Polls `probe` every 10 ms until it returns `Some`, or panics after `timeout` naming `what`
/// and the last thing seen (`last` describes the state on failure).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
    last: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen:\n{}",
                last()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `multihome run`.
pub struct Daemon {
    process: Option<Process>,
    log: PathBuf,
    pin_dir: PathBuf,
}

impl Daemon {
    /// Starts `multihome run ARGS` in `ns` with a pin directory of its own and waits until it
    /// has reconciled once (it logs "running:").
    pub fn start(ns: &Netns, args: &[&str]) -> Result<Daemon> {
        Daemon::start_with_pins(ns, args, &ns.pin_dir())
    }

    /// Like `start`, with a given pin directory (to restart a daemon on the same pins).
    pub fn start_with_pins(ns: &Netns, args: &[&str], pin_dir: &Path) -> Result<Daemon> {
        Daemon::launch(ns, &[], args, pin_dir)
    }

    /// Like `start`, run through `wrapper` (e.g. `env VAR=x`, `setpriv ...`, `strace ...`);
    /// `stop` and `kill` then signal the wrapper.
    pub fn start_wrapped(ns: &Netns, wrapper: &[&str], args: &[&str]) -> Result<Daemon> {
        Daemon::launch(ns, wrapper, args, &ns.pin_dir())
    }

    fn launch(ns: &Netns, wrapper: &[&str], args: &[&str], pin_dir: &Path) -> Result<Daemon> {
        let log = std::env::temp_dir().join(format!("{}-{}.log", ns.name(), unique()));
        let bin = multihome_bin();
        let pin_arg = pin_dir.display().to_string();
        let mut argv = wrapper.to_vec();
        argv.extend([
            bin.to_str().unwrap(),
            "--log-level",
            "debug",
            "run",
            "--pin-dir",
            pin_arg.as_str(),
        ]);
        argv.extend_from_slice(args);
        let process = ns.spawn_logged(&argv, &log)?;
        let mut daemon = Daemon {
            process: Some(process),
            log,
            pin_dir: pin_dir.to_path_buf(),
        };
        let start = Instant::now();
        while !daemon.log().contains("running:") {
            if !daemon.process.as_mut().unwrap().running() {
                bail!("multihome exited at start:\n{}", daemon.log());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("multihome not ready within 10 s:\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The process's pid (the daemon's, unless it runs through a wrapper that forks).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::pid)
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::running)
    }

    /// SIGTERM, and the exit status once it is gone.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.process.take().unwrap().stop(libc::SIGTERM).unwrap()
    }

    /// Like `stop`, with everything it logged up to its end.
    pub fn stop_logged(mut self) -> (std::process::ExitStatus, String) {
        let status = self.process.take().unwrap().stop(libc::SIGTERM).unwrap();
        (status, self.log())
    }

    /// SIGKILL: a crash, leaving whatever it had installed.
    pub fn kill(mut self) {
        self.process.take().unwrap().stop(libc::SIGKILL).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- multihome log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `multihome ARGS` run to completion in `ns`, which must succeed (its stderr otherwise):
/// its standard output.
pub fn multihome_ok(ns: &Netns, args: &[&str]) -> String {
    let out = ns
        .command(multihome_bin().to_str().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
