//! The queue: what a message is once accepted, and the durable spool that
//! holds it.
//!
//! Duty: keep every accepted message until it is delivered or bounced. The
//! SMTP session hands a complete message and its envelope to
//! [`Spool::store`]; the future resolves only after both are on disk and
//! fsynced, and only then does the session say 250.
//!
//! Never: speak SMTP, make policy decisions, or hold a message only in
//! memory once it has been acknowledged.

pub mod envelope;
pub mod manager;
pub mod quarantine;
pub mod spool;

pub use envelope::{
    BodyType, ClientInfo, Envelope, NotifyFlags, RcptState, Recipient, Ret, TlsInfo,
};
pub use manager::QueueHandle;
pub use spool::{Location, QueueId, Spool, SpoolError, StoredMessage};
