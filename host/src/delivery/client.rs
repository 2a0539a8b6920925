//! The outbound SMTP (RFC 5321) and LMTP (RFC 2033) client: EHLO, STARTTLS
//! (RFC 3207), AUTH PLAIN (RFC 4954), PIPELINING (RFC 2920), SIZE, 8BITMIME,
//! SMTPUTF8 and DSN parameters, one reply per recipient, dot-stuffing and
//! CRLF-only line ends on the wire.
//!
//! Hand-written rather than built on a client crate because delivery needs
//! what those hide: every recipient's own reply, control of pipelining and
//! of the TLS policy, and reuse of one connection for many transactions.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use super::dns::Target;
use crate::config::OutboundTls;
use crate::queue::{BodyType, Envelope, Recipient, Ret};

/// How one connection is to behave.
pub struct Settings<'a> {
    /// EHLO/LHLO name.
    pub helo: &'a str,
    /// Speak LMTP instead of SMTP.
    pub lmtp: bool,
    /// TLS policy.
    pub tls: OutboundTls,
    /// The TLS configuration for `tls` (verifying or not).
    pub tls_config: Arc<ClientConfig>,
    /// Local address to bind.
    pub source: Option<IpAddr>,
    /// AUTH PLAIN credentials.
    pub auth: Option<(&'a str, &'a str)>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout for each reply.
    pub command_timeout: Duration,
    /// Timeout for the reply after the message data.
    pub data_timeout: Duration,
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The next hop took responsibility (its reply).
    Delivered(String),
    /// Try again later (the reason, `code enhanced text`).
    Temporary(String),
    /// Will never work (the reason).
    Permanent(String),
}

impl RcptOutcome {
    fn from_reply(reply: &Reply) -> RcptOutcome {
        match reply.code {
            200..=299 => RcptOutcome::Delivered(reply.to_string()),
            500..=599 => RcptOutcome::Permanent(reply.to_string()),
            _ => RcptOutcome::Temporary(reply.to_string()),
        }
    }
}

/// A failure of the connection or the whole attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// Bounce rather than retry.
    pub permanent: bool,
    /// What went wrong, as `code enhanced text` where there is a code.
    pub reason: String,
    /// The TLS handshake failed (an opportunistic route retries in clear).
    pub tls_failed: bool,
}

impl AttemptError {
    /// A temporary failure; `reason` gets a 451 in front unless it starts
    /// with a reply code already, so every reason reads `code enhanced text`.
    pub fn temporary(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let coded = reason.len() > 4
            && reason.as_bytes()[..3].iter().all(u8::is_ascii_digit)
            && reason.as_bytes()[3] == b' ';
        AttemptError {
            permanent: false,
            reason: if coded {
                reason
            } else {
                format!("451 {reason}")
            },
            tls_failed: false,
        }
    }

    /// A permanent failure (`reason` as for [`AttemptError::temporary`],
    /// with 550).
    pub fn permanent(reason: impl Into<String>) -> Self {
        let t = AttemptError::temporary(reason);
        AttemptError {
            permanent: true,
            reason: t.reason.replacen("451 ", "550 ", 1),
            tls_failed: false,
        }
    }
}

/// One reply from the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Reply code.
    pub code: u16,
    /// The text of each line.
    pub lines: Vec<String>,
}

