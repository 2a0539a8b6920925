//! A real DNS server for tests: hickory-server on a loopback port (UDP and
//! TCP), answering from records written inline in a test. Every
//! DNS-dependent test uses it; nothing is ever asked of another server.
//!
//! Records come as zone-file text ([`TestDns::start`] with [`zone`]) or are
//! built one by one ([`Records`]), which also says what zone text cannot:
//! a name that never answers (a timeout), one that answers SERVFAIL, raw
//! bytes in a TXT string, owner names with odd characters. The records can
//! be swapped while the server runs ([`TestDns::set`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// What a name holds.
#[derive(Default, Clone)]
struct Entry {
    owner: Option<Name>,
    rdata: Vec<RData>,
    /// A query for a type the name has no record of gets no answer.
    timeout: bool,
    /// ...or SERVFAIL.
    servfail: bool,
}

/// The records a [`TestDns`] serves.
#[derive(Default, Clone)]
pub struct Records(HashMap<String, Entry>);

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A name from test text: a normal name, or raw labels for names a
/// resolver would refuse to build ("foo:bar/baz.example.com").
pub fn name(text: &str) -> Name {
    if text.is_empty() || text == "." {
        return Name::root();
    }
    let mut n = Name::from_ascii(text)
        .or_else(|_| Name::from_utf8(text))
        .unwrap_or_else(|_| {
            Name::from_labels(text.trim_end_matches('.').split('.').map(str::as_bytes))
                .unwrap_or_else(|e| panic!("bad name {text:?}: {e}"))
        });
    n.set_fqdn(true);
    n
}

/// A TXT record of `text`, split into strings of 255 octets as the wire
/// requires.
pub fn txt(text: &str) -> RData {
    txt_strings(text.as_bytes().chunks(255).collect())
}

/// A TXT record of these character-strings as they are (raw bytes).
pub fn txt_strings(strings: Vec<&[u8]>) -> RData {
    RData::TXT(TXT::from_bytes(strings))
}

impl Records {
    /// No records.
    pub fn new() -> Records {
        Records::default()
    }

    fn entry(&mut self, owner: &str) -> &mut Entry {
        let e = self.0.entry(key(owner)).or_default();
        if e.owner.is_none() {
            e.owner = Some(name(owner));
        }
        e
    }

    /// Makes `owner` exist (NODATA rather than NXDOMAIN for what it lacks).
    pub fn exists(&mut self, owner: &str) -> &mut Records {
        self.entry(owner);
        self
    }

    /// Adds a record.
    pub fn add(&mut self, owner: &str, rdata: RData) -> &mut Records {
        self.entry(owner).rdata.push(rdata);
        self
    }

    /// Queries at `owner` for types it holds no record of are never
    /// answered (the resolver times out).
    pub fn timeout(&mut self, owner: &str) -> &mut Records {
        self.entry(owner).timeout = true;
        self
    }

    /// Queries at `owner` for types it holds no record of get SERVFAIL.
    pub fn servfail(&mut self, owner: &str) -> &mut Records {
        let e = self.entry(owner);
        e.timeout = true;
        e.servfail = true;
        self
    }

    /// Adds every record of a zone in zone-file syntax (see [`zone`]).
    pub fn zone(&mut self, origin: &str, text: &str) -> &mut Records {
        let origin = Name::from_str(origin).unwrap();
        let (_, sets) = Parser::new(text, None, Some(origin)).parse().unwrap();
        for set in sets.values() {
            for r in set.records_without_rrsigs() {
                self.add(&r.name.to_ascii(), r.data.clone());
            }
        }
        self
    }
}

enum Answer {
    Drop,
    Reply(ResponseCode, Vec<Record>),
}

#[derive(Clone)]
struct Handler {
    records: Arc<RwLock<Records>>,
}

