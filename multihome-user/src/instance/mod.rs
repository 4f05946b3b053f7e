//! One daemon per network namespace and protocol: two would fight over the same rules. The
//! claim is a POSIX record lock on `net<netns inode>-protocol<N>.lock` in the runtime directory
//! (`/run/multihome`, systemd's `RuntimeDirectory=`): the directory is root's and not writable
//! by others, the file mode 0600, so nobody without the daemon's privileges can create, open or
//! lock it (a file others may read would let them hold a read lock that blocks ours). The
//! kernel releases the lock however the daemon ends, a crash included; `F_GETLK` names the
//! holder's pid. The file holds the daemon's [`Record`]. Files are never removed: unlinking a
//! lock file races with the next daemon opening it, and they are a few bytes each.
//!
//! Releases before this one claimed the abstract unix socket `@multihome/<N>`, which any local
//! user can bind. It is still taken when free, so that an older release started later refuses;
//! held by root it is an older daemon running (refused), held by anyone else a squatter
//! (warned about and ignored).
//!
//! Nothing else in the process may open a lock file: closing any descriptor of a file drops
//! the process's POSIX locks on it.

pub(crate) mod control;
mod record;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub(crate) use record::{Left, Record};

/// The runtime directory when systemd does not name one.
pub(crate) const RUNTIME_DIR: &str = "/run/multihome";

/// Where the lock files and control sockets live: `$RUNTIME_DIRECTORY` (set by systemd from
/// the unit's `RuntimeDirectory=multihome`, i.e. /run/multihome; the first one if several),
/// else [`RUNTIME_DIR`].
pub(crate) fn runtime_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| {
            let dirs = dirs.to_string_lossy().into_owned();
            dirs.split(':').find(|d| !d.is_empty()).map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(RUNTIME_DIR))
}

/// The names of one claim's files: per network namespace (the inode of its nsfs file, unique
/// among live namespaces: the holder keeps its namespace alive, so a reused number only ever
/// meets a stale, unlocked file) and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    dir: PathBuf,
    prefix: String,
}

impl Names {
    /// The claim of `protocol` in the calling thread's network namespace.
    pub(crate) fn here(dir: &Path, protocol: u8) -> io::Result<Names> {
        Ok(Names {
            dir: dir.to_path_buf(),
            prefix: format!("{}-protocol{protocol}", netns_prefix()?),
        })
    }

    pub(crate) fn lock(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.prefix))
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.prefix))
    }
}

