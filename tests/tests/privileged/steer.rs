//! Steering programs onto an uplink (`multihome exec`, uplink slices) on the real-DHCP testbed:
//! a dynamically linked curl, busybox-static's wget and a Go program, each under `multihome
//! exec wan2`, are answered by ISP B while unbound traffic stays on ISP A; loopback, the host's
//! own addresses, a local DNS stub and the uplink's own subnet stay reachable from inside; an
//! LD_PRELOAD socket wrapper (what OpenWrt's `mwan3 use` does) steers curl but not the static
//! binary, which exec does; slices made by hand are picked up by the running daemon; and a
//! steered sender leaks nothing to ISP A while its uplink is renumbered and re-created (counted
//! at router A's forward hook).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use multihome_tests::daemon::{multihome_bin, wait_for, Daemon};
use multihome_tests::netns::{Netns, Process};
use multihome_tests::testbed::{Client, Isp, Testbed, ECHO_V4, ECHO_V6};

/// busybox-static: no libc socket calls an LD_PRELOAD wrapper could catch. Its 1.35 `wget -T`
/// crashes on a peer that closes, so the time limit comes from `timeout`.
const BUSYBOX: &str = "/bin/busybox";

fn url(v6: bool) -> String {
    if v6 {
        format!("http://[{ECHO_V6}]/")
    } else {
        format!("http://{ECHO_V4}/")
    }
}

/// Runs `argv` in the host namespace; its output, whatever the exit status.
fn output(host: &Netns, argv: &[&str]) -> Output {
    let (program, args) = argv.split_first().unwrap();
    host.command(program).args(args).output().unwrap()
}

/// `multihome exec UPLINK -- argv...` with the daemon's pins.
fn exec(host: &Netns, uplink: &str, argv: &[&str]) -> Output {
    let bin = multihome_bin();
    let pins = host.pin_dir().display().to_string();
    let mut all = vec![
        bin.to_str().unwrap(),
        "exec",
        "--pin-dir",
        &pins,
        uplink,
        "--",
    ];
    all.extend_from_slice(argv);
    output(host, &all)
}

/// Which ISP the echo service named in `out`'s standard output, if any.
fn answered(out: &Output) -> Option<Isp> {
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<IpAddr>()
        .ok()
        .and_then(Isp::from_wan)
}

fn show(out: &Output) -> String {
    format!(
        "{}: stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn curl(v6: bool) -> Vec<String> {
    ["curl", "-sS", "--max-time", "3", &url(v6)]
        .map(String::from)
        .to_vec()
}

fn wget(v6: bool) -> Vec<String> {
    ["timeout", "5", BUSYBOX, "wget", "-q", "-O", "-", &url(v6)]
        .map(String::from)
        .to_vec()
}

fn strs(argv: &[String]) -> Vec<&str> {
    argv.iter().map(String::as_str).collect()
}

/// A Go program that asks the echo service over TCP (Go makes its system calls itself, without
/// libc), built with the Debian toolchain `cargo xtask setup` installs.
fn go_client(dir: &Path) -> PathBuf {
    let src = dir.join("echo.go");
    std::fs::write(
        &src,
        r#"package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	c, err := net.DialTimeout("tcp", os.Args[1], 3*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(c)
	fmt.Print(string(b))
}
"#,
    )
    .unwrap();
    let bin = dir.join("echo-go");
    let out = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("no Go toolchain: `cargo xtask setup` installs golang-go");
    assert!(out.status.success(), "go build: {}", show(&out));
    bin
}

/// An LD_PRELOAD wrapper as `mwan3 use` works: every socket() through libc gets the uplink's
/// mark, so a dynamically linked program is steered and a static one is not.
fn preload_shim(dir: &Path, mark: u32) -> PathBuf {
    let src = dir.join("shim.c");
    std::fs::write(
        &src,
        format!(
            r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>
int socket(int domain, int type, int protocol) {{
    int (*real)(int, int, int) = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    int fd = real(domain, type, protocol);
    unsigned mark = {mark}u;
    if (fd >= 0 && (domain == AF_INET || domain == AF_INET6))
        setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark);
    return fd;
}}
"#
        ),
    )
    .unwrap();
    let so = dir.join("shim.so");
    let out = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("gcc");
    assert!(out.status.success(), "gcc: {}", show(&out));
    so
}

