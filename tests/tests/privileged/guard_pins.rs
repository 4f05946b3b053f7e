//! The guard's pins: BTF maps bpftool prints by field name, and everything a later process
//! (restarted daemon, `status`, `cleanup`) needs: map contents, counters, attachments.

use std::{net::IpAddr, path::Path, process::Command};

use aya::programs::{tc::TcAttachType, SchedClassifier};
use multihome::guard::{self, AttachKind, AttachMode, Guard, PinnedMaps};
use multihome_tests::guard::*;
use multihome_tests::netns::{require_root, veth, Netns};

/// The names of the programs on the TCX egress hook of `ifname` (this bpftool predates TCX).
fn tcx_programs(ifname: &str) -> Vec<String> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, TcAttachType::Egress).unwrap();
    programs
        .iter()
        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn bpftool_prints_the_entries_by_field_name() {
    require_root();
    let pins = PinDir::new("bt");
    let mut guard = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    let addr: IpAddr = "192.168.0.20".parse().unwrap();
    guard.put_entry(addr, &egress(4242, 1500)).unwrap();
    let text = bpftool([
        "map",
        "dump",
        "pinned",
        &path_arg(&pins.path().join("SRC_V4")),
    ]);
    assert!(text.contains("\"uplink_ifindex\": 4242"), "{text}");
    assert!(text.contains("\"addr\""), "{text}");
    // The program's size, for the record (`cargo test -- --nocapture`).
    eprintln!("{}", bpftool(["prog", "show", "name", guard::PROGRAM_NAME]));
    drop(guard);
}

#[test]
fn a_later_process_finds_maps_counters_and_attachments_and_removes_them() {
    require_root();
    let ns = Netns::new("gp").unwrap();
    veth(&ns, "wan1", &ns, "wan1p").unwrap();
    veth(&ns, "wan2", &ns, "wan2p").unwrap();
    let (wan1, wan2) = (ns.ifindex("wan1").unwrap(), ns.ifindex("wan2").unwrap());
    let pins = PinDir::new("pp");
    let addr: IpAddr = "192.168.0.20".parse().unwrap();

    // First run: an entry, a counted packet, two attachments of different kinds.
    let mut first = Guard::load(pins.path(), AttachMode::Tcx).unwrap();
    first.put_entry(addr, &egress(wan2, 1500)).unwrap();
    let frame = frame(
        [2, 0, 0, 0, 0, 1],
        &[],
        0x0800,
        &ipv4("192.168.0.20".parse().unwrap(), 40),
    );
    let ret = ns
        .enter(|| first.test_run(&frame, &SkbCtx::on(wan2).bytes()))
        .map(|(ret, _)| ret)
        .unwrap();
    assert_eq!(ret, TC_ACT_UNSPEC);
    ns.enter(|| first.attach(wan1)).unwrap();
    drop(first);
    let mut clsact = Guard::load(pins.path(), AttachMode::Clsact).unwrap();
    ns.enter(|| clsact.attach(wan2)).unwrap();
    drop(clsact);
    let hooks = ns
        .run(&["tc", "filter", "show", "dev", "wan2", "egress"])
        .unwrap();
    assert!(hooks.contains(guard::PROGRAM_NAME), "{hooks}");

    // Another process reads it all from the pins.
    let maps = PinnedMaps::open(pins.path()).unwrap();
    assert_eq!(
        maps.entries().unwrap().get(&addr),
        Some(&egress(wan2, 1500))
    );
    assert_eq!(maps.counters().unwrap()[&wan2].passed, 1);
    assert_eq!(
        guard::attachments(pins.path()),
        [(wan1, AttachKind::Tcx), (wan2, AttachKind::Clsact)].into()
    );

    // A restarted daemon keeps the map and counters, adopts and replaces the attachments.
    let mut second = Guard::load(pins.path(), AttachMode::Tcx).unwrap();
    assert_eq!(second.entries().unwrap().len(), 1);
    assert_eq!(second.counters().unwrap()[&wan2].passed, 1);
    assert_eq!(ns.enter(|| second.attached()), [wan1, wan2].into());
    ns.enter(|| -> anyhow::Result<()> {
        second.attach(wan1)?;
        second.attach(wan2)?;
        second.attach(wan2)
    })
    .unwrap();
    assert_eq!(second.attach_mode_of(wan2), Some(AttachKind::Tcx));
    let hooks = ns
        .run(&["tc", "filter", "show", "dev", "wan2", "egress"])
        .unwrap();
    assert!(
        !hooks.contains(guard::PROGRAM_NAME),
        "the old clsact filter stayed: {hooks}"
    );
    assert_eq!(ns.enter(|| tcx_programs("wan1")), [guard::PROGRAM_NAME]);
    assert_eq!(ns.enter(|| tcx_programs("wan2")), [guard::PROGRAM_NAME]);
    drop(second);

    // Cleanup from yet another process removes attachments and pins.
    let removed = ns.enter(|| guard::remove_all(pins.path())).unwrap();
    assert_eq!(
        removed.len(),
        2 + 8,
        "two attachments, eight maps: {removed:?}"
    );
    assert!(!pins.path().exists());
    assert!(ns.enter(|| tcx_programs("wan1")).is_empty());
    assert!(ns.enter(|| tcx_programs("wan2")).is_empty());
    assert!(guard::remove_all(pins.path()).unwrap().is_empty());
}

