//! Weir: an SMTP gateway whose policy runs as sandboxed WebAssembly
//! components.
//!
//! The modules, in the order a message flows through them:
//!
//! - [`config`]: the TOML file and `WEIR_*` overrides, validated once.
//! - [`listener`]: receive connectors; accept, connection limits, TLS.
//! - [`smtp`]: one SMTP session per connection; builds the envelope and
//!   the message and hands them to the queue.
//! - [`plugins`]: WebAssembly plugins (wasmtime) run in each listener's
//!   chains at the hooks of a transaction.
//! - [`queue`]: the durable spool (a message is acknowledged only once it
//!   is on disk and fsynced) and the queue manager (retries, expiry,
//!   bounces, concurrency).
//! - [`delivery`]: routing, MX and smart hosts, the outbound SMTP/LMTP
//!   client, outbound TLS policy, DSNs.
//!
//! Beside them: [`server`] wires the modules together for `weir serve`;
//! [`shutdown`] is the one stop signal every task watches; [`cli`] is the
//! command line.
//!
//! - [`auth`]: email authentication: SPF, DKIM, DMARC, ARC and iprev of
//!   what arrives (computed when a plugin asks), DKIM signing of what
//!   leaves.
//! - [`directory`]: who may authenticate with SMTP AUTH.
//! - [`state`]: the plugins' shared state (counters, throttles, values),
//!   in this process or in Redis for a cluster.
//!
//! The admin API (`admin`) joins this list as it is built;
//! `docs/DESIGN.md` is the map.
//!
//! Errors: each library module has its own `thiserror` enum
//! ([`config::ConfigError`], [`queue::SpoolError`], ...); `anyhow` is used
//! only where the binary meets the world ([`cli`], [`server`]).

pub mod auth;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod listener;
mod plugin_contract;
pub mod plugins;
pub mod queue;
pub mod server;
pub mod shutdown;
pub mod smtp;
pub mod state;
