//! The Received header (RFC 5321 4.4, protocol names of RFC 3848/6531),
//! with the TLS version and cipher as a comment when TLS was used:
//!
//! ```text
//! Received: from client.example ([192.0.2.1])
//!         by mx.example.org (Weir) with ESMTPS
//!         (TLSv1_3 TLS13_AES_256_GCM_SHA384)
//!         id 00062F1A2B3C4D5E
//!         for <user@example.org>; Mon, 23 Nov 2026 15:36:00 +0000
//! ```

use std::net::SocketAddr;

use crate::queue::{QueueId, TlsInfo};

/// What goes into one Received header.
pub struct Stamp<'a> {
    /// The EHLO/HELO argument.
    pub helo: &'a str,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our host name.
    pub by: &'a str,
    /// EHLO (true) or HELO.
    pub esmtp: bool,
    /// SMTPUTF8 was used.
    pub smtputf8: bool,
    /// The client authenticated (SMTP AUTH).
    pub authenticated: bool,
    /// TLS parameters.
    pub tls: Option<&'a TlsInfo>,
    /// The queue id.
    pub id: QueueId,
    /// The recipient, named only when there is exactly one (naming several
    /// would disclose Bcc recipients to each other).
    pub single_recipient: Option<&'a str>,
}

impl Stamp<'_> {
    /// Appends the header, CRLF-terminated and folded, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let ip = match self.peer.ip() {
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => format!("IPv6:{v6}"),
            },
            v4 => v4.to_string(),
        };
        let base = match (self.smtputf8, self.esmtp, self.tls.is_some()) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, true) => "SMTPS",
            (false, false, false) => "SMTP",
        };
        // RFC 3848: an "A" for an authenticated session (AUTH needs EHLO).
        let protocol = if self.authenticated {
            format!("{base}A")
        } else {
            base.to_string()
        };
        // The HELO name is the client's claim: keep it out of the comment's
        // syntax by dropping parentheses and backslashes.
        let helo: String = self
            .helo
            .chars()
            .filter(|c| !matches!(c, '(' | ')' | '\\'))
            .collect();
        let mut h = format!(
            "Received: from {helo} ([{ip}])\r\n\tby {} (Weir) with {protocol}",
            self.by
        );
        if let Some(tls) = self.tls {
            h.push_str(&format!("\r\n\t({} {})", tls.version, tls.cipher));
        }
        h.push_str(&format!("\r\n\tid {}", self.id));
        if let Some(rcpt) = self.single_recipient {
            h.push_str(&format!("\r\n\tfor <{rcpt}>"));
        }
        h.push_str(&format!("; {}\r\n", chrono::Utc::now().to_rfc2822()));
        out.extend_from_slice(h.as_bytes());
    }
}
