//! End-to-end tests: the real `weir` binary, real sockets, real clients.
//! Every test binds 127.0.0.1 on a port the OS picks.

mod dns;
mod harness;
mod redis;
mod sink;

mod antispam;
mod auth;
mod bad_input;
mod cli;
mod cluster;
mod content;
mod crash;
mod delivery;
mod pipelining;
mod plugins;
mod polyglot;
mod postfix;
mod ratelimit;
mod real_clients;
mod receive;
mod shutdown;
mod spf_suite;
mod submission;
mod tls;
