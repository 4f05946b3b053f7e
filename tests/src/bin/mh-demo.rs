//! `cargo xtask demo`: the seed's problem and multihome's fix, live, in about half a minute.
//! Two home routers hand out the same 192.168.0.0/24 with the same gateway; the host's
//! uplinks get their leases from systemd-networkd (route metrics 10 and 20, as in the seed).
//! Everything runs in network namespaces this program creates and removes.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use multihome_tests::daemon::{multihome_bin, Daemon};
use multihome_tests::testbed::probe::{self, Proto, Via};
use multihome_tests::testbed::{Client, Isp, Lease, Testbed};

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("mh-demo: needs root (network namespaces, eBPF): run `sudo cargo xtask demo`");
        return ExitCode::from(2);
    }
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mh-demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    let start = Instant::now();
    println!("multihome demo: ISP A's and ISP B's home routers both hand out 192.168.0.0/24,");
    println!("gateway 192.168.0.1; the host's wan1 (ISP A, metric 10) and wan2 (ISP B, metric");
    println!("20) get leases from systemd-networkd. An echo service on the \"internet\" answers");
    println!("with the address it saw, which tells the ISP a request left through.\n");

    let t = Instant::now();
    let mut bed = Testbed::up(Client::Networkd).context("bringing the testbed up")?;
    println!("[1/5] testbed up in {:.1} s", t.elapsed().as_secs_f64());
    for isp in [Isp::A, Isp::B] {
        println!(
            "      {}: {:<15} {}  ({isp})",
            isp.uplink(),
            bed.v4(isp),
            bed.v6(isp)
        );
    }

    println!("\n[2/5] without multihome");
    let wrong = table(&bed);
    println!("      -> {wrong} of 10 requests left through the wrong ISP (or got no answer)");

    let t = Instant::now();
    let daemon = Daemon::start(&bed.host, &["wan1", "wan2"]).context("starting multihome")?;
    println!(
        "\n[3/5] with `multihome run wan1 wan2` (ready in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let wrong = table(&bed);
    println!("      -> {wrong} of 10 wrong");

    println!("\n[4/5] renumbering: router B now hands out 192.168.0.200-249, wan2 renews");
    let old = bed.v4(Isp::B);
    bed.b.serve(Lease {
        pool: (200, 249),
        ..Lease::initial(Isp::B)
    })?;
    let t = Instant::now();
    bed.renew(Isp::B)?;
    let new = bed.wait_address(Isp::B, false, |a| a != old);
    let right = wait_right(&bed, new, Duration::from_secs(15));
    println!(
        "      wan2: {old} -> {new}; `curl --interface {new}` answered by {} {:.1} s after the renewal",
        right.map_or("nobody".to_string(), |isp| isp.to_string()),
        t.elapsed().as_secs_f64()
    );

    println!("\n[5/5] multihome status");
    let out = bed
        .host
        .command(multihome_bin().to_str().unwrap())
        .args(["status", "--pin-dir"])
        .arg(daemon.pin_dir())
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("      {line}");
    }

    let stopped = daemon.stop();
    let left = bed.owned_rules();
    drop(bed);
    println!(
        "\nteardown: multihome stopped ({stopped}; {} of its rules left), routers, DHCP \
         clients and namespaces removed. Total {:.1} s.",
        left.lines().count(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Asks the echo service over HTTP (curl) in every way an application can pick an uplink,
/// IPv4 and IPv6; prints who answered and returns how many answers were wrong.
fn table(bed: &Testbed) -> usize {
    let rows = [
        ("curl http://ECHO/", Bind::Unbound, Isp::A),
        ("curl --interface wan1", Bind::Device(Isp::A), Isp::A),
        ("curl --interface wan2", Bind::Device(Isp::B), Isp::B),
        (
            "curl --interface <wan1's address>",
            Bind::Address(Isp::A),
            Isp::A,
        ),
        (
            "curl --interface <wan2's address>",
            Bind::Address(Isp::B),
            Isp::B,
        ),
    ];
    println!("      {:<36} {:<17} {:<17} expected", "", "IPv4", "IPv6");
    let mut wrong = 0;
    for (label, via, want) in &rows {
        let cells: Vec<String> = [false, true]
            .iter()
            .map(|&v6| {
                let got = probe::isp(&bed.host, &via.resolve(bed, v6), Proto::Http, v6);
                if got != Some(*want) {
                    wrong += 1;
                }
                let mark = if got == Some(*want) { "ok" } else { "WRONG" };
                format!(
                    "{} {mark}",
                    got.map_or("no answer".into(), |i| i.to_string())
                )
            })
            .collect();
        println!("      {label:<36} {:<17} {:<17} {want}", cells[0], cells[1]);
    }
    wrong
}

/// How a row of the table binds its request, resolved per family.
enum Bind {
    Unbound,
    Device(Isp),
    Address(Isp),
}

impl Bind {
    fn resolve(&self, bed: &Testbed, v6: bool) -> Via {
        match *self {
            Bind::Unbound => Via::Unbound,
            Bind::Device(isp) => Via::Device(isp.uplink().into()),
            Bind::Address(isp) if v6 => Via::Addr(bed.v6(isp)),
            Bind::Address(isp) => Via::Addr(bed.v4(isp)),
        }
    }
}

/// Polls until a request from `src` is answered by ISP B, or `within` passes.
fn wait_right(bed: &Testbed, src: IpAddr, within: Duration) -> Option<Isp> {
    let start = Instant::now();
    loop {
        let got = probe::isp(&bed.host, &Via::Addr(src), Proto::Http, false);
        if got == Some(Isp::B) || start.elapsed() > within {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