#[test]
fn a_pinned_map_of_another_layout_is_replaced() {
    require_root();
    let pins = PinDir::new("pi");
    std::fs::create_dir_all(pins.path()).unwrap();
    let stale = pins.path().join("SRC_V4");
    pin_map(&stale, ["hash", "4", "8", "16", "SRC_V4"]);
    let mut guard = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    let addr: IpAddr = "192.168.0.20".parse().unwrap();
    guard.put_entry(addr, &egress(7, 1500)).unwrap();
    let show = bpftool(["map", "show", "pinned", &path_arg(&stale)]);
    assert!(
        show.contains("value 40B") && show.contains("max_entries 4096"),
        "{show}"
    );
}

/// Runs one IPv4 frame from `src` leaving through `ifindex` and returns the verdict.
fn pass_one(guard: &mut Guard, ns: &Netns, src: &str, ifindex: u32) -> i32 {
    let frame = frame(
        [2, 0, 0, 0, 0, 1],
        &[],
        0x0800,
        &ipv4(src.parse().unwrap(), 40),
    );
    ns.enter(|| guard.test_run(&frame, &SkbCtx::on(ifindex).bytes()))
        .map(|(ret, _)| ret)
        .unwrap()
}

#[test]
fn an_older_counters_map_is_replaced_and_the_kept_entries_are_counted_again() {
    require_root();
    let ns = Netns::new("gu").unwrap();
    veth(&ns, "wan2", &ns, "wan2p").unwrap();
    let wan2 = ns.ifindex("wan2").unwrap();
    let pins = PinDir::new("pu");
    let addr: IpAddr = "192.168.0.20".parse().unwrap();
    let mut first = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    first.put_entry(addr, &egress(wan2, 1500)).unwrap();
    drop(first);

    // The counters map of the version before slots: a per-CPU hash keyed by ifindex.
    let counters = pins.path().join("COUNTERS");
    std::fs::remove_file(&counters).unwrap();
    pin_map(&counters, ["percpu_hash", "4", "40", "1024", "COUNTERS"]);

    let mut second = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    let show = bpftool(["map", "show", "pinned", &path_arg(&counters)]);
    assert!(show.contains("percpu_array"), "{show}");
    // The entry survived in its own map, and counts in a slot of its uplink again.
    assert_eq!(
        second.entries().unwrap().get(&addr),
        Some(&egress(wan2, 1500))
    );
    assert_eq!(
        pass_one(&mut second, &ns, "192.168.0.20", wan2),
        TC_ACT_UNSPEC
    );
    assert_eq!(second.counters().unwrap()[&wan2].passed, 1);
    let dump = bpftool(["map", "dump", "pinned", &path_arg(&counters)]);
    assert!(
        dump.contains(&format!("\"uplink_ifindex\": {wan2}")) && dump.contains("\"passed\": 1"),
        "{dump}"
    );
}

