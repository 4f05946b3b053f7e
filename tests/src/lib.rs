//! Shared test machinery: network namespaces and the processes started in them.
pub mod bed;
pub mod bench;
pub mod daemon;
pub mod guard;
pub mod netns;
pub mod testbed;
pub mod traffic;
