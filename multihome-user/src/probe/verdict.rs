//! The probe's outcome in words: a summary of what works, notes on what falls back and why,
//! and findings (each with its fix) for what stops the guard or could not be checked. Pure: the
//! kernel's answers come in as a [`Probe`].

use crate::check::Finding;
use crate::privileges::{self, Capability, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN};

use super::{Failure, Kind, Probe, Step};

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// One line: `loads; attaches by tcx and clsact (auto uses tcx); redirect helper ok`.
    pub(crate) summary: String,
    /// What falls back and why, and what does not matter: nothing to fix.
    pub(crate) notes: Vec<String>,
    pub(crate) findings: Vec<Finding>,
}

/// What the probe needs, all of it named when one is missing.
const PROBE_NEEDS: [Capability; 4] = [CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON];

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

pub(crate) fn verdict(probe: &Probe, capabilities: u64, kernel_btf: bool) -> Verdict {
    let mut out = Verdict::default();
    // Before the guard loads, the first failure decides: later steps were skipped.
    let setup = [
        (
            &probe.sandbox,
            CAP_SYS_ADMIN,
            "network namespaces (CONFIG_NET_NS)",
        ),
        (&probe.device, CAP_NET_ADMIN, "veth devices (CONFIG_VETH)"),
    ];
    for (step, cap, feature) in setup {
        if let Some(f) = step.failure() {
            out.summary = format!("not checked: {}", f.reason);
            out.findings.push(
                unchecked(f, &[cap], capabilities).unwrap_or_else(|| Finding {
                    problem: format!("the guard could not be checked: {}", f.reason),
                    fix: format!(
                        "check tries the guard on a scratch device in a private namespace and \
                         needs {feature}; without them, see whether `multihome run` logs that \
                         the guard cannot load"
                    ),
                }),
            );
            out.notes
                .extend(btf_note(kernel_btf, "the guard does not need it"));
            return out;
        }
    }
    if let Some(f) = probe.load.failure() {
        out.summary = match f.kind {
            Kind::Verifier => format!("refused by the verifier: {}", f.reason),
            Kind::Btf | Kind::Other => format!("does not load: {}", f.reason),
        };
        let finding = if let Some(finding) = unchecked(f, &[CAP_BPF, CAP_PERFMON], capabilities) {
            finding
        } else if f.kind == Kind::Btf && !kernel_btf {
            Finding {
                problem: format!(
                    "the guard does not load without kernel BTF ({KERNEL_BTF}): {}",
                    f.reason
                ),
                fix: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or run with --no-ebpf \
                      (rules only)"
                    .to_owned(),
            }
        } else {
            Finding {
                problem: format!(
                    "the kernel refuses the eBPF guard ({}): multihome would run rules only",
                    f.reason
                ),
                fix: "run with --no-ebpf to accept rules only, or use a kernel the README lists \
                      under Supported systems"
                    .to_owned(),
            }
        };
        out.findings.push(finding);
        if f.kind != Kind::Btf {
            out.notes
                .extend(btf_note(kernel_btf, "not why the guard failed to load"));
        }
        return out;
    }
    attachments(probe, &mut out);
    let redirect = match &probe.redirect {
        Step::Ok => "redirect helper ok",
        Step::Failed(f) => {
            out.findings.push(Finding {
                problem: format!(
                    "the guard does not redirect a misrouted packet under BPF_PROG_TEST_RUN ({})",
                    f.reason
                ),
                fix: "run with --no-ebpf (rules only), and report it as a bug".to_owned(),
            });
            "redirect fails"
        }
        Step::Skipped => "redirect not checked",
    };
    out.summary = format!("loads; {}; {redirect}", out.summary);
    out.notes.extend(btf_note(
        kernel_btf,
        "not needed, the guard loaded without it",
    ));
    out
}

