//! Purging and invalidation: the purger, the HTTP purge endpoint, invalidation rules and the
//! bus. One test binary, a module per former file (`purge.rs`, `purge_http.rs`,
//! `invalidate.rs`).

#[path = "../support/mod.rs"]
mod support;

mod http;
mod invalidate;
mod purger;
