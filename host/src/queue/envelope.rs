//! The envelope: everything about a message that is not its bytes, as it
//! is kept in the spool (sender, recipients, DSN parameters of RFC 3461,
//! where it came from and when).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::QueueId;

/// A message's envelope, stored beside its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Queue id, assigned at MAIL FROM.
    pub id: QueueId,
    /// Reverse path; empty for the null sender (bounces).
    pub sender: String,
    /// Forward paths in RCPT order.
    pub recipients: Vec<Recipient>,
    /// RFC 3461 RET: what a bounce returns.
    pub ret: Option<Ret>,
    /// RFC 3461 ENVID, as received (xtext-decoded by the parser).
    pub envid: Option<String>,
    /// BODY= declared at MAIL FROM.
    pub body: BodyType,
    /// SMTPUTF8 was requested at MAIL FROM (RFC 6531).
    pub smtputf8: bool,
    /// Who sent it.
    pub client: ClientInfo,
    /// When the end of data was received, seconds since the Unix epoch.
    pub received_at: i64,
    /// Size of the stored message in bytes (with our Received header).
    pub size: u64,
    /// A route (send connector) chosen by a plugin, by name, instead of
    /// routing by recipient domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// A plugin asked for delivery over TLS only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
    /// Tags the data chain attached (for the pre-delivery chain and the
    /// logs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The score the data chain added up (e.g. a spam score).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub score: f64,
    /// An operator released it from the quarantine: a quarantine verdict
    /// before delivery is not heeded again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Envelope {
    /// Whether a bounce for recipient `i` goes to the sender: not for the
    /// null sender, not with NOTIFY=NEVER, and with NOTIFY given only if it
    /// names FAILURE (RFC 3461 4.1).
    pub fn wants_failure_dsn(&self, i: usize) -> bool {
        let n = &self.recipients[i].notify;
        !self.sender.is_empty() && !n.never && (n.failure || !(n.success || n.delay))
    }

    /// Whether a success report for recipient `i` goes to the sender
    /// (NOTIFY=SUCCESS).
    pub fn wants_success_dsn(&self, i: usize) -> bool {
        !self.sender.is_empty() && self.recipients[i].notify.success
    }
}

#[cfg(test)]
impl Envelope {
    /// A five-octet message from `a@example.org` to `b@example.net`, for
    /// tests.
    pub(crate) fn sample(id: QueueId) -> Envelope {
        Envelope {
            id,
            sender: "a@example.org".into(),
            recipients: vec![Recipient {
                address: "b@example.net".into(),
                orcpt: None,
                notify: Default::default(),
            }],
            ret: None,
            envid: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            client: ClientInfo {
                addr: "127.0.0.1:1".parse().unwrap(),
                helo: "client".into(),
                listener: "test".into(),
                tls: None,
                authenticated_user: None,
            },
            received_at: 0,
            size: 5,
            route: None,
            require_tls: false,
            tags: Vec::new(),
            score: 0.0,
            released: false,
        }
    }
}

/// One recipient and its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path, as given (local part case preserved).
    pub address: String,
    /// RFC 3461 ORCPT: the original recipient, of addr-type `rfc822`, with
    /// its xtext decoded (smtp-proto refuses other addr-types with 501).
    pub orcpt: Option<String>,
    /// RFC 3461 NOTIFY.
    pub notify: NotifyFlags,
}

/// RFC 3461 NOTIFY values. All false means the parameter was absent (the
/// default, which is "FAILURE" and perhaps "DELAY", applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyFlags {
    /// NOTIFY=SUCCESS.
    pub success: bool,
    /// NOTIFY=FAILURE.
    pub failure: bool,
    /// NOTIFY=DELAY.
    pub delay: bool,
    /// NOTIFY=NEVER.
    pub never: bool,
}

/// RFC 3461 RET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// Return the full message in a bounce.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// BODY= parameter (RFC 6152).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyType {
    /// Not declared, or 7BIT.
    #[default]
    SevenBit,
    /// 8BITMIME.
    EightBitMime,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client's address and port.
    pub addr: SocketAddr,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The listener that took the message.
    pub listener: String,
    /// TLS parameters if the session was encrypted.
    pub tls: Option<TlsInfo>,
    /// The user the client authenticated as (SMTP AUTH), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_user: Option<String>,
}

/// TLS parameters of a session, for the Received header and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// Where one recipient stands. Kept in the spool as the queue manager
/// changes it, so a restart resumes exactly where delivery was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptState {
    /// Not yet delivered; try again at `next_attempt` (Unix ms).
    Pending {
        /// Attempts made so far.
        attempts: u32,
        /// When the next attempt is due (Unix milliseconds; 0 = now).
        next_attempt: i64,
        /// The last temporary failure, for `queue ls` and the delay DSN.
        last_reply: Option<String>,
    },
    /// Accepted by the next hop.
    Delivered {
        /// The next hop's reply.
        reply: String,
        /// A success DSN has been generated, or none was asked for.
        notified: bool,
    },
    /// Refused for good (or expired).
    Failed {
        /// Why, as `code enhanced text` (e.g. from the remote server).
        reply: String,
        /// The bounce has been generated, or none is to be sent.
        notified: bool,
    },
}

impl RcptState {
    /// The state of a recipient that was just accepted.
    pub fn new() -> Self {
        RcptState::Pending {
            attempts: 0,
            next_attempt: 0,
            last_reply: None,
        }
    }

    /// Delivered or failed, and any DSN for it made.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            RcptState::Delivered { notified: true, .. } | RcptState::Failed { notified: true, .. }
        )
    }
}

impl Default for RcptState {
    fn default() -> Self {
        RcptState::new()
    }
}