/// How the guard attaches: the summary's middle part, a note for each way that falls back,
/// a finding when none works.
fn attachments(probe: &Probe, out: &mut Verdict) {
    let ways = [("tcx", &probe.tcx), ("clsact", &probe.clsact)];
    let working: Vec<&str> = ways
        .iter()
        .filter(|(_, step)| step.ok())
        .map(|(name, _)| *name)
        .collect();
    let auto = match (&probe.auto, probe.auto_uses) {
        (Step::Ok, Some(kind)) => format!("auto uses {kind}"),
        _ => "auto fails".to_owned(),
    };
    out.summary = if working.is_empty() {
        "does not attach".to_owned()
    } else {
        format!("attaches by {} ({auto})", working.join(" and "))
    };
    let failures: Vec<String> = ways
        .iter()
        .filter_map(|(name, step)| Some(format!("{name}: {}", step.failure()?.reason)))
        .collect();
    if working.is_empty() {
        out.findings.push(Finding {
            problem: format!(
                "the guard cannot attach to a device ({}): it would guard nothing",
                failures.join("; ")
            ),
            fix: "use a kernel with TCX (Linux 6.6+) or clsact (CONFIG_NET_SCH_INGRESS and \
                  CONFIG_NET_CLS_BPF), or run with --no-ebpf (rules only)"
                .to_owned(),
        });
        return;
    }
    for failure in failures {
        out.notes.push(format!("{failure}; {auto}"));
    }
    if let Some(f) = probe.auto.failure() {
        out.findings.push(Finding {
            problem: format!(
                "--attach auto fails ({}) where --attach {} works",
                f.reason, working[0]
            ),
            fix: format!("run with --attach {}, and report it as a bug", working[0]),
        });
    }
}

/// The finding for a step that failed while this process lacks a capability it `needs`:
/// nothing is known of the kernel then, and all the probe's missing capabilities are named.
fn unchecked(f: &Failure, needs: &[Capability], capabilities: u64) -> Option<Finding> {
    privileges::missing(capabilities, needs).first()?;
    let names: Vec<&str> = privileges::missing(capabilities, &PROBE_NEEDS)
        .iter()
        .map(|cap| cap.name)
        .collect();
    let all: Vec<&str> = PROBE_NEEDS.iter().map(|cap| cap.name).collect();
    Some(Finding {
        problem: format!(
            "the guard could not be checked ({}): this process lacks {}",
            f.reason,
            names.join(", ")
        ),
        fix: format!(
            "run multihome check as root (the probe needs {})",
            all.join(", ")
        ),
    })
}

