//! Delivery status notifications (RFC 3464 reports in RFC 6522
//! multipart/report form), built with mail-builder: one message per
//! notification, to the envelope sender, from the null sender.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};

use super::client::has_enhanced;
use crate::queue::{Envelope, Ret};

/// What happened to a recipient, as RFC 3464 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bounced (refused, or expired).
    Failed,
    /// Still being retried (the delay warning).
    Delayed,
    /// Delivered, and the sender asked to hear so (NOTIFY=SUCCESS).
    Delivered,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
        }
    }
}

/// One recipient in a report.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index into the envelope's recipients.
    pub rcpt: usize,
    /// What happened.
    pub action: Action,
    /// The reply that decided it (`code enhanced text`).
    pub reply: String,
}

/// The RFC 3463 status in a reply, or one derived from its code.
pub fn status_of(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let rest: String = words.collect::<Vec<_>>().join(" ");
    if has_enhanced(&rest) {
        return rest.split_whitespace().next().unwrap_or("").to_string();
    }
    if has_enhanced(reply) {
        return code.to_string();
    }
    match code.chars().next() {
        Some('2') => "2.0.0".into(),
        Some('5') => "5.0.0".into(),
        _ => "4.0.0".into(),
    }
}

/// Builds the notification for `entries` of the message `original`
/// (whose envelope is `envelope`), as reported by `hostname`.
pub fn build(hostname: &str, envelope: &Envelope, entries: &[Entry], original: &[u8]) -> Vec<u8> {
    let worst = if entries.iter().any(|e| e.action == Action::Failed) {
        Action::Failed
    } else if entries.iter().any(|e| e.action == Action::Delayed) {
        Action::Delayed
    } else {
        Action::Delivered
    };
    let (subject, intro) = match worst {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "your message could not be delivered to one or more recipients.\r\nIt is attached below.",
        ),
        Action::Delayed => (
            "Delayed Mail (still being retried)",
            "your message has not yet been delivered to one or more recipients.\r\nDelivery will be retried; you do not need to send it again.",
        ),
        Action::Delivered => (
            "Successful Mail Delivery Report",
            "your message was delivered to the recipients below, as you asked to be told.",
        ),
    };
    let now = chrono::Utc::now();

    let mut human = format!(
        "This is the mail system at host {hostname}.\r\n\r\nThis is to tell you that {intro}\r\n\r\n"
    );
    for e in entries {
        let rcpt = &envelope.recipients[e.rcpt];
        human.push_str(&format!("<{}>: {}\r\n", rcpt.address, e.reply));
    }

    let mut status = format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &envelope.envid {
        status.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    status.push_str(&format!("X-Weir-Queue-ID: {}\r\n", envelope.id));
    if let Some(arrival) = chrono::DateTime::from_timestamp(envelope.received_at, 0) {
        status.push_str(&format!("Arrival-Date: {}\r\n", arrival.to_rfc2822()));
    }
    for e in entries {
        let rcpt = &envelope.recipients[e.rcpt];
        status.push_str("\r\n");
        if let Some(orcpt) = &rcpt.orcpt {
            status.push_str(&format!("Original-Recipient: rfc822; {orcpt}\r\n"));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", rcpt.address));
        status.push_str(&format!("Action: {}\r\n", e.action.as_str()));
        status.push_str(&format!("Status: {}\r\n", status_of(&e.reply)));
        status.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", e.reply));
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", now.to_rfc2822()));
    }

    // RET=HDRS, or a success report: only the header section goes back.
    let headers_only = envelope.ret == Some(Ret::Hdrs) || worst == Action::Delivered;
    let returned = if headers_only {
        let end = original
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 2)
            .unwrap_or(original.len());
        MimePart::new(
            "text/rfc822-headers",
            BodyPart::Binary(original[..end].into()),
        )
        .transfer_encoding("8bit")
    } else {
        MimePart::new("message/rfc822", BodyPart::Binary(original.into())).transfer_encoding("8bit")
    };

    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(vec![
            MimePart::new("text/plain", BodyPart::Text(human.into())),
            MimePart::new("message/delivery-status", BodyPart::Text(status.into()))
                .transfer_encoding("7bit"),
            returned,
        ]),
    );
    let daemon = format!("MAILER-DAEMON@{hostname}");
    MessageBuilder::new()
        .from(("Mail Delivery System", daemon.as_str()))
        .to(envelope.sender.as_str())
        .subject(subject)
        .date(now.timestamp())
        .message_id(format!(
            "{}.{}@{hostname}",
            envelope.id,
            now.timestamp_micros()
        ))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report)
        .write_to_vec()
        .expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_from_the_reply() {
        assert_eq!(status_of("550 5.1.1 no such user"), "5.1.1");
        assert_eq!(status_of("451 try later"), "4.0.0");
        assert_eq!(status_of("554 no"), "5.0.0");
        assert_eq!(status_of("4.4.7 expired"), "4.4.7");
    }
}
