//! The command rules, one table (after Postfix's `smtpd_cmd_table[]`):
//! per verb, whether it is allowed before STARTTLS on a listener that
//! requires TLS, whether RFC 2920 makes it the last command of a pipelined
//! group, and how long its line may be.

/// How one verb may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The verb, upper case.
    pub verb: &'static str,
    /// Allowed before TLS where TLS is required (RFC 3207 section 4).
    pub before_tls: bool,
    /// Must be the last command of a pipelined group (RFC 2920 3.1,
    /// RFC 3207 4): nothing may follow it before its reply is read.
    pub ends_group: bool,
    /// Longest command line in octets, CRLF included.
    pub max_line: usize,
}

/// RFC 5321 4.5.3.1.4: 512 octets, raised by each extension's parameters.
pub const BASE_LINE: usize = 512;
/// MAIL: SIZE (RFC 1870, +26), BODY (RFC 6152, +14), SMTPUTF8 (RFC 6531,
/// +10), RET and ENVID (RFC 3461, +108).
pub const MAIL_LINE: usize = BASE_LINE + 26 + 14 + 10 + 108;
/// RCPT: NOTIFY and ORCPT (RFC 3461, +530).
pub const RCPT_LINE: usize = BASE_LINE + 530;
/// AUTH, and each SASL response line after a 334 (RFC 4954 4: 12288
/// octets).
pub const AUTH_LINE: usize = 12288;
/// The longest line any verb may have: the read buffer's bound.
pub const MAX_LINE: usize = AUTH_LINE;
const _: () = assert!(AUTH_LINE > MAIL_LINE && AUTH_LINE > RCPT_LINE);

const fn rule(verb: &'static str, before_tls: bool, ends_group: bool, max_line: usize) -> Rule {
    Rule {
        verb,
        before_tls,
        ends_group,
        max_line,
    }
}

/// The table.
pub const RULES: &[Rule] = &[
    rule("EHLO", true, true, BASE_LINE),
    rule("HELO", true, true, BASE_LINE),
    rule("STARTTLS", true, true, BASE_LINE),
    rule("MAIL", false, false, MAIL_LINE),
    rule("RCPT", false, false, RCPT_LINE),
    rule("DATA", false, true, BASE_LINE),
    rule("BDAT", false, false, BASE_LINE),
    rule("RSET", false, false, BASE_LINE),
    rule("NOOP", true, true, BASE_LINE),
    rule("QUIT", true, true, BASE_LINE),
    rule("VRFY", false, true, BASE_LINE),
    rule("EXPN", false, true, BASE_LINE),
    rule("HELP", true, false, BASE_LINE),
    // RFC 4954 4: AUTH ends a group unless its initial response completes
    // the exchange (PLAIN): `auth` refuses data sent ahead of a 334.
    rule("AUTH", false, false, AUTH_LINE),
];

/// Rules for unknown verbs: strictest.
pub const UNKNOWN: Rule = rule("", false, true, BASE_LINE);

/// The rule for a command line (looked up by its first word).
pub fn rule_for(line: &[u8]) -> Rule {
    let end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(line.len());
    let verb = &line[..end];
    RULES
        .iter()
        .find(|r| r.verb.as_bytes().eq_ignore_ascii_case(verb))
        .copied()
        .unwrap_or(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_found_case_insensitively() {
        assert_eq!(rule_for(b"mail FROM:<a@b>\r\n").verb, "MAIL");
        assert_eq!(rule_for(b"DATA\r\n").verb, "DATA");
        assert!(rule_for(b"DATA\r\n").ends_group);
        assert_eq!(rule_for(b"XYZZY\r\n"), UNKNOWN);
        assert!(rule_for(b"RCPT TO:<x@y>\r\n").max_line > BASE_LINE);
    }
}