/// Without kernel BTF, a note that it is no problem: the guard carries its own BTF (for its
/// maps) and uses no CO-RE relocation. `how` says what the probe showed of it.
fn btf_note(kernel_btf: bool, how: &str) -> Option<String> {
    (!kernel_btf).then(|| {
        format!("no kernel BTF ({KERNEL_BTF}): {how} (it carries its own BTF and uses no CO-RE)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::AttachKind;

    const ALL: u64 = u64::MAX;

    fn failed(reason: &str, errno: &str, kind: Kind) -> Step {
        Step::Failed(Failure {
            reason: reason.to_owned(),
            errno: Some(errno.to_owned()),
            kind,
        })
    }

    /// What 6.18 answers: everything works.
    fn works() -> Probe {
        Probe {
            sandbox: Step::Ok,
            device: Step::Ok,
            load: Step::Ok,
            tcx: Step::Ok,
            clsact: Step::Ok,
            auto: Step::Ok,
            auto_uses: Some(AttachKind::Tcx),
            redirect: Step::Ok,
            steer: Step::Ok,
        }
    }

    /// What 6.1 answers: no TCX.
    fn without_tcx() -> Probe {
        Probe {
            tcx: failed(
                "`bpf_mprog_attach` failed (Invalid argument, EINVAL)",
                "EINVAL",
                Kind::Other,
            ),
            auto_uses: Some(AttachKind::Clsact),
            ..works()
        }
    }

    fn refused() -> Probe {
        Probe {
            load: failed(
                "invalid read from stack off -40+0 size 8 (Permission denied, EACCES)",
                "EACCES",
                Kind::Verifier,
            ),
            tcx: Step::Skipped,
            clsact: Step::Skipped,
            auto: Step::Skipped,
            auto_uses: None,
            redirect: Step::Skipped,
            ..works()
        }
    }

    #[test]
    fn a_kernel_that_takes_everything_has_nothing_to_fix() {
        let v = verdict(&works(), ALL, true);
        assert_eq!(
            v.summary,
            "loads; attaches by tcx and clsact (auto uses tcx); redirect helper ok"
        );
        assert_eq!((v.notes, v.findings), (vec![], vec![]));
    }

    #[test]
    fn without_tcx_clsact_is_a_fallback_not_a_finding() {
        let v = verdict(&without_tcx(), ALL, true);
        assert_eq!(
            v.summary,
            "loads; attaches by clsact (auto uses clsact); redirect helper ok"
        );
        assert_eq!(
            v.notes,
            ["tcx: `bpf_mprog_attach` failed (Invalid argument, EINVAL); auto uses clsact"]
        );
        assert_eq!(v.findings, []);
    }

    #[test]
    fn no_kernel_btf_is_a_note_when_the_guard_loads() {
        let v = verdict(&works(), ALL, false);
        assert_eq!(v.findings, []);
        assert_eq!(v.notes.len(), 1);
        assert!(v.notes[0].starts_with("no kernel BTF (/sys/kernel/btf/vmlinux): not needed"));
    }

    #[test]
    fn a_refused_load_is_a_finding_with_the_verifiers_reason() {
        let v = verdict(&refused(), ALL, true);
        assert_eq!(
            v.summary,
            "refused by the verifier: invalid read from stack off -40+0 size 8 \
             (Permission denied, EACCES)"
        );
        assert_eq!(v.findings.len(), 1);
        assert!(v.findings[0]
            .problem
            .starts_with("the kernel refuses the eBPF guard (invalid read from stack"));
        assert!(v.findings[0].fix.contains("--no-ebpf"));
        // Without BTF as well: BTF is still not the reason.
        let v = verdict(&refused(), ALL, false);
        assert_eq!(v.findings.len(), 1);
        assert!(v.notes[0].contains("not why the guard failed to load"));
    }

    #[test]
    fn a_btf_failure_without_kernel_btf_says_so() {
        let probe = Probe {
            load: failed("BTF error: ...", "EINVAL", Kind::Btf),
            ..refused()
        };
        let v = verdict(&probe, ALL, false);
        assert!(v.findings[0]
            .problem
            .starts_with("the guard does not load without kernel BTF"));
        assert!(v.findings[0].fix.contains("CONFIG_DEBUG_INFO_BTF"));
        assert_eq!(v.notes, Vec::<String>::new());
        // With kernel BTF present the kernel just refuses it.
        let v = verdict(&probe, ALL, true);
        assert!(v.findings[0].problem.starts_with("the kernel refuses"));
    }

    #[test]
    fn a_missing_capability_means_not_checked_never_a_kernel_verdict() {
        let no_perfmon = ALL & !(1 << 38);
        let v = verdict(&refused(), no_perfmon, true);
        assert_eq!(v.findings.len(), 1);
        let f = &v.findings[0];
        assert!(
            f.problem.starts_with("the guard could not be checked"),
            "{f:?}"
        );
        assert!(
            f.problem.ends_with("this process lacks CAP_PERFMON"),
            "{f:?}"
        );
        assert!(f.fix.starts_with("run multihome check as root"));

        let unprivileged = Probe {
            sandbox: failed(
                "cannot create a private network and mount namespace: Operation not \
                 permitted, EPERM",
                "EPERM",
                Kind::Other,
            ),
            ..Probe::default()
        };
        let v = verdict(&unprivileged, 0, true);
        assert!(v
            .summary
            .starts_with("not checked: cannot create a private network"));
        assert!(v.findings[0]
            .problem
            .ends_with("lacks CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON"));
        assert!(!v.summary.contains("loads"));
    }

    #[test]
    fn a_kernel_without_namespaces_or_veth_cannot_be_probed() {
        let probe = Probe {
            device: failed(
                "cannot create a scratch veth pair: Operation not supported, EOPNOTSUPP",
                "EOPNOTSUPP",
                Kind::Other,
            ),
            ..Probe {
                sandbox: Step::Ok,
                ..Probe::default()
            }
        };
        let v = verdict(&probe, ALL, false);
        assert!(v
            .summary
            .starts_with("not checked: cannot create a scratch veth"));
        assert!(v.findings[0].fix.contains("CONFIG_VETH"));
        assert!(v.notes[0].contains("the guard does not need it"));
    }

    #[test]
    fn no_way_to_attach_and_a_failed_redirect_are_findings() {
        let probe = Probe {
            clsact: failed(
                "cannot add the clsact qdisc (Operation not supported, EOPNOTSUPP)",
                "EOPNOTSUPP",
                Kind::Other,
            ),
            auto: failed("both failed", "EOPNOTSUPP", Kind::Other),
            auto_uses: None,
            redirect: failed("a misrouted packet got verdict 2", "EINVAL", Kind::Other),
            ..without_tcx()
        };
        let v = verdict(&probe, ALL, true);
        assert_eq!(v.summary, "loads; does not attach; redirect fails");
        let problems: Vec<&str> = v.findings.iter().map(|f| f.problem.as_str()).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("the guard cannot attach to a device (tcx: "));
        assert!(problems[0].contains("; clsact: cannot add the clsact qdisc"));
        assert!(problems[1].starts_with("the guard does not redirect"));
    }
}
