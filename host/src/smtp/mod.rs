//! The SMTP server side (RFC 5321), one session per connection.
//!
//! Duty: speak SMTP correctly to anyone, build the envelope and message,
//! and hand accepted messages to the queue. The syntax of commands comes
//! from smtp-proto; framing (CRLF only, bounded lines), DATA's end-of-data
//! rule and every policy check are ours.
//!
//! Distrusts: the client, entirely. Every line is bounded, every read has a
//! timeout, a client that sends ahead where RFC 2920 forbids it is
//! disconnected, and input sent behind STARTTLS is discarded.
//!
//! Never: writes the spool except through `queue::Spool::store`, and never
//! answers 250 to end-of-data before that call has returned.
//!
//! Standards: RFC 5321 (SMTP), 1870 (SIZE), 2034 and 3463 (enhanced status
//! codes), 2920 (PIPELINING), 3030 (CHUNKING), 3207 (STARTTLS), 3461 (DSN
//! parameters), 4954 (AUTH) with 4616 (PLAIN), 6152 (8BITMIME), 6531
//! (SMTPUTF8).

mod address;
mod auth;
pub mod command;
pub mod conn;
pub mod data;
mod ehlo;
mod mail;
mod message;
mod rcpt;
pub mod received;
pub mod reply;
#[cfg(test)]
mod robustness;
pub mod session;

pub use reply::{Enhanced, Reply};
pub use session::{ListenerContext, Outcome, Session};