fn scratch(host: &Netns) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-steer", host.name()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A local service in the host namespace: `socat` answering `reply` on `listen`.
fn local_service(host: &Netns, listen: &str, reply: &str) -> Process {
    // A datagram server reads the request before it answers: otherwise socat may still be
    // writing it to the finished `echo` (EPIPE) and exit before it sent the answer.
    let answer = if listen.starts_with("UDP") {
        format!("SYSTEM:read _; echo {reply}")
    } else {
        format!("SYSTEM:echo {reply}")
    };
    host.spawn(&["socat", listen, &answer]).unwrap()
}

#[test]
fn exec_steers_every_kind_of_program_and_keeps_local_traffic() {
    let bed = Testbed::up(Client::Dhclient).unwrap();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    let host = &bed.host;
    let dir = scratch(host);

    for v6 in [false, true] {
        let plain = output(host, &strs(&curl(v6)));
        assert_eq!(
            answered(&plain),
            Some(Isp::A),
            "unbound v6={v6}: {}",
            show(&plain)
        );
        for argv in [curl(v6), wget(v6)] {
            let out = exec(host, "wan2", &strs(&argv));
            assert_eq!(
                answered(&out),
                Some(Isp::B),
                "exec wan2 {argv:?}: {}\n{}",
                show(&out),
                bed.describe()
            );
            let out = exec(host, "wan1", &strs(&argv));
            assert_eq!(
                answered(&out),
                Some(Isp::A),
                "exec wan1 {argv:?}: {}",
                show(&out)
            );
        }
    }
    let go = go_client(&dir);
    let go = go.to_str().unwrap();
    for (dst, v6) in [
        (format!("{ECHO_V4}:7"), false),
        (format!("[{ECHO_V6}]:7"), true),
    ] {
        let out = exec(host, "wan2", &[go, &dst]);
        assert_eq!(answered(&out), Some(Isp::B), "Go v6={v6}: {}", show(&out));
    }

    // ping: the steered one reaches the internet through router B only.
    let (a0, b0) = (bed.a.forwarded().unwrap(), bed.b.forwarded().unwrap());
    let out = exec(host, "wan2", &["ping", "-c", "2", "-W", "2", ECHO_V4]);
    assert!(out.status.success(), "ping: {}", show(&out));
    assert_eq!(bed.a.forwarded().unwrap(), a0, "ping reached router A");
    assert!(bed.b.forwarded().unwrap() >= b0 + 2, "ping missed router B");

    // The exit status is the command's.
    assert_eq!(
        exec(host, "wan2", &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    // The daemon removes the exec scopes once their commands are gone (and never one whose
    // exec is still moving in: every exec above found its scope).
    let slice = host.cgroup_root().join("multihome-wan2.slice");
    let scopes = || -> Vec<String> {
        std::fs::read_dir(&slice)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("exec-"))
            .collect()
    };
    wait_for(
        "the emptied exec scopes to be removed",
        Duration::from_secs(5),
        || scopes().is_empty().then_some(()),
        || format!("{:?}", scopes()),
    );

    // Loopback, a DNS stub on 127.0.0.53, the host's own addresses (another uplink's too) and
    // the uplink's own subnet stay reachable.
    let wan1 = bed.v4(Isp::A).to_string();
    let _services = [
        local_service(
            host,
            "TCP4-LISTEN:8080,bind=127.0.0.1,fork,reuseaddr",
            "loopback",
        ),
        local_service(
            host,
            "TCP6-LISTEN:8080,bind=[::1],fork,reuseaddr",
            "loopback6",
        ),
        local_service(
            host,
            &format!("TCP4-LISTEN:8081,bind={wan1},fork,reuseaddr"),
            "own",
        ),
        local_service(host, "UDP4-RECVFROM:53,bind=127.0.0.53,fork", "dns"),
    ];
    // A datagram is sent (UDP needs one to be answered); a TCP client sends nothing and waits
    // for the answer (a client's end of input would close the connection first).
    let client = |target: &str| {
        let script = if target.starts_with("UDP") {
            // -t 2: after its input ends socat waits 2 s (not the default 0.5 s) for the
            // answer, which a loaded machine's forked echo can take.
            format!("echo ? | socat -t 2 -T 2 - {target}")
        } else {
            format!("socat -T 2 -u {target} -")
        };
        exec(host, "wan2", &["sh", "-c", &script])
    };
    // Every listener is bound before the first probe (socat starts them concurrently: the
    // UDP one may come last).
    let listening = || host.sh("ss -Hltun").unwrap_or_default();
    let bound = [
        "127.0.0.1:8080".to_owned(),
        "[::1]:8080".to_owned(),
        format!("{wan1}:8081"),
        "127.0.0.53:53".to_owned(),
    ];
    wait_for(
        "the local services to listen",
        Duration::from_secs(5),
        || {
            let now = listening();
            bound.iter().all(|b| now.contains(b.as_str())).then_some(())
        },
        listening,
    );
    for (target, reply) in [
        ("TCP4:127.0.0.1:8080".to_owned(), "loopback"),
        ("TCP6:[::1]:8080".to_owned(), "loopback6"),
        (format!("TCP4:{wan1}:8081"), "own"),
        ("UDP4:127.0.0.53:53".to_owned(), "dns"),
    ] {
        let out = client(&target);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            reply,
            "{target} from inside: {}",
            show(&out)
        );
    }
    let out = exec(host, "wan2", &["ping", "-c", "1", "-W", "2", "192.168.0.1"]);
    assert!(
        out.status.success(),
        "router B on wan2's subnet: {}",
        show(&out)
    );

    // An LD_PRELOAD wrapper steers libc's sockets only: curl, not the static busybox.
    let shim = preload_shim(&dir, 0x6d68_0000 | 1002);
    let preloaded = |argv: &[String]| {
        let mut cmd = host.command("env");
        cmd.arg(format!("LD_PRELOAD={}", shim.display())).args(argv);
        cmd.output().unwrap()
    };
    assert_eq!(
        answered(&preloaded(&curl(false))),
        Some(Isp::B),
        "the shim steers curl"
    );
    let missed = preloaded(&wget(false));
    assert_eq!(
        answered(&missed),
        Some(Isp::A),
        "the shim's blind spot: {}",
        show(&missed)
    );
    assert_eq!(
        answered(&exec(host, "wan2", &strs(&wget(false)))),
        Some(Isp::B)
    );

    // Slices made by hand: a unit's cgroup below the uplink's slice, the slice itself removed
    // and made again, and a slice of no uplink, whose sockets are refused.
    let root = host.cgroup_root();
    let slice = root.join("multihome-wan2.slice");
    let in_cgroup = |cgroup: &Path, argv: &[String]| {
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cgroup.display());
        let mut cmd = host.command("sh");
        cmd.args(["-c", &script, "sh"]).args(argv);
        cmd.output().unwrap()
    };
    let unit = slice.join("backup.service");
    std::fs::create_dir(&unit).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; root holds {:?}\n{}",
            unit.display(),
            std::fs::read_dir(&root)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            daemon.log()
        )
    });
    assert_eq!(
        answered(&in_cgroup(&unit, &wget(false))),
        Some(Isp::B),
        "a unit in the slice"
    );
    let status = output(
        host,
        &[
            multihome_bin().to_str().unwrap(),
            "status",
            "--json",
            "--pin-dir",
            host.pin_dir().to_str().unwrap(),
            "wan1",
            "wan2",
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let steering = &json["uplinks"][1]["steering"];
    assert_eq!(steering["mapped"], true, "{json:#}");
    assert_eq!(steering["mark"], "0x6d6803ea");
    assert!(steering["sockets"].as_u64().unwrap() > 0, "{json:#}");
    assert!(
        steering["units"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "backup.service"),
        "{json:#}"
    );
    assert_eq!(json["steering"]["attached"], true);
    std::fs::remove_dir(&unit).unwrap();
    multihome_tests::netns::remove_cgroup_tree(&slice);
    wait_for(
        "the daemon to create wan2's slice again",
        Duration::from_secs(5),
        || slice.exists().then_some(()),
        || daemon.log(),
    );
    std::fs::remove_dir(&slice).ok();
    std::fs::create_dir(&slice).ok();
    wait_for(
        "a slice made by hand to be steered",
        Duration::from_secs(5),
        || (answered(&in_cgroup(&slice, &wget(false))) == Some(Isp::B)).then_some(()),
        || daemon.log(),
    );
    let typo = root.join("multihome-typo.slice");
    std::fs::create_dir(&typo).unwrap();
    let socket = ["socat", "-T", "1", "-u", &format!("TCP4:{ECHO_V4}:7"), "-"].map(String::from);
    let refused = in_cgroup(&typo, &socket);
    assert!(
        !refused.status.success(),
        "a slice of no uplink: {}",
        show(&refused)
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Operation not permitted"),
        "refused, not routed: {}",
        show(&refused)
    );
    std::fs::remove_dir(&typo).unwrap();

    // Without a daemon steering the uplink, exec refuses (exit 2) and runs nothing.
    let out = exec(host, "wan3", &["true"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not steered"),
        "{}",
        show(&out)
    );

    assert!(daemon.stop().success());
    assert!(
        !root.exists(),
        "the daemon's teardown removes the steering root"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A steered sender (a long-lived UDP socket and a new TCP connection every 0.3 s) while wan2
/// is renumbered through DHCP and then deleted and re-created: its traffic waits or fails while
/// wan2 has no route, and not one packet is forwarded by router A.
#[test]
fn renumbering_and_recreation_under_exec_leak_nothing() {
    let mut bed = Testbed::up(Client::Dhclient).unwrap();
    let _daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).unwrap();
    let bin = multihome_bin();
    let pins = bed.host.pin_dir().display().to_string();
    let script = format!(
        "(while :; do echo x; sleep 0.05; done | socat -u - UDP4-SENDTO:{ECHO_V4}:7) &
         while :; do timeout 2 {BUSYBOX} wget -q -O /dev/null http://{ECHO_V4}/; sleep 0.3; done"
    );
    let a0 = bed.a.forwarded().unwrap();
    let b0 = bed.b.forwarded().unwrap();
    let sender = bed
        .host
        .spawn(&[
            bin.to_str().unwrap(),
            "exec",
            "--pin-dir",
            &pins,
            "wan2",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .unwrap();
    let scope = bed
        .host
        .cgroup_root()
        .join("multihome-wan2.slice")
        .join(format!("exec-{}.scope", sender.pid()));
    flows_at_b(&bed, b0, "at first");

    let old = bed.v4(Isp::B);
    // Outside B's pool (150-199), which may have given wan2 any of its addresses at first.
    bed.renumber(Isp::B, "192.168.0.230".parse().unwrap())
        .unwrap();
    bed.wait_address(Isp::B, false, |a| a != old);
    let b1 = bed.b.forwarded().unwrap();
    flows_at_b(&bed, b1, "after the renumbering");

    bed.recreate(Isp::B).unwrap();
    bed.wait_configured(Isp::B);
    let b2 = bed.b.forwarded().unwrap();
    flows_at_b(&bed, b2, "after wan2 came back");

    // Everything in the scope stops before the count is read.
    std::fs::write(scope.join("cgroup.kill"), "1").unwrap();
    drop(sender);
    let leaked = bed.a.forwarded().unwrap() - a0;
    let at_b = bed.b.forwarded().unwrap() - b0;
    eprintln!("steered sender: {at_b} packets forwarded by router B, {leaked} by router A");
    assert_eq!(
        leaked,
        0,
        "packets of the steered sender at ISP A\n{}",
        bed.describe()
    );
}

/// Waits until router B has forwarded a few more packets than `since`.
fn flows_at_b(bed: &Testbed, since: u64, what: &str) {
    wait_for(
        &format!("steered traffic at router B {what}"),
        Duration::from_secs(20),
        || (bed.b.forwarded().unwrap() > since + 5).then_some(()),
        || bed.describe(),
    )
}
