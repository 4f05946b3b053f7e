//! The privileged tiers in one test binary (run as root by `cargo xtask test`, or `cargo test
//! --package multihome-tests`): the loaded guard under BPF_PROG_TEST_RUN, its pins and
//! attachments across processes, and network-namespace testbeds with real DHCP clients, the
//! daemon, its service unit and its faults. One module per subject; what the guard's modules
//! share is the tests crate's `guard`. Every test makes its own namespaces and pin directories,
//! so they run side by side.

mod bad_input;
mod check;
mod e2e_dhcp;
mod e2e_egress;
mod e2e_networkd_reconfigure;
mod faults;
mod guard_pins;
mod guard_refused;
mod guard_test_run;
mod guard_traffic;
mod lifecycle;
mod netlink_roundtrip;
mod netns_helpers;
mod operations;
mod reconciler;
mod service_unit;
mod steer;
mod steer_unavailable;