impl Handler {
    fn answer(&self, qname: &Name, qtype: RecordType) -> Answer {
        let records = self.records.read().unwrap();
        let mut answers = Vec::new();
        let mut owner = qname.clone();
        let mut seen = HashSet::new();
        loop {
            let k = key(&owner.to_ascii());
            let Some(entry) = records.0.get(&k) else {
                // A name with names under it exists (an empty non-terminal).
                let suffix = format!(".{k}");
                let exists = records.0.keys().any(|n| n.ends_with(&suffix));
                let code = if exists || !answers.is_empty() {
                    ResponseCode::NoError
                } else {
                    ResponseCode::NXDomain
                };
                return Answer::Reply(code, answers);
            };
            if !seen.insert(k) {
                // A CNAME loop: what was found so far.
                return Answer::Reply(ResponseCode::NoError, answers);
            }
            if qtype != RecordType::CNAME
                && let Some(RData::CNAME(CNAME(target))) = entry
                    .rdata
                    .iter()
                    .find(|r| r.record_type() == RecordType::CNAME)
            {
                answers.push(Record::from_rdata(
                    owner.clone(),
                    60,
                    RData::CNAME(CNAME(target.clone())),
                ));
                owner = target.clone();
                continue;
            }
            let before = answers.len();
            let owner_name = entry.owner.clone().unwrap_or_else(|| owner.clone());
            for r in entry.rdata.iter().filter(|r| r.record_type() == qtype) {
                answers.push(Record::from_rdata(owner_name.clone(), 60, r.clone()));
            }
            if answers.len() == before && entry.timeout {
                return if entry.servfail {
                    Answer::Reply(ResponseCode::ServFail, Vec::new())
                } else {
                    Answer::Drop
                };
            }
            return Answer::Reply(ResponseCode::NoError, answers);
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let nothing = |metadata| {
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            return nothing(metadata);
        };
        let qname: Name = info.query.original().name().clone();
        let qtype = info.query.query_type();
        match self.answer(&qname, qtype) {
            Answer::Drop => nothing(metadata),
            Answer::Reply(code, answers) => {
                metadata.authoritative = true;
                metadata.response_code = code;
                // Negative answers carry an SOA, so resolvers cache them.
                let soa = if answers.is_empty() {
                    vec![Record::from_rdata(
                        Name::root(),
                        60,
                        RData::SOA(SOA::new(
                            name("ns.test"),
                            name("hostmaster.test"),
                            1,
                            3600,
                            600,
                            86400,
                            60,
                        )),
                    )]
                } else {
                    Vec::new()
                };
                let response = MessageResponseBuilder::from_message_request(request).build(
                    metadata,
                    answers.iter(),
                    std::iter::empty(),
                    soa.iter(),
                    std::iter::empty(),
                );
                match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(_) => nothing(metadata),
                }
            }
        }
    }
}

/// A running DNS server; stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    records: Arc<RwLock<Records>>,
    _runtime: tokio::runtime::Runtime,
}

impl TestDns {
    /// Serves each `(origin, zone text)`; see [`zone`].
    pub fn start(zones: &[(&str, String)]) -> TestDns {
        let mut records = Records::new();
        for (origin, text) in zones {
            records.zone(origin, text);
        }
        TestDns::serve(records)
    }

    /// Serves `records`.
    pub fn serve(records: Records) -> TestDns {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let records = Arc::new(RwLock::new(records));
        let handler = Handler {
            records: records.clone(),
        };
        let addr = runtime.block_on(async move {
            // UDP and TCP on the same port.
            let (udp, tcp) = loop {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                    break (udp, tcp);
                }
            };
            let addr = udp.local_addr().unwrap();
            let mut server = Server::new(handler);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 64);
            tokio::spawn(async move {
                let _ = server.block_until_done().await;
            });
            addr
        });
        TestDns {
            addr,
            records,
            _runtime: runtime,
        }
    }

    /// Replaces what is served.
    pub fn set(&self, records: Records) {
        *self.records.write().unwrap() = records;
    }

    /// The `[dns]` table pointing weir at this server.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
            self.addr
        )
    }

    /// A resolver that asks only this server, with a cache of its own and
    /// `timeout` per query, as weir builds it.
    pub fn resolver(&self, timeout: Duration) -> hickory_resolver::TokioResolver {
        weir::delivery::dns::resolver(&weir::config::DnsConfig {
            nameservers: vec![self.addr],
            timeout: Some(timeout),
        })
        .unwrap()
    }
}

/// A zone with an SOA and NS, then `records` (zone-file lines).
pub fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n"
    )
}