impl Reply {
    /// The lines' text joined by spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Default, Clone)]
struct Capabilities {
    pipelining: bool,
    size: Option<u64>,
    eightbitmime: bool,
    smtputf8: bool,
    dsn: bool,
    starttls: bool,
    auth_plain: bool,
}

/// An open, greeted (and perhaps encrypted) connection to a next hop.
pub struct Connection {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    caps: Capabilities,
    /// The host we are talking to.
    pub target: Target,
    /// TLS is on.
    pub tls: bool,
    lmtp: bool,
    /// A transaction has run on this connection (RSET before the next).
    used: bool,
    command_timeout: Duration,
    data_timeout: Duration,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO (or LHLO), applies the TLS
    /// policy (`allow_tls = false` skips STARTTLS: the opportunistic
    /// fallback after a failed handshake) and authenticates.
    pub async fn open(
        target: &Target,
        settings: &Settings<'_>,
        allow_tls: bool,
    ) -> Result<Connection, AttemptError> {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| AttemptError::temporary(format!("4.4.1 cannot create socket: {e}")))?;
        if let Some(source) = settings.source {
            socket.bind(SocketAddr::new(source, 0)).map_err(|e| {
                AttemptError::temporary(format!("4.4.1 cannot bind source address {source}: {e}"))
            })?;
        }
        let stream = tokio::time::timeout(settings.connect_timeout, socket.connect(target.addr))
            .await
            .map_err(|_| {
                AttemptError::temporary(format!(
                    "4.4.1 connect to {}[{}] timed out",
                    target.host, target.addr
                ))
            })?
            .map_err(|e| {
                AttemptError::temporary(format!(
                    "4.4.1 connect to {}[{}]: {e}",
                    target.host, target.addr
                ))
            })?;
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            io: Box::new(stream),
            buf: Vec::new(),
            caps: Capabilities::default(),
            target: target.clone(),
            tls: false,
            lmtp: settings.lmtp,
            used: false,
            command_timeout: settings.command_timeout,
            data_timeout: settings.data_timeout,
        };
        let greeting = c.read_reply(c.command_timeout).await?;
        if greeting.code != 220 {
            return Err(c.refused("greeting", &greeting));
        }
        c.hello(settings.helo).await?;