#[test]
fn counters_slots_of_uplinks_without_entries_are_taken_back_when_all_are_taken() {
    require_root();
    let ns = Netns::new("gs").unwrap();
    veth(&ns, "wan2", &ns, "wan2p").unwrap();
    let wan2 = ns.ifindex("wan2").unwrap();
    let pins = PinDir::new("ps");
    let mut guard = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    let gone_uplink = 100_000;
    let addr = |i: u32| {
        IpAddr::from(std::net::Ipv6Addr::from(
            0x2001_0db8_u128 << 96 | u128::from(i),
        ))
    };
    // Every slot but one to uplinks that do not exist; one of them loses its only address.
    for i in 0..multihome_ebpf::maps::MAX_UPLINKS - 2 {
        guard
            .put_entry(addr(i), &egress(gone_uplink + i, 1500))
            .unwrap();
    }
    guard.remove_entry(addr(0)).unwrap();
    // The last free slot, then the one no entry points at.
    guard
        .put_entry("192.168.0.20".parse().unwrap(), &egress(wan2, 1500))
        .unwrap();
    guard
        .put_entry("192.168.0.21".parse().unwrap(), &egress(wan2 + 1, 1500))
        .unwrap();
    let counters = guard.counters().unwrap();
    assert!(counters.contains_key(&wan2) && counters.contains_key(&(wan2 + 1)));
    assert!(
        !counters.contains_key(&gone_uplink),
        "its slot was taken back"
    );
    assert!(counters.contains_key(&(gone_uplink + 1)));
    assert_eq!(
        pass_one(&mut guard, &ns, "192.168.0.20", wan2),
        TC_ACT_UNSPEC
    );
    assert_eq!(guard.counters().unwrap()[&wan2].passed, 1);

    // All slots in use: the entry is still written (guarded), only not counted.
    let uncounted: IpAddr = "192.168.0.22".parse().unwrap();
    guard.put_entry(uncounted, &egress(wan2 + 2, 1500)).unwrap();
    assert!(guard.entries().unwrap().contains_key(&uncounted));
    assert!(!guard.counters().unwrap().contains_key(&(wan2 + 2)));
    // A restarted daemon finds the same slots in the map.
    drop(guard);
    let mut again = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    assert_eq!(
        pass_one(&mut again, &ns, "192.168.0.20", wan2),
        TC_ACT_UNSPEC
    );
    assert_eq!(again.counters().unwrap()[&wan2].passed, 2);
}

