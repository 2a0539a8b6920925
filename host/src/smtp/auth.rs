//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, checked
//! against the [`crate::directory::Directory`]. A client that
//! authenticates may relay, and the name it authenticated as goes with its
//! messages (Received `ESMTPSA`, the plugins' `authenticated-user`, DKIM
//! signing).
//!
//! Distrusts: every line of the exchange (bounded, base64, UTF-8, the
//! mechanism's own syntax); a failure is an error reply that counts
//! against the session's budget and a log line naming the client and the
//! name tried, never the password.

use base64::Engine;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Line;
use super::reply::{Enhanced, Reply};
use super::session::{Session, Step};
use crate::config::SaslMechanism;

/// "Username:" and "Password:", the LOGIN mechanism's prompts.
const LOGIN_USER: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// How long a failed authentication waits before its 535: a client that
/// guesses passwords gets one guess a second per connection, and
/// `max_errors` ends the connection (Postfix's `smtpd_error_sleep_time`
/// and Dovecot's `auth_failure_delay` do the same).
const FAILURE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) -> Step {
        let offered = &self.ctx.config.auth_mechanisms;
        let directory = match &self.ctx.directory {
            Some(d) if !offered.is_empty() => d.clone(),
            _ => {
                return self.error(Reply::new(
                    502,
                    Enhanced(5, 5, 1),
                    "Error: command not implemented",
                ));
            }
        };
        if !self.esmtp {
            return self.error(Reply::bad_sequence("Error: send EHLO first"));
        }
        if self.authenticated.is_some() {
            return self.error(Reply::bad_sequence("Error: already authenticated"));
        }
        if self.txn.is_some() {
            return self.error(Reply::bad_sequence(
                "Error: AUTH is not allowed during a mail transaction",
            ));
        }
        if self.ctx.config.auth_require_tls && self.tls.is_none() {
            return self.error(Reply::auth_needs_tls());
        }
        let mechanism = match mechanism {
            AUTH_PLAIN if offered.contains(&SaslMechanism::Plain) => SaslMechanism::Plain,
            AUTH_LOGIN if offered.contains(&SaslMechanism::Login) => SaslMechanism::Login,
            _ => return self.error(Reply::auth_unknown_mechanism()),
        };
        // RFC 4954 4: "=" is an initial response that is empty.
        let initial = match initial.as_str() {
            "" => None,
            "=" => Some(String::new()),
            _ => Some(initial),
        };
        let credentials = match mechanism {
            SaslMechanism::Plain => match self.response(initial, "").await {
                Ok(bytes) => plain(&bytes),
                Err(step) => return step,
            },
            SaslMechanism::Login => {
                let user = match self.response(initial, LOGIN_USER).await {
                    Ok(bytes) => bytes,
                    Err(step) => return step,
                };
                let password = match self.response(None, LOGIN_PASSWORD).await {
                    Ok(bytes) => bytes,
                    Err(step) => return step,
                };
                match (String::from_utf8(user), String::from_utf8(password)) {
                    (Ok(u), Ok(p)) if !u.is_empty() => Some((u, p)),
                    _ => None,
                }
            }
        };
        let Some((user, password)) = credentials else {
            return self.error(Reply::auth_malformed());
        };
        match directory.verify(&user, &password).await {
            Some(name) => {
                tracing::info!(peer = %self.peer, user = %name, ?mechanism, "authenticated");
                self.authenticated = Some(name);
                self.respond(Reply::auth_ok())
            }
            None => {
                let tried: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
                tracing::warn!(peer = %self.peer, user = %tried, ?mechanism, "authentication failed");
                tokio::time::sleep(FAILURE_DELAY).await;
                self.error(Reply::auth_failed())
            }
        }
    }

    /// The client's next SASL response, decoded: the initial response if
    /// it gave one, else what it answers to `334 challenge`. `Err` is the
    /// step to take instead (cancelled, malformed, or the connection
    /// ended).
    async fn response(
        &mut self,
        initial: Option<String>,
        challenge: &'static str,
    ) -> Result<Vec<u8>, Step> {
        let text = match initial {
            Some(text) => text,
            None => {
                // RFC 4954 4: only an exchange the initial response
                // completes may have commands pipelined behind it.
                if !self.conn.buffered().is_empty() {
                    return Err(self.sync_error("AUTH"));
                }
                self.conn.reply(&Reply::auth_challenge(challenge));
                match self.next_line().await {
                    Ok(Line::Complete(line)) => {
                        String::from_utf8_lossy(&line[..line.len() - 2]).into_owned()
                    }
                    Ok(Line::TooLong) => return Err(self.error(Reply::auth_malformed())),
                    Err(end) => {
                        self.ended(end);
                        return Err(Step::Close);
                    }
                }
            }
        };
        if text == "*" {
            return Err(self.error(Reply::auth_cancelled()));
        }
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| self.error(Reply::auth_malformed()))
    }
}

/// RFC 4616: `authzid NUL authcid NUL passwd`. An authorization identity
/// other than the user's own (acting for someone else) is not supported.
fn plain(bytes: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split('\0');
    let (authz, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() || !(authz.is_empty() || authz == user) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_responses_are_parsed_as_rfc_4616_says() {
        assert_eq!(
            super::plain(b"\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            super::plain(b"alice\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        // Acting for someone else, no user, too many parts, not UTF-8.
        assert_eq!(super::plain(b"bob\0alice\0pw"), None);
        assert_eq!(super::plain(b"\0\0pw"), None);
        assert_eq!(super::plain(b"\0a\0b\0c"), None);
        assert_eq!(super::plain(b"\0a"), None);
        assert_eq!(super::plain(b"\0\xff\0pw"), None);
    }
}
