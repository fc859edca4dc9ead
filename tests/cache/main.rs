//! The response cache layer: one test binary, a module per former `tests/cache_*.rs` file.
//! (`cache_allocations.rs` and `cache_outage_logs.rs` stay binaries of their own: a counting
//! global allocator, the process's global `tracing` subscriber.)

#[path = "../support/mod.rs"]
mod support;

mod corners;
mod grpc;
mod instances;
mod layer;
mod outage;
mod private;
mod redis;
mod refresh_ahead;
mod streaming;
mod trust;
mod vary;
