//! Content-free Web Push wakeups for devices that have no socket open anywhere.

pub mod sender;
