//! The examples' stacks and the app-level services: quickstart, gRPC example, reverse proxy,
//! dashboard (and in a browser), health, warming, and the small examples. One test binary, a module per former file.
//! (`shop.rs` stays a binary of its own: it installs the global `metrics` recorder.)

// Each module includes `examples/quickstart.rs` itself, as it did as a binary of its own.
#![allow(clippy::duplicate_mod)]

#[path = "../support/mod.rs"]
mod support;

mod dashboard;
mod dashboard_browser;
mod examples;
mod grpc_example;
mod health;
mod quickstart_demo;
mod reverse_proxy;
mod warm;

// The reverse proxy example's modules name each other from its crate root (`crate::args`).
#[cfg(all(feature = "memory", feature = "purge"))]
use reverse_proxy::{args, forwarded, origin};
