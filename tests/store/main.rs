//! The stores: conformance, breaker, Redis Cluster, distributed and tiered instances, TLS. One
//! test binary, a module per former `tests/store*.rs` file.

#[path = "../support/mod.rs"]
mod support;

mod breaker;
mod cluster;
mod conformance;
mod distributed;
mod tiered;
mod tiered_backplane;
mod tls;
