//! EHLO and HELO (RFC 5321 4.1.1.1): the client names itself; EHLO also
//! learns our extensions. Either one resets the transaction.

use std::borrow::Cow;

use tokio::io::{AsyncRead, AsyncWrite};

use super::reply::Reply;
use super::session::{Session, Step};
use crate::config::TlsMode;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn ehlo(&mut self, host: String, extended: bool) -> Step {
        if !valid_helo(&host) {
            return self.error(Reply::syntax(if extended {
                "EHLO domain-or-address-literal"
            } else {
                "HELO domain-or-address-literal"
            }));
        }
        self.txn = None;
        let previous = self.helo.replace(host);
        let name = self.helo.as_deref().unwrap_or_default();
        let outcome = self
            .envelope_chain(crate::plugins::HookArgs::Helo(name))
            .await;
        if let Some(step) = self.after_chain(outcome) {
            // Refused: the client has not said hello.
            self.helo = previous;
            return step;
        }
        self.esmtp = extended;
        if !extended {
            let hello = Reply::plain(250, Cow::Owned(self.host().to_string()));
            return self.respond(hello);
        }
        let mut lines = vec![
            self.host().to_string(),
            "PIPELINING".into(),
            format!("SIZE {}", self.ctx.config.max_message_size.as_u64()),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.tls.is_none()
            && matches!(self.ctx.config.tls, TlsMode::Starttls | TlsMode::Required)
        {
            lines.push("STARTTLS".into());
        }
        let mechanisms = &self.ctx.config.auth_mechanisms;
        if !mechanisms.is_empty() && (self.tls.is_some() || !self.ctx.config.auth_require_tls) {
            let names: Vec<&str> = mechanisms
                .iter()
                .map(|m| match m {
                    crate::config::SaslMechanism::Plain => "PLAIN",
                    crate::config::SaslMechanism::Login => "LOGIN",
                })
                .collect();
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        lines.push("HELP".into());
        self.respond(Reply::plain(250, lines.join("\n")))
    }
}

/// A domain or address literal, as RFC 5321 4.1.4 allows it (we accept what
/// the internet sends: any printable ASCII without spaces, up to 255).
fn valid_helo(host: &str) -> bool {
    !host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80)
}
