//! Mailbox checks smtp-proto leaves to us: RFC 5321 4.5.3.1 length limits
//! and RFC 6531's rule that non-ASCII needs SMTPUTF8.

use super::reply::Reply;

/// Why an address is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Local part over 64 octets (RFC 5321 4.5.3.1.1).
    LocalPartTooLong,
    /// Domain over 255 octets (RFC 5321 4.5.3.1.2).
    DomainTooLong,
    /// No `@domain`.
    NoDomain,
    /// Non-ASCII without SMTPUTF8.
    NeedsUtf8,
}

/// Which address of the envelope was checked.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// MAIL FROM.
    Sender,
    /// RCPT TO.
    Recipient,
}

impl AddressError {
    /// The reply for this error: 501 with 5.1.7 (sender) or 5.1.3
    /// (recipient), or 553 5.6.7 for non-ASCII without SMTPUTF8.
    pub fn reply(&self, role: Role) -> Reply {
        let what = match self {
            AddressError::LocalPartTooLong => "local part longer than 64 octets",
            AddressError::DomainTooLong => "domain longer than 255 octets",
            AddressError::NoDomain => "address needs a domain",
            AddressError::NeedsUtf8 => return Reply::utf8_not_requested(),
        };
        match role {
            Role::Sender => Reply::bad_sender(format!("Error: sender {what}")),
            Role::Recipient => Reply::bad_recipient(format!("Error: recipient {what}")),
        }
    }
}

/// Checks a non-empty mailbox.
pub fn check(address: &str, smtputf8: bool) -> Result<(), AddressError> {
    let (local, domain) = address.rsplit_once('@').ok_or(AddressError::NoDomain)?;
    if local.len() > 64 {
        return Err(AddressError::LocalPartTooLong);
    }
    if domain.len() > 255 {
        return Err(AddressError::DomainTooLong);
    }
    if !smtputf8 && !address.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    Ok(())
}

/// The domain of a mailbox.
pub fn domain(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let l64 = "a".repeat(64);
        let l65 = "a".repeat(65);
        let d255 = format!("{}.com", "d".repeat(251));
        let d256 = format!("{}.com", "d".repeat(252));
        assert_eq!(check(&format!("{l64}@x.org"), false), Ok(()));
        assert_eq!(
            check(&format!("{l65}@x.org"), false),
            Err(AddressError::LocalPartTooLong)
        );
        assert_eq!(check(&format!("a@{d255}"), false), Ok(()));
        assert_eq!(
            check(&format!("a@{d256}"), false),
            Err(AddressError::DomainTooLong)
        );
        assert_eq!(check("jörg@x.org", false), Err(AddressError::NeedsUtf8));
        assert_eq!(check("jörg@x.org", true), Ok(()));
        assert_eq!(check("nodomain", false), Err(AddressError::NoDomain));
    }
}