        let want_tls = match settings.tls {
            OutboundTls::None => false,
            OutboundTls::Opportunistic => allow_tls && c.caps.starttls,
            OutboundTls::Required | OutboundTls::Verify => {
                if !c.caps.starttls {
                    return Err(AttemptError::temporary(format!(
                        "4.7.4 TLS is required, but {}[{}] does not offer STARTTLS",
                        target.host, target.addr
                    )));
                }
                true
            }
        };
        if want_tls {
            c = c.starttls(settings).await?;
            c.hello(settings.helo).await?;
        }
        if let Some((user, password)) = settings.auth {
            c.authenticate(user, password).await?;
        }
        Ok(c)
    }

    fn refused(&self, stage: &str, reply: &Reply) -> AttemptError {
        AttemptError::temporary(format!(
            "{} (host {}[{}] refused at {stage})",
            with_enhanced(reply),
            self.target.host,
            self.target.addr
        ))
    }

    async fn hello(&mut self, helo: &str) -> Result<(), AttemptError> {
        let verb = if self.lmtp { "LHLO" } else { "EHLO" };
        let reply = self.command(&format!("{verb} {helo}\r\n")).await?;
        if reply.code == 250 {
            self.caps = parse_capabilities(&reply);
            return Ok(());
        }
        if self.lmtp || reply.code / 100 != 5 {
            return Err(self.refused(verb, &reply));
        }
        // An old server without ESMTP.
        let reply = self.command(&format!("HELO {helo}\r\n")).await?;
        if reply.code != 250 {
            return Err(self.refused("HELO", &reply));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn starttls(mut self, settings: &Settings<'_>) -> Result<Connection, AttemptError> {
        let reply = self.command("STARTTLS\r\n").await?;
        if reply.code != 220 {
            return Err(AttemptError {
                tls_failed: true,
                ..self.refused("STARTTLS", &reply)
            });
        }
        // Anything the server sent after its 220 is not to be trusted.
        self.buf.clear();
        let name = ServerName::try_from(self.target.host.clone())
            .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("valid name"));
        let connector = TlsConnector::from(settings.tls_config.clone());
        let handshake = connector.connect(name, self.io);
        let io = tokio::time::timeout(self.command_timeout, handshake)
            .await
            .map_err(|_| AttemptError {
                tls_failed: true,
                ..AttemptError::temporary("4.7.5 TLS handshake timed out")
            })?
            .map_err(|e| AttemptError {
                tls_failed: true,
                ..AttemptError::temporary(format!(
                    "4.7.5 TLS handshake with {}[{}] failed: {e}",
                    self.target.host, self.target.addr
                ))
            })?;
        Ok(Connection {
            io: Box::new(io),
            buf: Vec::new(),
            caps: Capabilities::default(),
            tls: true,
            ..self
        })
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), AttemptError> {
        if !self.tls {
            return Err(AttemptError::temporary(
                "4.7.0 refusing to send credentials without TLS",
            ));
        }
        if !self.caps.auth_plain {
            return Err(AttemptError::temporary(format!(
                "4.7.0 {} does not offer AUTH PLAIN",
                self.target.host
            )));
        }
        let token = base64_encode(format!("\0{user}\0{password}").as_bytes());
        let reply = self.command(&format!("AUTH PLAIN {token}\r\n")).await?;
        if reply.code != 235 {
            return Err(self.refused("AUTH", &reply));
        }
        Ok(())
    }

    /// Runs one transaction for `rcpts` (indices into the envelope's
    /// recipients). Returns one outcome per recipient, in order; an error
    /// means the connection is no longer usable and the outcome of the
    /// recipients not yet decided is that error.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        rcpts: &[usize],
        message: &[u8],
    ) -> Result<Vec<RcptOutcome>, AttemptError> {
        // What the message needs that the next hop may not have.
        let lacking = if envelope.smtputf8 && !self.caps.smtputf8 {
            Some("5.6.7 The message needs SMTPUTF8, which the next hop does not support")
        } else if envelope.body == BodyType::EightBitMime && !self.caps.eightbitmime {
            Some("5.6.3 The message is 8-bit, and the next hop does not support 8BITMIME")
        } else if self
            .caps
            .size
            .is_some_and(|max| max > 0 && message.len() as u64 > max)
        {
            Some("5.3.4 The message is larger than the next hop accepts")
        } else {
            None
        };
        if let Some(reason) = lacking {
            let reason = format!("554 {reason} ({})", self.target.host);
            return Ok(rcpts
                .iter()
                .map(|_| RcptOutcome::Permanent(reason.clone()))
                .collect());
        }

        let mail = self.mail_command(envelope, message.len());
        let rcpt_cmds: Vec<String> = rcpts
            .iter()
            .map(|&i| self.rcpt_command(&envelope.recipients[i]))
            .collect();
        let reset = std::mem::replace(&mut self.used, true);

        let (mail_reply, rcpt_replies, data_reply) = if self.caps.pipelining {
            let mut batch = String::new();
            if reset {
                batch.push_str("RSET\r\n");
            }
            batch.push_str(&mail);
            for r in &rcpt_cmds {
                batch.push_str(r);
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes()).await?;
            if reset {
                self.read_reply(self.command_timeout).await?;
            }
            let mail_reply = self.read_reply(self.command_timeout).await?;
            let mut rcpt_replies = Vec::with_capacity(rcpts.len());
            for _ in rcpts {
                rcpt_replies.push(self.read_reply(self.command_timeout).await?);
            }
            let data_reply = self.read_reply(self.command_timeout).await?;
            (mail_reply, rcpt_replies, Some(data_reply))
        } else {
            if reset {
                self.command("RSET\r\n").await?;
            }
            let mail_reply = self.command(&mail).await?;
            let mut rcpt_replies = Vec::new();
            if mail_reply.code / 100 == 2 {
                for r in &rcpt_cmds {
                    rcpt_replies.push(self.command(r).await?);
                }
            }
            let any = rcpt_replies.iter().any(|r| r.code / 100 == 2);
            let data_reply = if any {
                Some(self.command("DATA\r\n").await?)
            } else {
                None
            };
            (mail_reply, rcpt_replies, data_reply)
        };

        if mail_reply.code / 100 != 2 {
            if data_reply.as_ref().is_some_and(|r| r.code == 354) {
                self.finish_empty_data().await?;
            }
            let outcome = RcptOutcome::from_reply(&mail_reply);
            return Ok(rcpts.iter().map(|_| outcome.clone()).collect());
        }
        let mut outcomes: Vec<Option<RcptOutcome>> = rcpt_replies
            .iter()
            .map(|r| (r.code / 100 != 2).then(|| RcptOutcome::from_reply(r)))
            .collect();
        let accepted: Vec<usize> = (0..rcpts.len())
            .filter(|&k| outcomes[k].is_none())
            .collect();
        match data_reply {
            Some(r) if r.code == 354 && accepted.is_empty() => self.finish_empty_data().await?,
            Some(r) if r.code == 354 => {
                let wire = dot_stuff(message);
                self.write(&wire).await?;
                if self.lmtp {
                    // RFC 2033 4.2: one reply per accepted recipient.
                    for &k in &accepted {
                        let reply = self.read_reply(self.data_timeout).await?;
                        outcomes[k] = Some(RcptOutcome::from_reply(&reply));
                    }
                } else {
                    let reply = self.read_reply(self.data_timeout).await?;
                    let outcome = RcptOutcome::from_reply(&reply);
                    for &k in &accepted {
                        outcomes[k] = Some(outcome.clone());
                    }
                }
            }
            Some(r) => {
                let outcome = RcptOutcome::from_reply(&r);
                for &k in &accepted {
                    outcomes[k] = Some(outcome.clone());
                }
            }
            None => {}
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| RcptOutcome::Temporary("451 4.3.0 no reply".into())))
            .collect())
    }

    /// Says QUIT and closes; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.write(b"QUIT\r\n").await;
            let _ = self.read_reply(Duration::from_secs(5)).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// A 354 came though nothing is to be sent: end an empty message (the
    /// server then refuses it for lack of recipients).
    async fn finish_empty_data(&mut self) -> Result<(), AttemptError> {
        self.write(b".\r\n").await?;
        self.read_reply(self.data_timeout).await?;
        Ok(())
    }

    fn mail_command(&self, envelope: &Envelope, size: usize) -> String {
        let mut cmd = format!("MAIL FROM:<{}>", envelope.sender);
        if self.caps.size.is_some() {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        if envelope.body == BodyType::EightBitMime && self.caps.eightbitmime {
            cmd.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            cmd.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            match envelope.ret {
                Some(Ret::Full) => cmd.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => cmd.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &envelope.envid {
                cmd.push_str(&format!(" ENVID={}", xtext(envid)));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    fn rcpt_command(&self, rcpt: &Recipient) -> String {
        let mut cmd = format!("RCPT TO:<{}>", rcpt.address);
        if self.caps.dsn {
            let n = &rcpt.notify;
            if n.never {
                cmd.push_str(" NOTIFY=NEVER");
            } else if n.success || n.failure || n.delay {
                let mut kinds = Vec::new();
                if n.success {
                    kinds.push("SUCCESS");
                }
                if n.failure {
                    kinds.push("FAILURE");
                }
                if n.delay {
                    kinds.push("DELAY");
                }
                cmd.push_str(&format!(" NOTIFY={}", kinds.join(",")));
            }
            if let Some(orcpt) = &rcpt.orcpt {
                cmd.push_str(&format!(" ORCPT=rfc822;{}", xtext(orcpt)));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    async fn command(&mut self, line: &str) -> Result<Reply, AttemptError> {
        self.write(line.as_bytes()).await?;
        self.read_reply(self.command_timeout).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), AttemptError> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        tokio::time::timeout(self.command_timeout, write)
            .await
            .map_err(|_| {
                AttemptError::temporary(format!("4.4.2 timeout writing to {}", self.target.host))
            })?
            .map_err(|e| {
                AttemptError::temporary(format!(
                    "4.4.2 connection to {} lost: {e}",
                    self.target.host
                ))
            })
    }

    async fn read_reply(&mut self, timeout: Duration) -> Result<Reply, AttemptError> {
        let mut text = Vec::new();
        loop {
            let line = self.read_line(timeout).await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| {
                    AttemptError::temporary(format!(
                        "4.5.0 malformed reply from {}: {line:?}",
                        self.target.host
                    ))
                })?;
            text.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                let reply = Reply { code, lines: text };
                // A 421 closes the connection: the attempt is over.
                if code == 421 {
                    return Err(AttemptError::temporary(with_enhanced(&reply)));
                }
                return Ok(reply);
            }
        }
    }

    async fn read_line(&mut self, timeout: Duration) -> Result<String, AttemptError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string());
            }
            if self.buf.len() > 64 * 1024 {
                return Err(AttemptError::temporary(format!(
                    "4.5.0 reply line from {} too long",
                    self.target.host
                )));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(timeout, self.io.read(&mut chunk))
                .await
                .map_err(|_| {
                    AttemptError::temporary(format!(
                        "4.4.2 timeout waiting for {}",
                        self.target.host
                    ))
                })?
                .map_err(|e| {
                    AttemptError::temporary(format!(
                        "4.4.2 connection to {} lost: {e}",
                        self.target.host
                    ))
                })?;
            if n == 0 {
                return Err(AttemptError::temporary(format!(
                    "4.4.2 connection closed by {}",
                    self.target.host
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `code enhanced text`, adding an enhanced code from the class when the
/// reply had none.
fn with_enhanced(reply: &Reply) -> String {
    if has_enhanced(&reply.text()) {
        reply.to_string()
    } else {
        format!("{} {}.0.0 {}", reply.code, reply.code / 100, reply.text())
    }
}

/// Whether text starts with an RFC 3463 code (`5.1.1 ...`).
pub fn has_enhanced(text: &str) -> bool {
    let first = text.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_capabilities(reply: &Reply) -> Capabilities {
    let mut caps = Capabilities::default();
    // The first line is the greeting; each other line is a keyword and its
    // parameters (RFC 5321 4.1.1.1).
    for line in reply.lines.iter().skip(1) {
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or("").to_ascii_uppercase();
        match keyword.as_str() {
            "PIPELINING" => caps.pipelining = true,
            "8BITMIME" => caps.eightbitmime = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "DSN" => caps.dsn = true,
            "STARTTLS" => caps.starttls = true,
            "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "AUTH" => caps.auth_plain = words.any(|w| w.eq_ignore_ascii_case("PLAIN")),
            _ => {}
        }
    }
    caps
}

/// The message as it goes on the wire: CRLF line ends only, lines that
/// start with a dot doubled (RFC 5321 4.5.2), and the end-of-data line.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                at_line_start = true;
                continue;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// RFC 3461 xtext.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_has_crlf_only_and_stuffed_dots() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b".x\r\n..y\r\n.\r\n", b"..x\r\n...y\r\n..\r\n.\r\n"),
            (b"no end", b"no end\r\n.\r\n"),
            (b"bare\nlf\rcr\r\n", b"bare\r\nlf\r\ncr\r\n.\r\n"),
            (b"", b".\r\n"),
        ];
        for (input, wire) in cases {
            assert_eq!(dot_stuff(input), *wire, "{input:?}");
        }
    }

    #[test]
    fn xtext_and_base64() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(base64_encode(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
    }

    #[test]
    fn capabilities_from_an_ehlo_reply() {
        let lines = [
            "mx.example says DSN",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "DSN",
            "STARTTLS",
            "AUTH LOGIN PLAIN",
        ];
        let reply = Reply {
            code: 250,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        };
        let caps = parse_capabilities(&reply);
        assert!(
            caps.pipelining && caps.eightbitmime && caps.dsn && caps.starttls && caps.auth_plain
        );
        assert_eq!(caps.size, Some(1000));
        assert!(!caps.smtputf8);
    }

    #[test]
    fn enhanced_codes_are_recognised() {
        assert!(has_enhanced("5.1.1 no such user"));
        assert!(!has_enhanced("no such user"));
        assert!(!has_enhanced("5.1 no"));
    }
}
