//! Why a step of the probe failed, on one line: the kernel's errno by name and, for a program
//! the verifier refused, the verifier's own reason rather than its whole log.

use std::io;

use aya::programs::ProgramError;
use aya::{BtfError, EbpfError};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Failure {
    /// What went wrong, one line.
    pub(crate) reason: String,
    /// The kernel's errno by name (`"EINVAL"`), when it gave one.
    pub(crate) errno: Option<String>,
    pub(crate) kind: Kind,
}

/// Where the failure came from, as far as it matters for the advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// The verifier refused the program.
    Verifier,
    /// Loading the object's BTF, or relocating against the kernel's.
    Btf,
    Other,
}

impl Failure {
    /// A failed system call of the probe's own.
    pub(super) fn os(what: &str, err: io::Error) -> Failure {
        let errno = err.raw_os_error();
        Failure {
            reason: match errno {
                Some(n) => format!("{what}: {}", describe_errno(n)),
                None => format!("{what}: {err}"),
            },
            errno: errno.map(|n| errno_name(n).to_owned()),
            kind: Kind::Other,
        }
    }

    /// What the guard's loader reported. Its outermost message is advice for the daemon's log
    /// (run with --no-ebpf, ...) and is left out when the kernel's own error follows it.
    pub(crate) fn of(err: &anyhow::Error) -> Failure {
        let errno = err
            .chain()
            .find_map(|e| e.downcast_ref::<io::Error>()?.raw_os_error());
        let verifier_log = err.chain().find_map(|e| match e.downcast_ref() {
            Some(ProgramError::LoadError { verifier_log, .. }) => Some(verifier_log.to_string()),
            _ => None,
        });
        let btf = err.chain().any(|e| {
            e.is::<BtfError>()
                || matches!(
                    e.downcast_ref(),
                    Some(EbpfError::BtfError(_) | EbpfError::BtfRelocationError(_))
                )
        });
        let (kind, what) = match verifier_log.as_deref().map(verifier_reason) {
            Some(Some(reason)) => (Kind::Verifier, reason.to_owned()),
            // Refused before the verifier said anything (a missing privilege, say).
            Some(None) => (Kind::Other, "BPF_PROG_LOAD failed".to_owned()),
            None => (
                if btf { Kind::Btf } else { Kind::Other },
                chain_without_advice(err),
            ),
        };
        Failure {
            reason: match errno {
                Some(n) => format!("{what} ({})", describe_errno(n)),
                None => what,
            },
            errno: errno.map(|n| errno_name(n).to_owned()),
            kind,
        }
    }
}

/// The error's messages from the first one after the loader's own (when there is one), each
/// once: aya's errors repeat their source in their message, and the errno is added apart.
fn chain_without_advice(err: &anyhow::Error) -> String {
    let mut messages: Vec<String> = Vec::new();
    for message in err
        .chain()
        .filter(|e| !e.is::<io::Error>())
        .map(ToString::to_string)
    {
        if !messages.last().is_some_and(|last| last.contains(&message)) {
            messages.push(message);
        }
    }
    let own = usize::from(messages.len() > 1);
    messages[own..].join(": ")
}

/// Statistics the verifier appends after its verdict.
const VERIFIER_STATISTICS: [&str; 3] = ["processed ", "verification time", "stack depth"];

/// The verifier's reason for refusing a program: the last line of its log that is not one of
/// the statistics it appends.
pub(crate) fn verifier_reason(log: &str) -> Option<&str> {
    log.lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !VERIFIER_STATISTICS.iter().any(|s| l.starts_with(s)))
}

/// `Invalid argument, EINVAL`: the message and the name an operator can look up.
pub(crate) fn describe_errno(errno: i32) -> String {
    let message = io::Error::from_raw_os_error(errno).to_string();
    let message = message
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_owned();
    format!("{message}, {}", errno_name(errno))
}

/// The symbolic name of the errnos the kernel returns to a loader and to netlink.
pub(crate) fn errno_name(errno: i32) -> &'static str {
    /// The kernel's own "not supported" (include/linux/errno.h), which bpf(2) leaks to user space.
    const ENOTSUPP: i32 = 524;
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        ENOTSUPP => "ENOTSUPP",
        _ => "errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_reason_is_its_last_word_before_the_statistics() {
        // The tail of the log 5.10.0-30 gave for the guard before it was fixed (issue 13).
        let log = "; let x = ...\n\
                   45: (79) r1 = *(u64 *)(r10 -40)\n\
                   invalid read from stack off -40+0 size 8\n\
                   processed 1234 insns (limit 1000000) max_states_per_insn 4 total_states 80 \
                   peak_states 80 mark_read 30\n\
                   verification time 15320 usec\n\
                   stack depth 96\n\n";
        assert_eq!(
            verifier_reason(log),
            Some("invalid read from stack off -40+0 size 8")
        );
        assert_eq!(
            verifier_reason("unknown func bpf_redirect_neigh#152\n"),
            Some("unknown func bpf_redirect_neigh#152")
        );
        assert_eq!(verifier_reason("processed 3 insns\n"), None);
        assert_eq!(verifier_reason(""), None);
    }

    #[test]
    fn errnos_are_named() {
        assert_eq!(describe_errno(libc::EINVAL), "Invalid argument, EINVAL");
        assert_eq!(
            describe_errno(libc::EPERM),
            "Operation not permitted, EPERM"
        );
        assert_eq!(errno_name(524), "ENOTSUPP");
        assert_eq!(errno_name(4095), "errno");
    }

    #[test]
    fn the_loaders_own_advice_gives_way_to_the_kernels_error() {
        let err = anyhow::Error::new(io::Error::from_raw_os_error(libc::EINVAL))
            .context("`bpf_mprog_attach` failed")
            .context("cannot attach the guard to x (run with --no-ebpf)");
        let f = Failure::of(&err);
        assert_eq!(
            f.reason,
            "`bpf_mprog_attach` failed (Invalid argument, EINVAL)"
        );
        assert_eq!(f.errno.as_deref(), Some("EINVAL"));
        assert_eq!(f.kind, Kind::Other);
        let alone = Failure::of(&anyhow::anyhow!("no network device with ifindex 9"));
        assert_eq!(alone.reason, "no network device with ifindex 9");
        assert_eq!(alone.errno, None);
    }

    #[test]
    fn own_calls_name_their_errno() {
        let f = Failure::os("cannot unshare", io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(f.reason, "cannot unshare: Operation not permitted, EPERM");
        assert_eq!(f.errno.as_deref(), Some("EPERM"));
    }
}
