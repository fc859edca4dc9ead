//! The metrics layer and registry, and gRPC status classification. One test binary, a module
//! per former file. (`metrics_prometheus.rs`, `metrics_strata.rs` and `metrics_slow.rs` stay
//! binaries of their own: the global `metrics` recorder, a log capture.)

mod layer;
mod metrics_grpc;
