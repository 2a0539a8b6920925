//! Header sanity (RFC 5322 3.6): a message without a Date or a Message-ID
//! field, or whose From is missing, repeated or holds no address, is more
//! likely a spam tool's than a mail program's.

use weir_plugin_sdk::Message;

/// What is wrong with the header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    MissingDate,
    MissingMessageId,
    BadFrom,
}

/// The findings for `msg`, and the From field's domain if it has one.
pub fn check(msg: &Message) -> (Vec<Finding>, Option<String>) {
    let mut out = Vec::new();
    if msg.header("date").is_empty() {
        out.push(Finding::MissingDate);
    }
    if msg.header("message-id").is_empty() {
        out.push(Finding::MissingMessageId);
    }
    let from = msg.header("from");
    let domain = match from.as_slice() {
        [one] => from_domain(one),
        _ => None,
    };
    if domain.is_none() {
        out.push(Finding::BadFrom);
    }
    (out, domain)
}

/// The domain of the (one) address in a From value: `Name <a@b.example>`
/// or `a@b.example`.
pub fn from_domain(value: &str) -> Option<String> {
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.trim(),
    };
    let (local, domain) = addr.trim().rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!local.is_empty() && domain.contains('.') && !domain.contains([' ', ',', ';', '<', '>', '"']))
        .then_some(domain)
}

#[cfg(test)]
mod tests {
    #[test]
    fn from_values_give_their_domain() {
        use super::from_domain;
        assert_eq!(
            from_domain("Alice <alice@Example.org>").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            from_domain("alice@example.org").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            from_domain("\"a@b\" <x@y.example>").as_deref(),
            Some("y.example")
        );
        assert_eq!(from_domain("undisclosed"), None);
        assert_eq!(from_domain("<@example.org>"), None);
        assert_eq!(from_domain("a@localhost"), None);
    }
}
