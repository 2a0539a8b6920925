//! MAIL FROM (RFC 5321 4.1.1.2) with SIZE (RFC 1870), BODY (RFC 6152),
//! SMTPUTF8 (RFC 6531) and RET/ENVID (RFC 3461). Opens the transaction and
//! takes its queue id.

use smtp_proto::MailFrom;
use tokio::io::{AsyncRead, AsyncWrite};

use super::address::{self, Role};
use super::reply::Reply;
use super::session::{Session, Step, Transaction};
use crate::queue::{BodyType, Ret};

/// MAIL parameters we do not announce, and so refuse.
const UNANNOUNCED: u64 = smtp_proto::MAIL_BODY_BINARYMIME
    | smtp_proto::MAIL_REQUIRETLS
    | smtp_proto::MAIL_CONPERM
    | smtp_proto::MAIL_BY_NOTIFY
    | smtp_proto::MAIL_BY_RETURN
    | smtp_proto::MAIL_BY_TRACE;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn mail(&mut self, from: MailFrom<String>) -> Step {
        if self.helo.is_none() {
            return self.error(Reply::bad_sequence("Error: send HELO/EHLO first"));
        }
        if self.txn.is_some() {
            return self.error(Reply::bad_sequence("Error: nested MAIL command"));
        }
        if self.ctx.config.require_auth && self.authenticated.is_none() {
            return self.error(Reply::auth_required());
        }
        // AUTH= (RFC 4954 5) is taken where AUTH is offered, and its claim
        // ignored: only our own AUTH says who a client is.
        if from.flags & UNANNOUNCED != 0
            || (from.auth.is_some() && self.ctx.config.auth_mechanisms.is_empty())
            || from.trans_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0
            || from.by != 0
        {
            return self.error(Reply::bad_parameter("(not offered in EHLO)"));
        }
        let has_params = from.flags != 0 || from.size != 0 || from.env_id.is_some();
        if has_params && !self.esmtp {
            return self.error(Reply::bad_parameter("(MAIL parameters need EHLO)"));
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !from.address.is_empty()
            && let Err(e) = address::check(&from.address, smtputf8)
        {
            return self.error(e.reply(Role::Sender));
        }
        let limit = self.ctx.config.max_message_size.as_u64();
        if from.size as u64 > limit {
            return self.error(Reply::too_big(limit));
        }
        let ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some(Ret::Full)
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(Ret::Hdrs)
        } else {
            None
        };
        let body = if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        };
        let id = self.ctx.spool.next_id();
        tracing::debug!(peer = %self.peer, queue_id = %id, sender = %from.address, "MAIL");
        let auth = self.ctx.auth.as_ref().map(|a| {
            a.transaction(
                self.peer.ip(),
                self.helo.as_deref().unwrap_or_default(),
                &from.address,
            )
        });
        self.txn = Some(Transaction {
            id,
            sender: from.address,
            recipients: Vec::new(),
            ret,
            envid: from.env_id,
            body,
            smtputf8,
            chunks: None,
            auth,
        });
        let sender = self.txn.as_ref().map_or("", |t| t.sender.as_str());
        let outcome = self
            .envelope_chain(crate::plugins::HookArgs::MailFrom(sender))
            .await;
        if let Some(step) = self.after_chain(outcome) {
            // Refused: no transaction is open.
            self.txn = None;
            return step;
        }
        self.respond(Reply::sender_ok())
    }
}
