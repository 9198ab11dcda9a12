//! hsm-rotator keeps JWT signing keys inside a PKCS#11 token, issues and verifies JWTs
//! with them, and rotates them.
//!
//! Architecture, outside in:
//! - [`api`]: axum routers (native routes and the compatibility families), the only
//!   module that knows HTTP;
//! - [`keys`]: key ids, states and the lifecycle service;
//! - [`hsm`]: the only module that touches `cryptoki`: session pool, key generation,
//!   signing, object listing, recovery;
//! - [`store`]: the only module with SQL (SQLite and PostgreSQL);
//! - [`alg`], [`pubkey`]: algorithms and public-key encodings shared by all of them.

pub mod alg;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod hsm;
pub mod jwt;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod migrate;
pub mod pubkey;
pub mod statuslist;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod x509;