/// The control sockets in `dir` of daemons of this network namespace, by protocol.
pub(crate) fn sockets_here(dir: &Path) -> io::Result<Vec<(u8, PathBuf)>> {
    let prefix = format!("{}-protocol", netns_prefix()?);
    let mut found: Vec<(u8, PathBuf)> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let protocol = name
                .strip_prefix(&prefix)?
                .strip_suffix(".sock")?
                .parse()
                .ok()?;
            Some((protocol, entry.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// `net<inode>` of the calling thread's network namespace.
fn netns_prefix() -> io::Result<String> {
    Ok(format!(
        "net{}",
        fs::metadata("/proc/thread-self/ns/net")?.ino()
    ))
}

/// A held lock on a lock file, with the record written there.
pub(crate) struct Lock {
    file: File,
    path: PathBuf,
    record: Record,
}

impl Lock {
    /// Writes `left` into the record. A failure is logged: the claim itself still holds.
    pub(crate) fn set_left(&mut self, left: Left) {
        self.record.left = left;
        if let Err(err) = write_record(&mut self.file, &self.record) {
            log::warn!("cannot write {}: {err}", self.path.display());
        }
    }

    pub(crate) fn record(&self) -> &Record {
        &self.record
    }
}

/// The claim, held for the daemon's lifetime.
pub(crate) struct Instance {
    lock: Lock,
    names: Names,
    _old_claim: Option<UnixListener>,
}

impl Instance {
    pub(crate) fn set_left(&mut self, left: Left) {
        self.lock.set_left(left);
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }
}

/// Claims this network namespace for `protocol` in `dir`, or says who holds it. The record
/// says the daemon runs with `pin_dir`, in state `left`.
pub(crate) fn claim(
    dir: &Path,
    protocol: u8,
    pin_dir: &Path,
    left: Left,
) -> Result<Instance, String> {
    prepare_dir(dir)?;
    let names = Names::here(dir, protocol)
        .map_err(|e| format!("cannot read this process's network namespace: {e}"))?;
    let path = names.lock();
    let mut file = open_lock_file(&path)?;
    if let Err(err) = lock(&file) {
        return Err(match err.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => format!(
                "another multihome run (protocol {protocol}) is already running in this network \
                 namespace: {}, holding {}: stop it first (systemctl stop multihome) or give this \
                 one another --protocol",
                holder(&mut file),
                path.display()
            ),
            _ => format!("cannot lock {}: {err}", path.display()),
        });
    }
    let record = Record {
        pid: std::process::id(),
        // SAFETY: geteuid has no preconditions.
        uid: unsafe { libc::geteuid() },
        protocol,
        pin_dir: pin_dir.to_path_buf(),
        left,
    };
    write_record(&mut file, &record)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let old_claim = old_claim(protocol)?;
    Ok(Instance {
        lock: Lock { file, path, record },
        names,
        _old_claim: old_claim,
    })
}

/// The claims in `dir` for this network namespace whose daemon is gone and whose record says
/// it left objects with nobody to look after them, each locked (so that no daemon starts on
/// them meanwhile). Claims a live daemon holds are skipped.
pub(crate) fn orphans(dir: &Path) -> io::Result<Vec<Lock>> {
    let prefix = format!("{}-protocol", netns_prefix()?);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&prefix) && name.ends_with(".lock")) {
            continue;
        }
        let path = entry.path();
        let Ok(mut file) = open_lock_file(&path) else {
            continue;
        };
        if lock(&file).is_err() {
            log::info!("{}: held by {}, skipped", path.display(), holder(&mut file));
            continue;
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        match Record::parse(&text) {
            Some(record) if record.left.orphans_objects() => {
                found.push(Lock { file, path, record })
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Makes the runtime directory, or checks the one that is there: a directory (not a symlink)
/// of ours that nobody else can write to, or anyone could block or fake the claim.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
            "cannot create the runtime directory {}: {e} (the unit's RuntimeDirectory=multihome \
                 makes it under systemd)",
            dir.display()
        ))
        }
    }
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot read the runtime directory {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the runtime directory {} is not a directory of uid {me} that only it can write to \
             (found {}, uid {}, mode {:o}): anyone who can write there could block or fake the \
             one-daemon claim; remove it, multihome makes it again",
            dir.display(),
            if meta.file_type().is_symlink() {
                "a symlink"
            } else if meta.is_dir() {
                "a directory"
            } else {
                "a file"
            },
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn open_lock_file(path: &Path) -> Result<File, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // A file made by a hand with a wider mode would let others hold a read lock on it.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("cannot make {} private: {e}", path.display()))?;
    }
    Ok(file)
}

fn flock_all(kind: i32) -> libc::flock {
    // SAFETY: flock is plain data; all zero is a valid value (whole file from offset 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Takes the write lock on the whole file, without waiting.
fn lock(file: &File) -> io::Result<()> {
    let fl = flock_all(libc::F_WRLCK);
    // SAFETY: F_SETLK reads the flock struct we own, on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Who holds the lock on `file`, for the refusal: the kernel's word (pid, and its name and uid
/// where /proc shows them: under the unit's ProtectProc=invisible another process may be
/// hidden) and what the holder wrote there.
fn holder(file: &mut File) -> String {
    let mut fl = flock_all(libc::F_WRLCK);
    // SAFETY: F_GETLK writes into the flock struct we own.
    let asked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) } == 0;
    let mut said = match (asked, fl.l_type as i32) {
        (true, t) if t != libc::F_UNLCK => describe_pid(fl.l_pid),
        _ => "a process that has just let go".to_owned(),
    };
    let mut text = String::new();
    if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
        if let Some(record) = Record::parse(&text) {
            said.push_str(&format!(
                " (its record: pid {}, uid {})",
                record.pid, record.uid
            ));
        }
    }
    said
}

