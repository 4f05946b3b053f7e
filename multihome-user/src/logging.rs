//! Logging set-up: levels from `--log-level` or `RUST_LOG`; under journald (JOURNAL_STREAM set)
//! no timestamps of our own, since the journal stamps every line itself.
//!
//! `--log-level` applies to multihome's own targets (the daemon, and the guard's aya-log
//! records, whose targets also start with "multihome"); libraries stay at warn, so that
//! `--log-level debug` shows multihome's decisions rather than the loader's relocations.
//! RUST_LOG, when set, decides everything.

use std::io::Write;

pub(crate) fn init(level: log::LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Warn.min(level))
        .filter_module("multihome", level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // journald understands the kernel's <N> priority prefixes.
        builder.format(|out, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            // journald makes one entry per line: each line of a multi-line message (aya's
            // debug dumps) carries the priority, or it would land at the default level.
            for line in record.args().to_string().lines() {
                writeln!(out, "<{priority}>{line}")?;
            }
            Ok(())
        });
    } else {
        builder.format_target(false);
    }
    builder.init();
}
