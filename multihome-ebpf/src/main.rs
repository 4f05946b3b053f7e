//! The TC egress guard. Built for `bpfel-unknown-none` by `multihome-user/build.rs` (aya-build,
//! nightly); on the host this bin is an empty `main` so that `cargo build --workspace` and
//! `cargo test --workspace` work on stable.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