/// `pid N (comm, uid U)`, as much of it as /proc shows.
fn describe_pid(pid: i32) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"));
    let uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        });
    match (comm, uid) {
        (Ok(comm), Some(uid)) => format!("pid {pid} ({}, uid {uid})", comm.trim()),
        _ => format!("pid {pid}"),
    }
}

fn write_record(file: &mut File, record: &Record) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(record.to_string().as_bytes())
}

/// The claim of releases before this one, `@multihome/<protocol>`: taken when free; refused
/// when root holds it (an older daemon runs here); ignored with a warning when someone else
/// does.
fn old_claim(protocol: u8) -> Result<Option<UnixListener>, String> {
    let name = format!("multihome/{protocol}");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
    let err = match UnixListener::bind_addr(&addr) {
        Ok(socket) => return Ok(Some(socket)),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => err,
        Err(err) => {
            log::warn!("cannot bind @{name} (the claim of older releases): {err}");
            return Ok(None);
        }
    };
    let peer = UnixStream::connect_addr(&addr)
        .ok()
        .and_then(|stream| peer_cred(&stream));
    match peer {
        Some(cred) if cred.uid == 0 => Err(format!(
            "another multihome run (protocol {protocol}) is already running in this network \
             namespace: {}, holding @{name} (an older release, or one with another \
             RUNTIME_DIRECTORY): stop it first (systemctl stop multihome)",
            describe_pid(cred.pid)
        )),
        Some(cred) => {
            log::warn!(
                "@{name}, the one-daemon claim of older releases, is held by {}, which is not \
                 a multihome daemon: ignored ({err})",
                describe_pid(cred.pid)
            );
            Ok(None)
        }
        None => {
            log::warn!("@{name}, the one-daemon claim of older releases, is held by a process that does not answer: ignored");
            Ok(None)
        }
    }
}

/// The credentials of the process at the other end of `stream` (for a listener: who bound it).
pub(crate) fn peer_cred(stream: &UnixStream) -> Option<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred into the struct we own, `len` its size.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (ret == 0).then_some(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mh-instance-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_claim_writes_its_record_into_a_private_file() {
        let dir = scratch("record");
        let pins = Path::new("/sys/fs/bpf/multihome");
        let mut instance = claim(&dir, 201, pins, Left::Running).unwrap();
        let lock = instance.names().lock();
        let mode = fs::metadata(&lock).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o755);
        let record = Record::parse(&fs::read_to_string(&lock).unwrap()).unwrap();
        assert_eq!(record.pid, std::process::id());
        assert_eq!((record.protocol, record.left), (201, Left::Running));
        instance.set_left(Left::Removed);
        let record = Record::parse(&fs::read_to_string(&lock).unwrap()).unwrap();
        assert_eq!(record.left, Left::Removed);
        drop(instance);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_runtime_directory_others_can_write_to_is_refused() {
        let dir = scratch("open");
        DirBuilder::new().mode(0o777).create(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let refused = claim(&dir, 202, Path::new("/x"), Left::Running)
            .err()
            .unwrap();
        assert!(refused.contains("only it can write to"), "{refused}");
        assert!(refused.contains("mode 777"), "{refused}");
        fs::remove_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/tmp", &dir).unwrap();
        let refused = claim(&dir, 202, Path::new("/x"), Left::Running)
            .err()
            .unwrap();
        assert!(refused.contains("found a symlink"), "{refused}");
        fs::remove_file(dir).unwrap();
    }
}
