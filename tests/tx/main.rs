//! The transaction layer and the `db` helpers on PostgreSQL, MySQL and SQLite (and behind
//! PgBouncer). One test binary, a module per former `tests/tx*.rs`, `tests/db*.rs` and
//! `tests/invalidate_tx.rs` file.

// Each module includes `support/tx.rs` or `support/db.rs` itself, as it did as a binary of
// its own.
#![allow(clippy::duplicate_mod)]

#[path = "../support/mod.rs"]
mod support;

mod db;
mod db_mysql;
mod db_sqlite;
mod grpc;
mod invalidate;
mod layer;
mod modes;
mod mysql;
mod sqlite;
mod tx_bank;
mod tx_pgbouncer;
