//! Email authentication, on mail-auth: SPF, DKIM, DMARC, ARC and iprev
//! for what arrives ([`Transaction`]), DKIM signing for what leaves
//! ([`sign`]).
//!
//! Checks run lazily, once per transaction, when a plugin first asks for
//! the results (`auth-results` in the WIT contract): a listener whose
//! plugins never ask pays nothing. They use the resolver delivery uses, so
//! its cache is shared.
//!
//! - At `mail-from` and `rcpt`: SPF for the HELO name and the MAIL FROM
//!   domain, and iprev.
//! - From `data` on: those, plus DKIM (each signature), ARC and DMARC.

pub mod cache;
pub mod dmarc;
pub mod results;
pub mod sign;
pub mod spf;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_resolver::TokioResolver;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, IprevResult, MessageAuthenticator, SpfOutput,
    SpfResult,
};
use tokio::sync::OnceCell;

pub use results::{AuthResult, Method, Outcome, Property, header_value};
use spf::{Identity, SpfCheck};

/// What every transaction's checks share: the resolver and our name.
pub struct Authenticator {
    inner: MessageAuthenticator,
    caches: cache::Caches,
    authserv_id: String,
}

impl Authenticator {
    /// Checks through `resolver`, reported under `authserv_id` (RFC 8601
    /// 2.5: the name of this gateway in Authentication-Results).
    pub fn new(resolver: TokioResolver, authserv_id: impl Into<String>) -> Authenticator {
        Authenticator {
            inner: MessageAuthenticator(resolver),
            caches: cache::Caches::new(),
            authserv_id: authserv_id.into().to_ascii_lowercase(),
        }
    }

    /// The authserv-id.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// SPF for one identity of a client (also what the openspf suite
    /// runs against).
    pub async fn spf(&self, ip: IpAddr, helo: &str, identity: Identity<'_>) -> SpfCheck {
        spf::check(
            &self.inner,
            &self.caches,
            ip,
            helo,
            &self.authserv_id,
            identity,
        )
        .await
    }

    /// The checks of one transaction: a client at `ip` that said `helo`
    /// and `MAIL FROM:<mail_from>` (empty for the null reverse path).
    pub fn transaction(
        self: &Arc<Self>,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> Arc<Transaction> {
        Arc::new(Transaction {
            auth: self.clone(),
            ip: canonical(ip),
            helo: helo.to_string(),
            mail_from: mail_from.to_string(),
            envelope: OnceCell::new(),
            message: OnceLock::new(),
            verified: OnceCell::new(),
        })
    }
}

/// An IPv4 client seen through an IPv6 socket is an IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One transaction's checks, each run at most once.
pub struct Transaction {
    auth: Arc<Authenticator>,
    ip: IpAddr,
    helo: String,
    mail_from: String,
    envelope: OnceCell<Envelope>,
    message: OnceLock<Arc<Vec<u8>>>,
    verified: OnceCell<Vec<AuthResult>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("ip", &self.ip)
            .field("helo", &self.helo)
            .field("mail_from", &self.mail_from)
            .finish_non_exhaustive()
    }
}

/// What can be checked before the message: SPF (HELO, MAIL FROM), iprev.
struct Envelope {
    spf_mail: SpfCheck,
    results: Vec<AuthResult>,
}

impl Transaction {
    /// The authserv-id the results are reported under.
    pub fn authserv_id(&self) -> &str {
        &self.auth.authserv_id
    }

    /// Hands over the message (at `data`): from now on the results include
    /// DKIM, ARC and DMARC. Only the first call counts.
    pub fn set_message(&self, raw: Arc<Vec<u8>>) {
        let _ = self.message.set(raw);
    }

    /// Every result so far, in the order Authentication-Results lists
    /// them: SPF (HELO, then MAIL FROM), DKIM, ARC, DMARC, iprev.
    pub async fn results(&self) -> Vec<AuthResult> {
        let envelope = self.envelope.get_or_init(|| self.check_envelope()).await;
        match self.message.get() {
            None => envelope.results.clone(),
            Some(raw) => self
                .verified
                .get_or_init(|| self.check_message(envelope, raw.clone()))
                .await
                .clone(),
        }
    }

