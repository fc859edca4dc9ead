//! The shop's command line, shared by `main.rs` and the test that starts the baseline the way
//! the acceptance checks do (`tests/shop.rs`).

use std::net::SocketAddr;

use crate::app::Stack;

/// The shop: every tower-strata layer on one axum service over PostgreSQL and Redis (reads DATABASE_URL, REDIS_URL, SHOP_SCHEMA, SHOP_PRODUCTS, CURSOR_KEY, PURGE_TOKEN).
#[derive(Debug, clap::Parser)]
pub struct Args {
    /// The address to serve on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// The layers around the API: `full`, every layer; `metrics-only`, the baseline the load
    /// run compares against (no cache, handlers open their own transactions, reads on a pooled
    /// connection).
    #[arg(long, value_enum, default_value_t = StackArg::Full)]
    pub stack: StackArg,
}

/// The stacks `--stack` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StackArg {
    /// [`Stack::Full`].
    Full,
    /// [`Stack::MetricsOnly`].
    MetricsOnly,
}

impl From<StackArg> for Stack {
    fn from(arg: StackArg) -> Self {
        match arg {
            StackArg::Full => Stack::Full,
            StackArg::MetricsOnly => Stack::MetricsOnly,
        }
    }
}
