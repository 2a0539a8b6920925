//! DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030): receiving the message,
//! enforcing the size limit while staying in step with the client, and
//! handing the message to the spool. The 250 is sent only once the spool
//! says the message is on disk.

use tokio::io::{AsyncRead, AsyncWrite};

use super::data::{DotReader, has_bare_line_ending};
use super::received::Stamp;
use super::reply::Reply;
use super::session::{Session, Step, Transaction};
use crate::plugins::message::{EnvelopeChanges, MessageView, apply};
use crate::queue::{Envelope, Recipient};
use std::sync::Arc;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn data(&mut self) -> Step {
        match &self.txn {
            None => return self.error(Reply::bad_sequence("Error: need MAIL command")),
            Some(t) if t.recipients.is_empty() => {
                return self.error(Reply::new(
                    554,
                    super::reply::Enhanced(5, 5, 1),
                    "Error: no valid recipients",
                ));
            }
            Some(t) if t.chunks.is_some() => {
                return self.error(Reply::bad_sequence("Error: DATA after BDAT"));
            }
            Some(_) => {}
        }
        // The client must wait for 354 before sending the message.
        if self.conn.poll_ahead() {
            return self.sync_error("DATA");
        }
        self.conn.reply(&Reply::start_data());

        let limit = self.ctx.config.max_message_size.as_u64() as usize;
        let mut message = self.stamp();
        let stamp_len = message.len();
        let mut reader = DotReader::new(limit);
        loop {
            let fed = reader.feed(self.conn.buffered(), &mut message);
            self.conn.consume(fed.consumed);
            if fed.done {
                break;
            }
            if let Err(end) = self.conn.fill(self.data_timeout(), None).await {
                tracing::info!(peer = %self.peer, "connection lost during DATA: {end:?}");
                if matches!(end, super::conn::ReadError::Timeout) {
                    let reply = Reply::timeout(self.host());
                    self.conn.reply(&reply);
                }
                return Step::Close;
            }
        }
        if reader.bare_line_ending {
            tracing::warn!(peer = %self.peer, "bare CR or LF in DATA; message refused and connection closed");
            self.txn = None;
            self.conn.reply(&Reply::bare_line_ending());
            return Step::Close;
        }
        // Pipelining after the final dot is only allowed with PIPELINING.
        if !self.esmtp && !self.conn.buffered().is_empty() {
            self.txn = None;
            return self.sync_error("DATA");
        }
        let txn = self.txn.take().expect("checked above");
        if reader.overflow {
            return self.error(Reply::too_big(limit as u64));
        }
        debug_assert!(message.len() >= stamp_len);
        self.store(txn, message).await
    }

    pub(super) async fn bdat(&mut self, size: usize, last: bool) -> Step {
        let limit = self.ctx.config.max_message_size.as_u64() as usize;
        // A chunk is normally read in full, even when refused, so the
        // session stays in step. One more than twice the size limit is not
        // worth reading (it may claim 2^64 octets): refuse and close.
        if size > limit.saturating_mul(2) {
            tracing::info!(peer = %self.peer, size, "BDAT chunk far over the size limit; closing");
            self.txn = None;
            self.conn.reply(&Reply::too_big(limit as u64));
            return Step::Close;
        }
        // Room left for this chunk, if a transaction is open.
        let room = match &mut self.txn {
            Some(t) if !t.recipients.is_empty() => {
                let chunks = t.chunks.get_or_insert_with(Vec::new);
                Some(limit.saturating_sub(chunks.len()))
            }
            _ => None,
        };
        // The chunk is read in full whatever happens, to stay in step.
        let keep = matches!(room, Some(r) if size <= r);
        let mut chunk = Vec::with_capacity(if keep { size } else { 0 });
        let mut left = size;
        while left > 0 {
            if self.conn.buffered().is_empty()
                && let Err(end) = self.conn.fill(self.data_timeout(), None).await
            {
                tracing::info!(peer = %self.peer, "connection lost during BDAT: {end:?}");
                return Step::Close;
            }
            let take = left.min(self.conn.buffered().len());
            if keep {
                chunk.extend_from_slice(&self.conn.buffered()[..take]);
            }
            self.conn.consume(take);
            left -= take;
        }
        let Some(room) = room else {
            return self.error(match &self.txn {
                None => Reply::bad_sequence("Error: need MAIL command"),
                Some(_) => Reply::new(
                    554,
                    super::reply::Enhanced(5, 5, 1),
                    "Error: no valid recipients",
                ),
            });
        };
        if size > room {
            self.txn = None;
            return self.error(Reply::too_big(limit as u64));
        }
        let txn = self.txn.as_mut().expect("room implies a transaction");
        let chunks = txn.chunks.as_mut().expect("set above");
        chunks.extend_from_slice(&chunk);
        if !last {
            return self.respond(Reply::chunk_ok(size));
        }
        let txn = self.txn.take().expect("checked above");
        let content = txn.chunks.as_deref().unwrap_or_default();
        if has_bare_line_ending(content) {
            return self.error(Reply::new(
                550,
                super::reply::Enhanced(5, 6, 0),
                "Error: bare CR or LF in message data (RFC 5321 section 2.3.8)",
            ));
        }
        let mut message = self.stamp_for(&txn);
        message.extend_from_slice(content);
        self.store(txn, message).await
    }

    /// A new message buffer that starts with our Received header.
    fn stamp(&self) -> Vec<u8> {
        let txn = self.txn.as_ref().expect("called inside a transaction");
        self.stamp_for(txn)
    }

    fn stamp_for(&self, txn: &Transaction) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        Stamp {
            helo: self.helo.as_deref().unwrap_or(""),
            peer: self.peer,
            by: self.host(),
            esmtp: self.esmtp,
            smtputf8: txn.smtputf8,
            authenticated: self.authenticated.is_some(),
            tls: self.tls.as_ref(),
            id: txn.id,
            single_recipient: match txn.recipients.as_slice() {
                [one] => Some(one.address.as_str()),
                _ => None,
            },
        }
        .write_to(&mut out);
        out
    }

    async fn store(&mut self, mut txn: Transaction, message: Vec<u8>) -> Step {
        // Stored with the message, or dropped if it is not stored.
        let arriving = self.ctx.spool.arriving();
        let mut changes = crate::plugins::message::EnvelopeChanges::default();
        let (message, quarantine) = if self
            .plugins
            .has_chain(&self.ctx.config.name, crate::plugins::Hook::Data)
        {
            match self.data_chain(&mut txn, message, &mut changes).await {
                Ok(kept) => kept,
                Err(step) => return step,
            }
        } else {
            (message, None)
        };
        let envelope = Envelope {
            id: txn.id,
            sender: txn.sender,
            recipients: txn.recipients,
            ret: txn.ret,
            envid: txn.envid,
            body: txn.body,
            smtputf8: txn.smtputf8,
            client: crate::queue::ClientInfo {
                addr: self.peer,
                helo: self.helo.clone().unwrap_or_default(),
                listener: self.ctx.config.name.clone(),
                tls: self.tls.clone(),
                authenticated_user: self.authenticated.clone(),
            },
            received_at: chrono::Utc::now().timestamp(),
            size: message.len() as u64,
            route: changes.route,
            require_tls: changes.require_tls,
            tags: changes.tags.clone(),
            score: changes.score,
            released: false,
        };
        if let Some((plugin, reason)) = quarantine {
            drop(arriving);
            return self.hold(envelope, message, plugin, reason).await;
        }
        match self
            .ctx
            .spool
            .store_arriving(arriving, &envelope, message)
            .await
        {
            Ok(location) => {
                tracing::info!(
                    queue_id = %envelope.id,
                    peer = %self.peer,
                    sender = %envelope.sender,
                    recipients = envelope.recipients.len(),
                    size = envelope.size,
                    tags = ?changes.tags,
                    score = changes.score,
                    "queued"
                );
                let id = envelope.id;
                self.ctx.queue.submit(crate::queue::StoredMessage {
                    states: vec![crate::queue::RcptState::new(); envelope.recipients.len()],
                    envelope,
                    location,
                    message: None,
                });
                self.respond(Reply::queued(id))
            }
            Err(e) => {
                tracing::error!(queue_id = %envelope.id, error = %e, "spool write failed; client told to retry");
                self.respond(Reply::spool_failure())
            }
        }
    }

    /// Keeps a message a plugin quarantined: on disk and fsynced, then 250
    /// (the client is not told: its message is accepted, only not
    /// delivered until an operator releases it).
    async fn hold(
        &mut self,
        envelope: Envelope,
        message: Vec<u8>,
        plugin: String,
        reason: String,
    ) -> Step {
        let id = envelope.id;
        let held = crate::queue::quarantine::Held {
            envelope,
            reason,
            plugin,
            hook: "data".into(),
            held_at: chrono::Utc::now().timestamp(),
        };
        let (who, why) = (held.plugin.clone(), held.reason.clone());
        match self.ctx.quarantine.hold(held, message).await {
            Ok(()) => {
                tracing::info!(queue_id = %id, peer = %self.peer, plugin = who, reason = why, "quarantined");
                self.respond(Reply::queued(id))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "quarantine write failed; client told to retry");
                self.respond(Reply::spool_failure())
            }
        }
    }

    /// Runs the data chain on the message and applies what it decided:
    /// the message (possibly changed) to store, and whether it goes to
    /// the quarantine (the plugin and its reason); or the step to take
    /// instead.
    async fn data_chain(
        &mut self,
        txn: &mut Transaction,
        message: Vec<u8>,
        changes: &mut EnvelopeChanges,
    ) -> Result<(Vec<u8>, Option<(String, String)>), Step> {
        use crate::plugins::{HookArgs, Outcome};
        let view = Arc::new(MessageView::new(Arc::new(message)));
        crate::plugins::message::parse_if_large(&view).await;
        if let Some(auth) = &txn.auth {
            auth.set_message(view.raw().clone());
        }
        // The transaction is out of the session while its message is
        // stored: the context is built from it.
        let context = self.plugin_context(Some(txn));
        let result = self
            .plugins
            .run(&context, HookArgs::Data(view.clone()))
            .await;
        let id = txn.id;
        let mut quarantine = None;
        match result.outcome {
            Outcome::Continue => {}
            Outcome::Refuse(reply) => {
                tracing::info!(queue_id = %id, peer = %self.peer, code = reply.code, "message refused by a plugin");
                return Err(self.error(reply));
            }
            Outcome::Disconnect(reply) => {
                tracing::info!(queue_id = %id, peer = %self.peer, code = reply.code, "message refused by a plugin; closing");
                self.conn.reply(&reply);
                return Err(Step::Close);
            }
            Outcome::Discard { plugin } => {
                tracing::info!(queue_id = %id, peer = %self.peer, plugin, "message discarded by a plugin");
                return Err(self.respond(Reply::queued(id)));
            }
            // Held with the chain's changes applied (headers saying why).
            Outcome::Quarantine { plugin, reason } => quarantine = Some((plugin, reason)),
        }
        let edited = match apply(&view, &result.mutations) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "plugin changes not applied (all or none)");
                Default::default()
            }
        };
        *changes = edited.envelope;
        for address in &changes.add_recipients {
            if let Err(e) = super::address::check(address, txn.smtputf8) {
                tracing::warn!(queue_id = %id, rcpt = %address, error = ?e, "plugin added a bad recipient; ignored");
                continue;
            }
            if !txn
                .recipients
                .iter()
                .any(|r| r.address.eq_ignore_ascii_case(address))
            {
                txn.recipients.push(Recipient {
                    address: address.clone(),
                    orcpt: None,
                    notify: Default::default(),
                });
            }
        }
        txn.recipients.retain(|r| {
            !changes
                .remove_recipients
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&r.address))
        });
        if txn.recipients.is_empty() {
            tracing::info!(queue_id = %id, "plugins removed every recipient; message discarded");
            return Err(self.respond(Reply::queued(id)));
        }
        if edited.message.is_some() {
            tracing::info!(queue_id = %id, "message changed by plugins");
        }
        let message = match edited.message {
            Some(m) => m,
            None => view.into_bytes(),
        };
        Ok((message, quarantine))
    }
}
