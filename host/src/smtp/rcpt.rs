//! RCPT TO (RFC 5321 4.1.1.3) with NOTIFY/ORCPT (RFC 3461), the recipient
//! limit, and relay control: a client outside the relay ranges may only
//! send to local domains and to postmaster, so Weir is never an open relay.

use smtp_proto::RcptTo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::address::{self, Role};
use super::reply::Reply;
use super::session::{Session, Step};
use crate::queue::{NotifyFlags, Recipient};

/// RCPT parameters we do not announce, and so refuse.
const UNANNOUNCED: u64 =
    smtp_proto::RCPT_CONNEG | smtp_proto::RCPT_RRVS_REJECT | smtp_proto::RCPT_RRVS_CONTINUE;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn rcpt(&mut self, to: RcptTo<String>) -> Step {
        let Some(txn) = &self.txn else {
            return self.error(Reply::bad_sequence("Error: need MAIL command"));
        };
        if to.flags & UNANNOUNCED != 0 || to.rrvs != 0 {
            return self.error(Reply::bad_parameter("(not offered in EHLO)"));
        }
        if (to.flags != 0 || to.orcpt.is_some()) && !self.esmtp {
            return self.error(Reply::bad_parameter("(RCPT parameters need EHLO)"));
        }
        if txn.recipients.len() >= self.ctx.config.max_recipients {
            return self.error(Reply::too_many_recipients());
        }
        // smtp-proto hands `<postmaster>` over as the empty string; RFC 5321
        // 4.5.1 says it must be accepted, and it is ours.
        let address = if to.address.is_empty() {
            format!("postmaster@{}", self.host())
        } else {
            to.address
        };
        if let Err(e) = address::check(&address, txn.smtputf8) {
            return self.error(e.reply(Role::Recipient));
        }
        let domain = address::domain(&address);
        let ours = domain.eq_ignore_ascii_case(self.host())
            && address.to_ascii_lowercase().starts_with("postmaster@");
        if !ours && !self.ctx.config.is_local_domain(domain) && !self.may_relay() {
            tracing::info!(peer = %self.peer, rcpt = %address, "relay access denied");
            return self.error(Reply::relay_denied(&address));
        }
        // The listener's plugins, once the gateway's own checks pass.
        let outcome = self
            .envelope_chain(crate::plugins::HookArgs::Rcpt(&address))
            .await;
        if let Some(step) = self.after_chain(outcome) {
            return step;
        }
        let notify = NotifyFlags {
            success: to.flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
            failure: to.flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
            delay: to.flags & smtp_proto::RCPT_NOTIFY_DELAY != 0,
            never: to.flags & smtp_proto::RCPT_NOTIFY_NEVER != 0,
        };
        let txn = self.txn.as_mut().expect("checked above");
        // A repeated recipient is acknowledged but kept once, as Postfix's
        // cleanup does.
        if !txn
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&address))
        {
            txn.recipients.push(Recipient {
                address,
                orcpt: to.orcpt,
                notify,
            });
        }
        self.respond(Reply::recipient_ok())
    }
}