    async fn check_envelope(&self) -> Envelope {
        let auth = &self.auth;
        let (spf_helo, spf_mail, iprev) = tokio::join!(
            auth.spf(self.ip, &self.helo, Identity::Helo),
            auth.spf(self.ip, &self.helo, Identity::MailFrom(&self.mail_from)),
            auth.inner.verify_iprev(auth.caches.with(self.ip)),
        );
        let me = &auth.authserv_id;
        let helo = spf_result(me, self.ip, &spf_helo, "smtp.helo", &self.helo, &self.helo);
        let sender = if self.mail_from.is_empty() {
            format!("postmaster@{}", self.helo)
        } else {
            self.mail_from.clone()
        };
        let mail_value = if self.mail_from.is_empty() {
            "<>"
        } else {
            &self.mail_from
        };
        let mail = spf_result(me, self.ip, &spf_mail, "smtp.mailfrom", mail_value, &sender);
        let iprev_outcome = match iprev.result() {
            IprevResult::Pass => Outcome::Pass,
            IprevResult::Fail(_) => Outcome::Fail,
            IprevResult::TempError(_) => Outcome::TempError,
            IprevResult::PermError(_) => Outcome::PermError,
            IprevResult::None => Outcome::None,
        };
        let reason = match (iprev.result(), &iprev.ptr) {
            (IprevResult::Pass, Some(names)) => names
                .first()
                .map(|n| n.trim_end_matches('.').to_string())
                .unwrap_or_default(),
            (IprevResult::Fail(e) | IprevResult::TempError(e) | IprevResult::PermError(e), _) => {
                e.to_string()
            }
            _ => String::new(),
        };
        if iprev_outcome == Outcome::TempError {
            tracing::info!(ip = %self.ip, error = %reason, "iprev: temporary DNS error");
        }
        let iprev = AuthResult::new(Method::Iprev, iprev_outcome)
            .reason(reason)
            .property("policy.iprev", self.ip.to_string());
        Envelope {
            spf_mail,
            results: vec![helo, mail, iprev],
        }
    }

