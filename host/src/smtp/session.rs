//! One SMTP session: the command loop, the checks every command passes
//! (line length, control characters, pipelining discipline, TLS
//! requirement, error budget) and the small commands. MAIL, RCPT, DATA and
//! BDAT live in their own files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncWrite};

use super::command::{self, Rule};
use super::conn::{Conn, Line, ReadError};
use super::reply::Reply;
use crate::config::{ListenerConfig, TlsMode};
use crate::queue::QueueId;
use crate::queue::{BodyType, QueueHandle, Recipient, Ret, Spool, TlsInfo};
use crate::shutdown::Shutdown;

/// What a listener shares with each of its sessions.
pub struct ListenerContext {
    /// The listener's configuration.
    pub config: ListenerConfig,
    /// Host name for banners and Received headers.
    pub hostname: String,
    /// Where accepted messages are stored.
    pub spool: Spool,
    /// Who delivers them.
    pub queue: QueueHandle,
    /// The plugin runtime (`None` in tests of the SMTP side alone).
    pub plugins: Option<Arc<crate::plugins::Runtime>>,
    /// Email authentication checks, for the plugins that ask.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Who may authenticate with SMTP AUTH (`None`: nobody).
    pub directory: Option<Arc<crate::directory::Directory>>,
    /// Where messages a plugin quarantines are kept.
    pub quarantine: crate::queue::quarantine::Quarantine,
    /// The listener's `local_domains`, shared with the plugins' contexts.
    pub local_domains: Arc<[String]>,
}

/// The open mail transaction (between MAIL and the end of data).
#[derive(Debug)]
pub(super) struct Transaction {
    pub id: QueueId,
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub body: BodyType,
    pub smtputf8: bool,
    /// Message bytes received so far through BDAT.
    pub chunks: Option<Vec<u8>>,
    /// This transaction's authentication checks (run when first asked).
    pub auth: Option<Arc<crate::auth::Transaction>>,
}

/// How a session ended.
pub enum Outcome<S> {
    /// The connection is finished.
    Closed,
    /// STARTTLS was accepted: the caller performs the handshake on the
    /// stream and starts a fresh session over TLS.
    StartTls(S),
}

/// Whether the loop goes on after a command.
pub(super) enum Step {
    Continue,
    Close,
    StartTls,
}

/// A session over any byte stream (TCP, TLS, or a test's in-memory pipe).
pub struct Session<S> {
    pub(super) conn: Conn<S>,
    pub(super) ctx: Arc<ListenerContext>,
    pub(super) peer: SocketAddr,
    pub(super) tls: Option<TlsInfo>,
    /// The EHLO/HELO argument, once given.
    pub(super) helo: Option<String>,
    /// EHLO (not HELO) was used: extensions, pipelining included, are on.
    pub(super) esmtp: bool,
    /// The user the client authenticated as (SMTP AUTH).
    pub(super) authenticated: Option<String>,
    pub(super) txn: Option<Transaction>,
    /// The plugins and chains this session started with: a reload does
    /// not change them under it.
    pub(super) plugins: Arc<crate::plugins::Generation>,
    errors: usize,
    shutdown: Shutdown,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session on a new connection; `tls` is set when the stream is
    /// already encrypted (implicit TLS, or after STARTTLS).
    pub fn new(
        stream: S,
        ctx: Arc<ListenerContext>,
        peer: SocketAddr,
        tls: Option<TlsInfo>,
        shutdown: Shutdown,
    ) -> Self {
        Session {
            conn: Conn::new(stream),
            plugins: match &ctx.plugins {
                Some(runtime) => runtime.current(),
                None => Arc::new(crate::plugins::Generation::empty()),
            },
            ctx,
            peer,
            tls,
            helo: None,
            esmtp: false,
            authenticated: None,
            txn: None,
            errors: 0,
            shutdown,
        }
    }

    pub(super) fn host(&self) -> &str {
        &self.ctx.hostname
    }

    /// Greets the client and serves commands until the session ends.
    pub async fn run_with_greeting(mut self) -> Outcome<S> {
        if !self.greet().await {
            self.conn.close().await;
            return Outcome::Closed;
        }
        self.run().await
    }

    /// Serves commands (the greeting, or the STARTTLS handshake, is done).
    pub async fn run(mut self) -> Outcome<S> {
        loop {
            let step = match self.next_line().await {
                Ok(Line::Complete(line)) => self.command(line).await,
                Ok(Line::TooLong) => self.error(Reply::line_too_long()),
                Err(end) => {
                    self.ended(end);
                    Step::Close
                }
            };
            match step {
                Step::Continue => continue,
                Step::Close => {
                    self.conn.close().await;
                    return Outcome::Closed;
                }
                Step::StartTls => {
                    if self.conn.flush().await.is_err() {
                        return Outcome::Closed;
                    }
                    let dropped = self.conn.discard_buffered();
                    if dropped > 0 {
                        tracing::warn!(peer = %self.peer, bytes = dropped, "plaintext sent after STARTTLS discarded (CVE-2011-0411)");
                    }
                    return Outcome::StartTls(self.conn.into_stream());
                }
            }
        }
    }

