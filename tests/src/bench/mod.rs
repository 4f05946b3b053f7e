//! `mh-bench`: what multihome exists for, measured side by side with the alternative in the same
//! run (`cargo xtask bench`). One module per measurement; `report` turns the figures into
//! markdown and JSON. Every measurement builds its own namespaces and removes them.

pub mod bed;
pub mod convergence;
pub mod datapath;
pub mod misroutes;
pub mod report;
pub mod scale;
pub mod steering;
pub mod throughput;
pub mod watch;
