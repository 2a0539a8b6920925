//! Every reply the gateway sends, in one place: `Reply { code, enhanced,
//! text }` and named constructors. Enhanced status codes follow RFC 3463 and
//! the IANA registry; codes follow RFC 5321 section 4.2.

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code, e.g. `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply. `text` may hold several lines separated by `\n`; each is
/// sent as its own line of a multi-line reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code; `None` only for the greeting, 221 and the
    /// EHLO reply, where RFC 2034 does not use one.
    pub enhanced: Option<Enhanced>,
    /// Human-readable text.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code.
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the reply in wire form (CRLF line ends, `-` continuation).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            match self.enhanced {
                Some(e) => {
                    out.extend_from_slice(format!("{}{sep}{e} {line}\r\n", self.code).as_bytes())
                }
                None => out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes()),
            }
        }
    }

    // --- Connection-level ---

    /// The greeting.
    pub fn greeting(host: &str) -> Reply {
        Reply::plain(220, format!("{host} ESMTP Weir"))
    }

    /// QUIT.
    pub fn bye(host: &str) -> Reply {
        Reply::new(221, Enhanced(2, 0, 0), format!("{host} closing connection"))
    }

    /// The client's address is not allowed on this listener.
    pub fn access_denied(host: &str) -> Reply {
        Reply::new(554, Enhanced(5, 7, 1), format!("{host} Access denied"))
    }

    /// Connection limits (RFC 5321 4.5.3.2: 421 closes).
    pub fn too_many_connections() -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "Too many connections, try again later",
        )
    }

    /// Too many connections from one address.
    pub fn too_many_connections_from_you() -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "Too many connections from your address, try again later",
        )
    }

    /// The client read or wrote nothing for too long.
    pub fn timeout(host: &str) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 4, 2),
            format!("{host} Error: timeout exceeded"),
        )
    }

    /// The gateway is stopping.
    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 3, 0),
            format!("{host} Service shutting down, try again later"),
        )
    }

    /// Too many errors in one session.
    pub fn too_many_errors(host: &str) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            format!("{host} Error: too many errors, closing connection"),
        )
    }

    /// The client sent ahead where RFC 2920 forbids it, or talked before the
    /// greeting; answered as Postfix does, then the connection is closed.
    pub fn sync_error() -> Reply {
        Reply::new(
            554,
            Enhanced(5, 5, 0),
            "Error: SMTP protocol synchronization",
        )
    }

    // --- Command-level ---

    /// Generic success.
    pub fn ok() -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), "OK")
    }

    /// MAIL accepted.
    pub fn sender_ok() -> Reply {
        Reply::new(250, Enhanced(2, 1, 0), "Sender OK")
    }

    /// RCPT accepted.
    pub fn recipient_ok() -> Reply {
        Reply::new(250, Enhanced(2, 1, 5), "Recipient OK")
    }

    /// DATA accepted, send the message.
    pub fn start_data() -> Reply {
        Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
    }

    /// The message is in the spool.
    pub fn queued(id: impl fmt::Display) -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), format!("OK queued as {id}"))
    }

    /// A BDAT chunk that is not the last one.
    pub fn chunk_ok(octets: usize) -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), format!("{octets} octets received"))
    }

    /// STARTTLS accepted.
    pub fn ready_for_tls() -> Reply {
        Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS")
    }

    /// VRFY: we do not confirm or deny addresses (RFC 5321 3.5.3).
    pub fn cannot_verify() -> Reply {
        Reply::new(
            252,
            Enhanced(2, 5, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// HELP.
    pub fn help() -> Reply {
        Reply::new(
            214,
            Enhanced(2, 0, 0),
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
        )
    }

    /// Unknown verb.
    pub fn unknown_command() -> Reply {
        Reply::new(500, Enhanced(5, 5, 1), "Error: command not recognized")
    }

    /// A command line longer than allowed (RFC 5321 4.5.3.1.4).
    pub fn line_too_long() -> Reply {
        Reply::new(500, Enhanced(5, 5, 2), "Error: line too long")
    }

    /// A syntax error in a command's arguments.
    pub fn syntax(usage: &str) -> Reply {
        Reply::new(501, Enhanced(5, 5, 4), format!("Syntax: {usage}"))
    }

    /// A control character (CR, LF, NUL) inside a command line.
    pub fn bad_characters() -> Reply {
        Reply::new(
            501,
            Enhanced(5, 5, 2),
            "Error: CR, LF or NUL inside a command line",
        )
    }

    /// A parameter we do not support or a bad value.
    pub fn bad_parameter(what: &str) -> Reply {
        Reply::new(
            555,
            Enhanced(5, 5, 4),
            format!("Error: unsupported or invalid parameter {what}"),
        )
    }

    /// Commands in the wrong order.
    pub fn bad_sequence(text: &'static str) -> Reply {
        Reply::new(503, Enhanced(5, 5, 1), text)
    }

    /// A sender address that does not parse.
    pub fn bad_sender(text: impl Into<Cow<'static, str>>) -> Reply {
        Reply::new(501, Enhanced(5, 1, 7), text)
    }

    /// A recipient address that does not parse.
    pub fn bad_recipient(text: impl Into<Cow<'static, str>>) -> Reply {
        Reply::new(501, Enhanced(5, 1, 3), text)
    }

    /// Not an open relay.
    pub fn relay_denied(rcpt: &str) -> Reply {
        Reply::new(
            554,
            Enhanced(5, 7, 1),
            format!("<{rcpt}>: Relay access denied"),
        )
    }

    /// RFC 5321 4.5.3.1.10.
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, Enhanced(4, 5, 3), "Error: too many recipients")
    }

    /// SIZE= at MAIL, or the data itself, over the limit.
    pub fn too_big(limit: u64) -> Reply {
        Reply::new(
            552,
            Enhanced(5, 3, 4),
            format!("Error: message exceeds fixed maximum message size of {limit} bytes"),
        )
    }

    /// The transaction needs TLS first (RFC 3207).
    pub fn tls_required() -> Reply {
        Reply::new(
            530,
            Enhanced(5, 7, 0),
            "Must issue a STARTTLS command first",
        )
    }

    /// AUTH succeeded (RFC 4954 6).
    pub fn auth_ok() -> Reply {
        Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
    }

    /// A SASL challenge (RFC 4954 4): `334 BASE64`, no enhanced code.
    pub fn auth_challenge(base64: &'static str) -> Reply {
        Reply::plain(334, base64)
    }

    /// Wrong user or password (RFC 4954 6).
    pub fn auth_failed() -> Reply {
        Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid")
    }

    /// AUTH before TLS where the listener wants TLS first (RFC 4954 6).
    pub fn auth_needs_tls() -> Reply {
        Reply::new(
            538,
            Enhanced(5, 7, 11),
            "Encryption required for requested authentication mechanism",
        )
    }

    /// The client gave up the exchange with `*` (RFC 4954 4).
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, Enhanced(5, 0, 0), "Authentication cancelled")
    }

    /// A SASL response that is not base64, or not what the mechanism
    /// expects (RFC 4954 4).
    pub fn auth_malformed() -> Reply {
        Reply::new(
            501,
            Enhanced(5, 5, 2),
            "Cannot decode the authentication response",
        )
    }

    /// A mechanism this listener does not offer (RFC 4954 4).
    pub fn auth_unknown_mechanism() -> Reply {
        Reply::new(504, Enhanced(5, 5, 4), "Unrecognized authentication type")
    }

    /// MAIL before AUTH on a listener that requires it (RFC 4954 6).
    pub fn auth_required() -> Reply {
        Reply::new(530, Enhanced(5, 7, 0), "Authentication required")
    }

    /// SMTPUTF8 used without being asked for (RFC 6531 3.4).
    pub fn utf8_not_requested() -> Reply {
        Reply::new(
            553,
            Enhanced(5, 6, 7),
            "Error: non-ASCII address needs the SMTPUTF8 parameter",
        )
    }

    /// Bare CR or LF in DATA: the SMTP-smuggling guard. The connection is
    /// closed after this reply, so nothing after the bad sequence is ever
    /// read as commands.
    pub fn bare_line_ending() -> Reply {
        Reply::new(
            521,
            Enhanced(5, 5, 2),
            "Error: bare CR or LF in message data (RFC 5321 section 2.3.8); closing connection",
        )
    }

    /// The spool could not take the message.
    pub fn spool_failure() -> Reply {
        Reply::new(
            451,
            Enhanced(4, 3, 0),
            "Error: queue file write error, try again later",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_render_as_rfc_5321_lines() {
        let cases = [
            (Reply::ok(), "250 2.0.0 OK\r\n"),
            (Reply::plain(220, "mx ESMTP Weir"), "220 mx ESMTP Weir\r\n"),
            (
                Reply::plain(250, "mx\nPIPELINING\nSIZE 10"),
                "250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
            ),
            (
                Reply::new(550, Enhanced(5, 7, 1), "a\nb"),
                "550-5.7.1 a\r\n550 5.7.1 b\r\n",
            ),
        ];
        for (reply, wire) in cases {
            let mut out = Vec::new();
            reply.write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), wire);
        }
    }
}