    /// Sends the banner, after the optional greeting delay; a client that
    /// talks first is refused.
    async fn greet(&mut self) -> bool {
        let delay = self.ctx.config.greeting_delay;
        let early = if delay.is_zero() {
            self.conn.poll_ahead()
        } else {
            self.conn
                .fill(delay, Some(&mut self.shutdown))
                .await
                .is_ok()
        };
        if early {
            tracing::info!(peer = %self.peer, "client talked before the greeting");
            self.conn.reply(&Reply::sync_error());
            return false;
        }
        // The connect chain may refuse the client instead of greeting it
        // (RFC 5321 3.1: 554, or 421 for "not now"), then the connection
        // is closed.
        match self.envelope_chain(crate::plugins::HookArgs::Connect).await {
            None
            | Some(
                crate::plugins::Outcome::Continue
                | crate::plugins::Outcome::Discard { .. }
                | crate::plugins::Outcome::Quarantine { .. },
            ) => {}
            Some(
                crate::plugins::Outcome::Refuse(mut reply)
                | crate::plugins::Outcome::Disconnect(mut reply),
            ) => {
                reply.code = if reply.code < 500 { 421 } else { 554 };
                tracing::info!(peer = %self.peer, code = reply.code, "refused at connect by a plugin");
                self.conn.reply(&reply);
                return false;
            }
        }
        let greeting = Reply::greeting(self.host());
        self.conn.reply(&greeting);
        true
    }

    pub(super) async fn next_line(&mut self) -> Result<Line, ReadError> {
        loop {
            if let Some(line) = self.conn.take_line(command::MAX_LINE) {
                return Ok(line);
            }
            let timeout = self.ctx.config.command_timeout;
            self.conn.fill(timeout, Some(&mut self.shutdown)).await?;
        }
    }

    /// Says goodbye in the way the end calls for.
    pub(super) fn ended(&mut self, end: ReadError) {
        match end {
            ReadError::Timeout => {
                tracing::info!(peer = %self.peer, "timeout");
                let reply = Reply::timeout(self.host());
                self.conn.reply(&reply);
            }
            ReadError::Shutdown => {
                let reply = Reply::shutting_down(self.host());
                self.conn.reply(&reply);
            }
            ReadError::Closed => tracing::debug!(peer = %self.peer, "client closed the connection"),
            ReadError::Io(e) => tracing::debug!(peer = %self.peer, error = %e, "connection error"),
        }
    }

    /// Queues an error reply and counts it against the session's budget.
    pub(super) fn error(&mut self, reply: Reply) -> Step {
        self.conn.reply(&reply);
        self.errors += 1;
        if self.errors >= self.ctx.config.max_errors {
            tracing::info!(peer = %self.peer, errors = self.errors, "too many errors");
            let bye = Reply::too_many_errors(self.host());
            self.conn.reply(&bye);
            return Step::Close;
        }
        Step::Continue
    }

    /// Queues a reply, counting it as an error if it is negative.
    pub(super) fn respond(&mut self, reply: Reply) -> Step {
        if reply.is_positive() {
            self.conn.reply(&reply);
            Step::Continue
        } else {
            self.error(reply)
        }
    }

    /// The client broke RFC 2920's rules: answer as Postfix does and close,
    /// so its replies and our reading can never drift apart.
    pub(super) fn sync_error(&mut self, verb: &str) -> Step {
        tracing::info!(peer = %self.peer, command = verb, "improper pipelining; disconnecting");
        self.conn.reply(&Reply::sync_error());
        Step::Close
    }

