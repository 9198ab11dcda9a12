//! Black-box tests: the real binary, a real SoftHSM2 token, SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;

mod access_control;
mod apps;
mod audit_log;
mod cancelled;
mod certs;
mod cli;
mod clients;
mod compat;
mod console;
mod credentials;
mod day_one;
mod faults;
mod hostile;
mod hygiene;
mod import;
mod integrity;
mod integrity_keys;
mod listener;
mod metrics;
mod migrate;
mod openapi;
mod ownership;
mod replicas;
mod revocation;
mod rotation;
mod statuslist;
mod tokens;