    async fn check_message(&self, envelope: &Envelope, raw: Arc<Vec<u8>>) -> Vec<AuthResult> {
        let (auth, caches) = (&self.auth.inner, &self.auth.caches);
        let mut results = envelope.results.clone();
        let iprev = results
            .pop()
            .expect("the envelope's results end with iprev");
        let Some(mut message) = AuthenticatedMessage::parse(&raw) else {
            tracing::info!(ip = %self.ip, "message without a header section: no DKIM, ARC or DMARC");
            results.push(AuthResult::new(Method::Dkim, Outcome::None));
            results.push(iprev);
            return results;
        };
        // Each signature may cost a key lookup and an RSA verification:
        // only the first MAX_DKIM_SIGNATURES are checked (valid ones
        // first), as OpenDKIM's MaximumSignaturesToVerify does.
        // (mail-auth reports these signatures as neutral.)
        let is_dkim_error = |e: &mail_auth::Error| matches!(e, mail_auth::Error::Dkim(_));
        let signed = message.dkim_headers.len();
        let broken = message
            .errors
            .iter()
            .filter(|e| is_dkim_error(&e.header))
            .count();
        message.dkim_headers.truncate(MAX_DKIM_SIGNATURES);
        let mut room = MAX_DKIM_SIGNATURES - message.dkim_headers.len();
        message.errors.retain(|e| {
            if !is_dkim_error(&e.header) {
                return true;
            }
            let keep = room > 0;
            room = room.saturating_sub(1);
            keep
        });
        let (dkim, arc) = tokio::join!(
            auth.verify_dkim(caches.with(&message)),
            auth.verify_arc(caches.with(&message))
        );
        if dkim.is_empty() {
            results.push(AuthResult::new(Method::Dkim, Outcome::None));
        }
        for d in &dkim {
            results.push(dkim_result(d.result(), d.signature()));
        }
        let skipped = (signed + broken).saturating_sub(dkim.len());
        if skipped > 0 {
            results.push(
                AuthResult::new(Method::Dkim, Outcome::Policy).reason(format!(
                    "{skipped} more DKIM-Signature fields not checked: at most {MAX_DKIM_SIGNATURES} are"
                )),
            );
        }
        // mail-auth drops a DKIM-Signature it cannot parse at all; RFC
        // 6376 6.1.1 makes it a permanent failure, which is said here
        // (once, however many there are).
        let dropped = count_fields(&raw, "dkim-signature").saturating_sub(signed + broken);
        if dropped > 0 {
            let reason = if dropped == 1 {
                "malformed DKIM-Signature field".to_string()
            } else {
                format!("{dropped} malformed DKIM-Signature fields")
            };
            results.push(AuthResult::new(Method::Dkim, Outcome::PermError).reason(reason));
        }
        results.push(arc_result(arc.result(), arc.sets(), self.ip));
        // DMARC takes SPF's result for the MAIL FROM identity as mail-auth
        // sees it; Weir's pre-checks may have answered instead.
        let spf_mail = SpfOutput::new(envelope.spf_mail.domain.clone()).with_result(match envelope
            .spf_mail
            .outcome
        {
            Outcome::Pass => SpfResult::Pass,
            Outcome::Fail => SpfResult::Fail,
            Outcome::SoftFail => SpfResult::SoftFail,
            Outcome::Neutral => SpfResult::Neutral,
            Outcome::TempError => SpfResult::TempError,
            Outcome::PermError => SpfResult::PermError,
            Outcome::None | Outcome::Policy => SpfResult::None,
        });
        let dmarc = auth
            .verify_dmarc(caches.with(DmarcParameters::new(
                &message,
                &dkim,
                &envelope.spf_mail.domain,
                &spf_mail,
            )))
            .await;
        results.push(self.dmarc_result(&dmarc).await);
        results.push(iprev);
        for r in &results {
            if matches!(r.outcome, Outcome::TempError | Outcome::PermError) {
                tracing::info!(
                    ip = %self.ip,
                    method = r.method.as_str(),
                    result = r.outcome.as_str(),
                    reason = %r.reason,
                    "authentication check could not be completed"
                );
            }
        }
        results
    }

    async fn dmarc_result(&self, dmarc: &mail_auth::DmarcOutput) -> AuthResult {
        let outcome = match dmarc.result() {
            DmarcResult::Pass => Outcome::Pass,
            DmarcResult::Fail(_) => Outcome::Fail,
            DmarcResult::TempError(_) => Outcome::TempError,
            DmarcResult::PermError(_) => Outcome::PermError,
            DmarcResult::None => Outcome::None,
        };
        let requested = match dmarc.policy() {
            mail_auth::dmarc::Policy::Reject => dmarc::Policy::Reject,
            mail_auth::dmarc::Policy::Quarantine => dmarc::Policy::Quarantine,
            _ => dmarc::Policy::None,
        };
        let mut reason = String::new();
        let applied = if outcome == Outcome::Fail && requested != dmarc::Policy::None {
            let pct = dmarc::pct(&self.auth.inner.0, dmarc.domain()).await;
            let roll = rand::random_range(0..100u8);
            reason = format!("p={} pct={pct}", requested.as_str());
            dmarc::sample(requested, pct, roll)
        } else {
            requested
        };
        if let DmarcResult::Fail(e) | DmarcResult::TempError(e) | DmarcResult::PermError(e) =
            dmarc.result()
        {
            reason = if reason.is_empty() {
                e.to_string()
            } else {
                format!("{reason}: {e}")
            };
        }
        let mut r = AuthResult::new(Method::Dmarc, outcome).reason(reason);
        if !dmarc.domain().is_empty() {
            r = r.property("header.from", dmarc.domain());
        }
        if dmarc.dmarc_record().is_some() {
            r = r.property("policy.dmarc", applied.as_str());
        }
        r
    }
}