    async fn command(&mut self, line: Vec<u8>) -> Step {
        let rule: Rule = command::rule_for(&line);
        if line.len() > rule.max_line {
            return self.error(Reply::line_too_long());
        }
        // Sending ahead is only allowed once PIPELINING has been announced
        // (EHLO), and never after a command that ends a group. Input behind
        // STARTTLS is thrown away instead (see `run`), and QUIT closes anyway.
        let exempt = matches!(rule.verb, "STARTTLS" | "QUIT");
        if !exempt && !self.conn.buffered().is_empty() && (!self.esmtp || rule.ends_group) {
            return self.sync_error(rule.verb);
        }
        let body = &line[..line.len() - 2];
        if body.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
            return self.error(Reply::bad_characters());
        }
        if self.tls.is_none()
            && self.ctx.config.tls == TlsMode::Required
            && !rule.before_tls
            && rule != command::UNKNOWN
        {
            return self.error(Reply::tls_required());
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(e) => return self.error(parse_error_reply(e)),
        };
        match request {
            Request::Ehlo { host } => self.ehlo(host, true).await,
            Request::Helo { host } => self.ehlo(host, false).await,
            Request::Mail { from } => self.mail(from).await,
            Request::Rcpt { to } => self.rcpt(to).await,
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.txn = None;
                self.respond(Reply::ok())
            }
            Request::Noop { .. } => self.respond(Reply::ok()),
            Request::Quit => {
                let bye = Reply::bye(self.host());
                self.conn.reply(&bye);
                Step::Close
            }
            Request::Vrfy { .. } => self.respond(Reply::cannot_verify()),
            Request::Help { .. } => self.respond(Reply::help()),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => self.error(Reply::new(
                502,
                super::reply::Enhanced(5, 5, 1),
                "Error: command not implemented",
            )),
        }
    }

    fn starttls(&mut self) -> Step {
        if self.tls.is_some() {
            return self.error(Reply::bad_sequence("Error: TLS already active"));
        }
        if matches!(self.ctx.config.tls, TlsMode::Off | TlsMode::Implicit) {
            return self.error(Reply::new(
                502,
                super::reply::Enhanced(5, 5, 1),
                "Error: STARTTLS not available",
            ));
        }
        self.conn.reply(&Reply::ready_for_tls());
        Step::StartTls
    }

    /// What the plugins are told of the session and of `txn` (built only
    /// when a chain runs: without plugins, a hook costs nothing).
    pub(super) fn plugin_context(&self, txn: Option<&Transaction>) -> Arc<crate::plugins::Context> {
        Arc::new(crate::plugins::Context {
            helo: self.helo.clone(),
            tls: self.tls.clone(),
            authenticated_user: self.authenticated.clone(),
            queue_id: txn.map(|t| t.id.to_string()),
            sender: txn.map(|t| t.sender.clone()),
            recipients: txn
                .map(|t| t.recipients.iter().map(|r| r.address.clone()).collect())
                .unwrap_or_default(),
            auth: txn.and_then(|t| t.auth.clone()),
            local_domains: self.ctx.local_domains.clone(),
            ..crate::plugins::Context::new(self.peer, &self.ctx.config.name)
        })
    }

    /// Runs this listener's chain at an envelope hook (connect, helo,
    /// mail-from, rcpt); `None` when it has none.
    pub(super) async fn envelope_chain(
        &self,
        args: crate::plugins::HookArgs<'_>,
    ) -> Option<crate::plugins::Outcome> {
        if !self.plugins.has_chain(&self.ctx.config.name, args.hook()) {
            return None;
        }
        let context = self.plugin_context(self.txn.as_ref());
        Some(self.plugins.run(&context, args).await.outcome)
    }

    /// What a command does after its hook's chain: `None` means go on,
    /// `Some` is the step to take instead.
    pub(super) fn after_chain(&mut self, outcome: Option<crate::plugins::Outcome>) -> Option<Step> {
        use crate::plugins::Outcome;
        match outcome? {
            Outcome::Continue | Outcome::Discard { .. } | Outcome::Quarantine { .. } => None,
            Outcome::Refuse(reply) => Some(self.error(reply)),
            Outcome::Disconnect(reply) => {
                self.conn.reply(&reply);
                Some(Step::Close)
            }
        }
    }

    /// Whether this client may send to any domain: its address is a relay
    /// client's, or it authenticated.
    pub(super) fn may_relay(&self) -> bool {
        self.authenticated.is_some() || self.ctx.config.may_relay(self.peer.ip())
    }

    /// The timeout for reading message data.
    pub(super) fn data_timeout(&self) -> Duration {
        self.ctx.config.data_timeout
    }
}

/// One place that turns smtp-proto's parse errors into replies.
fn parse_error_reply(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => Reply::unknown_command(),
        Error::InvalidSenderAddress => Reply::bad_sender("Error: bad sender address syntax"),
        Error::InvalidRecipientAddress => {
            Reply::bad_recipient("Error: bad recipient address syntax")
        }
        Error::SyntaxError { syntax } => Reply::syntax(syntax),
        Error::InvalidParameter { param } => Reply::bad_parameter(param),
        Error::UnsupportedParameter { param } => Reply::bad_parameter(&param),
        Error::NeedsMoreData { .. } | Error::ResponseTooLong | Error::InvalidResponse { .. } => {
            Reply::syntax("command")
        }
    }
}