/// Pins a new map at `path` with bpftool: an earlier version's layout, for the loader to replace.
fn pin_map(path: &Path, [kind, key, value, entries, name]: [&str; 5]) {
    bpftool([
        "map",
        "create",
        &path_arg(path),
        "type",
        kind,
        "key",
        key,
        "value",
        value,
        "entries",
        entries,
        "name",
        name,
    ]);
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Runs bpftool, which must succeed, and returns what it printed.
fn bpftool<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let out = Command::new("bpftool").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// bpftool's arguments for `map OP pinned PATH key ...`, the key (and any value) as bytes.
fn map_op(op: &str, path: &Path, key: &[u8], value: Option<&[u8]>) -> Vec<String> {
    let mut args = vec!["map".to_owned(), op.to_owned(), "pinned".to_owned()];
    args.push(path_arg(path));
    args.push("key".to_owned());
    args.extend(key.iter().map(u8::to_string));
    if let Some(value) = value {
        args.push("value".to_owned());
        args.extend(value.iter().map(u8::to_string));
    }
    args
}

#[test]
fn shortcuts_follow_the_entries_and_stale_ones_are_rewritten_at_load() {
    require_root();
    let ns = Netns::new("go").unwrap();
    veth(&ns, "wan1", &ns, "wan1p").unwrap();
    veth(&ns, "wan2", &ns, "wan2p").unwrap();
    let (wan1, wan2) = (ns.ifindex("wan1").unwrap(), ns.ifindex("wan2").unwrap());
    let pins = PinDir::new("po");
    let src = "192.168.0.20";
    let mut guard = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    guard
        .put_entry(src.parse().unwrap(), &egress(wan1, 1500))
        .unwrap();
    assert_eq!(pass_one(&mut guard, &ns, src, wan1), TC_ACT_UNSPEC);
    assert_eq!(pass_one(&mut guard, &ns, src, wan2), TC_ACT_REDIRECT);
    // The address moves to wan2 (same subnet): wan1's list lets go of it.
    guard
        .put_entry(src.parse().unwrap(), &egress(wan2, 1500))
        .unwrap();
    assert_eq!(pass_one(&mut guard, &ns, src, wan1), TC_ACT_REDIRECT);
    assert_eq!(pass_one(&mut guard, &ns, src, wan2), TC_ACT_UNSPEC);
    assert_eq!(guard.counters().unwrap()[&wan2].passed, 1);
    let own = pins.path().join("OWN_SOURCES");
    let text = bpftool(map_op("lookup", &own, &wan2.to_ne_bytes(), None));
    // For the record (`cargo test -- --nocapture`), as the README shows it.
    eprintln!("{text}");
    assert!(
        text.contains("\"addr\": [192,168,0,20") || text.contains("\"addr\": [192, 168, 0, 20"),
        "bpftool map lookup of wan2's list: {text}"
    );

    // A list left by a daemon that did not keep them (another version) names the address on
    // wan1 again; the program believes it (so the list is what decides) until a load rewrites it.
    let mut stale = vec![192, 168, 0, 20, 0, 0, 0, 0];
    stale.resize(size_of::<multihome_ebpf::OwnSources>(), 0);
    bpftool(map_op("update", &own, &wan1.to_ne_bytes(), Some(&stale)));
    assert_eq!(pass_one(&mut guard, &ns, src, wan1), TC_ACT_UNSPEC);
    drop(guard);
    let mut again = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    assert_eq!(pass_one(&mut again, &ns, src, wan1), TC_ACT_REDIRECT);
    assert_eq!(pass_one(&mut again, &ns, src, wan2), TC_ACT_UNSPEC);

    // Likewise a source filter without the address's bit: its packets pass anywhere as if it
    // had no entry, until a load rewrites the filter.
    let filter = pins.path().join("SOURCE_FILTER");
    let zeros = [0; size_of::<multihome_ebpf::SourceFilter>()];
    bpftool(map_op("update", &filter, &[0; 4], Some(&zeros)));
    assert_eq!(pass_one(&mut again, &ns, src, wan1), TC_ACT_UNSPEC);
    drop(again);
    let mut third = Guard::load(pins.path(), AttachMode::Auto).unwrap();
    assert_eq!(pass_one(&mut third, &ns, src, wan1), TC_ACT_REDIRECT);
}

#[test]
fn a_load_is_not_interrupted_by_signals_which_are_handled_afterwards() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    require_root();
    static HANDLED: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn count(_: libc::c_int) {
        HANDLED.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: a handler that only counts, for a signal nothing else in this binary uses.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count as extern "C" fn(libc::c_int) as libc::sighandler_t;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    let pins = PinDir::new("pg");
    // SAFETY: pthread_self has no preconditions.
    let loader = unsafe { libc::pthread_self() } as usize;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the loading thread outlives the storm (it joins it below).
                unsafe { libc::pthread_kill(loader as libc::pthread_t, libc::SIGUSR1) };
                sent += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            sent
        })
    };
    // A signal every millisecond, far shorter than a verification: without the signals held
    // back every attempt would be interrupted (EAGAIN) for as long as the storm lasts.
    let guard = Guard::load(pins.path(), AttachMode::Auto);
    stop.store(true, Ordering::Relaxed);
    let sent = storm.join().unwrap();
    guard.unwrap();
    assert!(sent > 5, "the storm hardly ran ({sent} signals)");
    assert!(
        HANDLED.load(Ordering::Relaxed) > 0,
        "the held signals were lost"
    );
}
