//! A real DNS server for tests: hickory-server serving zones written inline
//! (zone-file syntax) on a loopback port, over UDP and TCP. Every
//! DNS-dependent test uses it; nothing is ever asked of another server.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name};
use hickory_proto::serialize::txt::Parser;
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// A running DNS server; stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl TestDns {
    /// Serves each `(origin, zone text)`. The zone text needs an SOA; use
    /// [`zone`] to add one.
    pub fn start(zones: &[(&str, String)]) -> TestDns {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let zones: Vec<(String, String)> = zones
            .iter()
            .map(|(o, z)| (o.to_string(), z.clone()))
            .collect();
        let addr = runtime.block_on(async move {
            let mut catalog = Catalog::new();
            for (origin, text) in zones {
                let origin = Name::from_str(&origin).unwrap();
                let (name, records) = Parser::new(text, None, Some(origin)).parse().unwrap();
                let handler = InMemoryZoneHandler::<
                    hickory_server::net::runtime::TokioRuntimeProvider,
                >::new(
                    name.clone(), records, ZoneType::Primary, AxfrPolicy::Deny
                )
                .unwrap();
                catalog.upsert(LowerName::new(&name), vec![Arc::new(handler)]);
            }
            // UDP and TCP on the same port.
            let (udp, tcp) = loop {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                    break (udp, tcp);
                }
            };
            let addr = udp.local_addr().unwrap();
            let mut server = Server::new(catalog);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 64);
            tokio::spawn(async move {
                let _ = server.block_until_done().await;
            });
            addr
        });
        TestDns {
            addr,
            _runtime: runtime,
        }
    }

    /// The `[dns]` table pointing weir at this server.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
            self.addr
        )
    }
}

/// A zone with an SOA and NS, then `records` (zone-file lines).
pub fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n"
    )
}
