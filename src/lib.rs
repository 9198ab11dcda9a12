//! hsm-rotator keeps JWT signing keys inside a PKCS#11 token, issues and verifies JWTs
//! with them, and rotates them.
//!
//! Architecture, outside in (each file's `//!` header says what it owns):
//! - `main.rs` parses the command line and hands over to [`cli`];
//!   [`app`] assembles the state and the router, [`listener`] serves it (hyper with
//!   timeouts, [`tls`] optional), [`telemetry`] sets up logging, [`config`] is the one typed
//!   configuration;
//! - [`api`]: the HTTP routes, one file per resource (`apps`, `credentials`, `tokens`,
//!   `jwks`, `statuslists`, `audit`, `health`, `metrics`, `console`, `openapi`), with
//!   `auth`, `extract`, `error`, `layers` and `wire` shared by them, and `compat/` for the
//!   JWTPlus, Auth0 and PocketPaw families, which translate to the same services; the only
//!   module with handlers;
//! - [`cli`]: `serve`, `init`, `app`, `keys`, `token`, `root-key`, `audit verify`,
//!   `reconcile`, `config check` (`apps`, `tokens`, `root_key`, `check`, `offline`), in
//!   direct mode (`direct`) or against a server (`remote`), printed by `output`;
//! - [`keys`]: the key lifecycle: ids (`kid`), states (`state`), app policy (`policy`), the
//!   in-memory `registry` the hot paths read, the `spares` pool, the lifecycle `service`,
//!   key `import`, the `scheduler` and the reconciler (`reconcile`);
//! - [`jwt`]: issuing and verifying tokens (`service`, `verify`), issuers and discovery
//!   (`issuer`), JWKS wire types (`jwks`);
//! - [`statuslist`]: Token Status Lists, built from the store and signed in the HSM;
//! - [`audit`]: the hash-chained audit log and its HSM seals;
//! - [`auth`]: credentials (root key, access tokens) and `proxies` (`trusted_proxies`);
//! - [`hsm`]: the only module that touches `cryptoki`: session pool and handle cache
//!   (`pool`), `keygen`, `sign`, `import`, `object`s, the audit `mac`, `mechanisms`,
//!   `diagnose` (for `config check`), one rv mapping (`error`);
//! - [`store`]: the only module with SQL (SQLite and PostgreSQL): `apps`, `keys`, `tokens`,
//!   `statuslists`, `audit`, change notification between replicas (`notify`), the SQLite
//!   writer `lock`, `error`;
//! - [`x509`]: a self-signed certificate per key, signed in the HSM;
//! - [`metrics`]: the Prometheus registry;
//! - [`clock`]: time as a parameter;
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