/// How many fields named `name` (lower case) the header section holds.
/// The most DKIM signatures of one message that are checked.
const MAX_DKIM_SIGNATURES: usize = 5;

fn count_fields(raw: &[u8], name: &str) -> usize {
    let head = match memchr::memmem::find(raw, b"\r\n\r\n") {
        Some(end) => &raw[..end],
        None => raw,
    };
    head.split(|&b| b == b'\n')
        .filter(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()..].trim_ascii_start().starts_with(b":")
        })
        .count()
}

fn spf_result(
    me: &str,
    ip: IpAddr,
    check: &SpfCheck,
    property: &str,
    value: &str,
    identity: &str,
) -> AuthResult {
    let reason = match check.outcome {
        Outcome::Pass => format!("{me}: domain of {identity} designates {ip} as permitted sender"),
        Outcome::Fail | Outcome::SoftFail => {
            let mut r =
                format!("{me}: domain of {identity} does not designate {ip} as permitted sender");
            if let Some(exp) = &check.explanation {
                r.push_str(": ");
                r.push_str(exp);
            }
            r
        }
        Outcome::Neutral => {
            format!("{me}: {ip} is neither permitted nor denied by domain of {identity}")
        }
        Outcome::TempError => {
            format!("{me}: error in processing during lookup of {identity}: DNS error")
        }
        Outcome::PermError => {
            format!("{me}: error in processing during lookup of {identity}: bad SPF record")
        }
        Outcome::None | Outcome::Policy => {
            format!("{me}: domain of {identity} does not designate permitted sender hosts")
        }
    };
    AuthResult::new(Method::Spf, check.outcome)
        .reason(reason)
        .property(property, value)
}

fn dkim_result(result: &DkimResult, signature: Option<&mail_auth::dkim::Signature>) -> AuthResult {
    let (outcome, reason) = match result {
        DkimResult::Pass => (Outcome::Pass, String::new()),
        // A body that no longer matches its hash failed verification
        // (RFC 6376 6.1.3), whatever mail-auth calls it.
        DkimResult::Neutral(
            e @ mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch),
        ) => (Outcome::Fail, e.to_string()),
        DkimResult::Neutral(e) => (Outcome::Neutral, e.to_string()),
        DkimResult::Fail(e) => (Outcome::Fail, e.to_string()),
        DkimResult::PermError(e) => (Outcome::PermError, e.to_string()),
        DkimResult::TempError(e) => (Outcome::TempError, e.to_string()),
        DkimResult::None => (Outcome::None, String::new()),
    };
    let mut r = AuthResult::new(Method::Dkim, outcome).reason(reason);
    if let Some(s) = signature {
        r = r.property("header.d", s.d.clone());
        if !s.i.is_empty() {
            r = r.property("header.i", s.i.clone());
        }
        r = r.property("header.s", s.s.clone()).property(
            "header.a",
            match s.a {
                mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
            },
        );
    }
    r
}

fn arc_result(result: &DkimResult, sets: &[mail_auth::arc::Set<'_>], ip: IpAddr) -> AuthResult {
    let (outcome, reason) = match result {
        DkimResult::Pass => (Outcome::Pass, String::new()),
        DkimResult::Neutral(e) | DkimResult::Fail(e) => (Outcome::Fail, e.to_string()),
        DkimResult::PermError(e) => (Outcome::PermError, e.to_string()),
        DkimResult::TempError(e) => (Outcome::TempError, e.to_string()),
        DkimResult::None => (Outcome::None, String::new()),
    };
    let mut r = AuthResult::new(Method::Arc, outcome)
        .reason(reason)
        .property("smtp.remote-ip", ip.to_string());
    // The newest set: who sealed it is who a policy may trust.
    if let Some(newest) = sets.iter().max_by_key(|s| s.seal.header.i) {
        r = r
            .property("header.d", newest.seal.header.d.clone())
            .property("header.s", newest.seal.header.s.clone());
    }
    r
}
