//! A scriptable SMTP/LMTP server standing in for the next hop: real
//! sockets, real protocol, and replies chosen per recipient by the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::harness::PATIENCE;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub from: String,
    pub mail_params: String,
    pub rcpts: Vec<String>,
    /// The content, dot-unstuffed, without the final ".".
    pub data: Vec<u8>,
    /// Every line ended with CRLF on the wire.
    pub crlf_only: bool,
    pub tls: bool,
    /// The AUTH PLAIN token the client authenticated with, if any.
    pub auth: Option<String>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's EHLO/LHLO name.
    pub helo: String,
}

type ReplyFn = dyn Fn(&str) -> String + Send + Sync;

/// How the sink behaves.
#[derive(Clone)]
pub struct SinkOptions {
    /// Reply to `RCPT TO:<addr>`, given the address.
    pub rcpt: Arc<ReplyFn>,
    /// Reply after the data (SMTP), given the recipients accepted.
    pub data: Arc<ReplyFn>,
    /// Offer STARTTLS with this certificate and key (PEM).
    pub tls: Option<(String, String)>,
    /// Speak LMTP: LHLO, and one reply per recipient after the data.
    pub lmtp: bool,
    /// Wait this long before each reply to the end of data.
    pub data_delay: Duration,
    /// Do not offer SMTPUTF8.
    pub no_smtputf8: bool,
    /// Offer AUTH PLAIN (after TLS) and require this token (base64).
    pub auth_plain: Option<String>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            rcpt: Arc::new(|_| "250 2.1.5 ok".into()),
            data: Arc::new(|_| "250 2.0.0 queued".into()),
            tls: None,
            lmtp: false,
            data_delay: Duration::ZERO,
            no_smtputf8: false,
            auth_plain: None,
        }
    }
}

/// A running sink; stops accepting when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<(Mutex<Vec<Delivered>>, Condvar)>,
    /// How many times message data has started arriving.
    started: Arc<(Mutex<usize>, Condvar)>,
    /// Connections accepted.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

impl Sink {
    pub fn start(options: SinkOptions) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<(Mutex<Vec<Delivered>>, Condvar)> = Arc::default();
        let started: Arc<(Mutex<usize>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        {
            let connections = connections.clone();
            let received = received.clone();
            let started = started.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let received = received.clone();
                    let started = started.clone();
                    let options = options.clone();
                    std::thread::spawn(move || {
                        let stream = Box::new(conn.try_clone().unwrap());
                        let _ = serve(stream, conn, &options, &received, &started);
                    });
                }
            });
        }
        Sink {
            addr,
            received,
            started,
            connections,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until message data has started arriving `n` times.
    pub fn wait_for_data_start(&self, n: usize) {
        let (lock, cv) = &*self.started;
        let guard = lock.lock().unwrap();
        let (_guard, timeout) = cv.wait_timeout_while(guard, PATIENCE, |s| *s < n).unwrap();
        assert!(!timeout.timed_out(), "sink: no message data arrived");
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Delivered> {
        self.received.0.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what has been received.
    pub fn wait_until(&self, what: &str, pred: impl Fn(&[Delivered]) -> bool) -> Vec<Delivered> {
        let (lock, cv) = &*self.received;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = cv
            .wait_timeout_while(guard, PATIENCE, |r| !pred(r))
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "sink: timed out waiting for {what}; got {:#?}",
            *guard
        );
        guard.clone()
    }

    /// Waits for `n` messages.
    pub fn wait_for(&self, n: usize) -> Vec<Delivered> {
        self.wait_until(&format!("{n} messages"), |r| r.len() >= n)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    stream: Box<dyn Stream>,
    tcp: TcpStream,
    options: &SinkOptions,
    received: &(Mutex<Vec<Delivered>>, Condvar),
    started: &(Mutex<usize>, Condvar),
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(PATIENCE))?;
    let mut io = BufReader::new(stream);
    let mut tls = false;
    let mut auth: Option<String> = None;
    let peer = tcp.peer_addr()?;
    let mut helo = String::new();
    write!(io.get_mut(), "220 sink.test ESMTP\r\n")?;
    let mut from = None;
    let mut params = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") || upper.starts_with("LHLO") {
            helo = text.get(5..).unwrap_or("").to_string();
            let mut caps = vec![
                "250-sink.test",
                "250-PIPELINING",
                "250-8BITMIME",
                "250-SMTPUTF8",
                "250-DSN",
                "250-SIZE 100000000",
            ];
            if options.auth_plain.is_some() && tls {
                caps.push("250-AUTH PLAIN");
            }
            if options.no_smtputf8 {
                caps.retain(|c| *c != "250-SMTPUTF8");
            }
            if options.tls.is_some() && !tls {
                caps.push("250-STARTTLS");
            }
            caps.push("250 ENHANCEDSTATUSCODES");
            caps.join("\r\n")
        } else if upper.starts_with("STARTTLS") {
            let (cert, key) = options.tls.clone().unwrap();
            write!(io.get_mut(), "220 2.0.0 go ahead\r\n")?;
            let config = server_tls(&cert, &key);
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp.try_clone()?);
            while s.conn.is_handshaking() {
                if s.conn.complete_io(&mut s.sock).is_err() {
                    return Ok(());
                }
            }
            io = BufReader::new(Box::new(s));
            tls = true;
            continue;
        } else if upper.starts_with("AUTH PLAIN ") {
            let token = text[11..].trim().to_string();
            if options.auth_plain.as_deref() == Some(token.as_str()) && tls {
                auth = Some(token);
                "235 2.7.0 authenticated".into()
            } else {
                "535 5.7.8 bad credentials".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            if options.auth_plain.is_some() && auth.is_none() {
                write!(io.get_mut(), "530 5.7.0 authentication required\r\n")?;
                continue;
            }
            let rest = &text[10..];
            let end = rest.find('>').unwrap_or(rest.len());
            from = Some(rest[1.min(rest.len())..end].to_string());
            params = rest[(end + 1).min(rest.len())..].trim().to_string();
            rcpts.clear();
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let rest = &text[8..];
            let end = rest.find('>').unwrap_or(rest.len());
            let addr = rest[1.min(rest.len())..end].to_string();
            let reply = (options.rcpt)(&addr);
            if reply.starts_with('2') {
                rcpts.push(addr);
            }
            reply
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                write!(io.get_mut(), "354 go ahead\r\n")?;
                {
                    let (lock, cv) = started;
                    *lock.lock().unwrap() += 1;
                    cv.notify_all();
                }
                let (data, crlf_only) = read_data(&mut io)?;
                std::thread::sleep(options.data_delay);
                let replies: Vec<String> = if options.lmtp {
                    rcpts
                        .iter()
                        .map(|r| (options.rcpt)(&format!("data:{r}")))
                        .collect()
                } else {
                    vec![(options.data)(&rcpts.join(","))]
                };
                let accepted: Vec<String> = if options.lmtp {
                    rcpts
                        .iter()
                        .zip(&replies)
                        .filter(|(_, r)| r.starts_with('2'))
                        .map(|(a, _)| a.clone())
                        .collect()
                } else if replies[0].starts_with('2') {
                    rcpts.clone()
                } else {
                    Vec::new()
                };
                if !accepted.is_empty() {
                    let (lock, cv) = received;
                    lock.lock().unwrap().push(Delivered {
                        from: from.clone().unwrap_or_default(),
                        mail_params: params.clone(),
                        rcpts: accepted,
                        data,
                        crlf_only,
                        tls,
                        auth: auth.clone(),
                        peer,
                        helo: helo.clone(),
                    });
                    cv.notify_all();
                }
                rcpts.clear();
                replies.join("\r\n")
            }
        } else if upper == "RSET" {
            rcpts.clear();
            from = None;
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            write!(io.get_mut(), "221 2.0.0 bye\r\n")?;
            return Ok(());
        } else if upper == "NOOP" {
            "250 2.0.0 ok".into()
        } else {
            "500 5.5.1 unknown".into()
        };
        write!(io.get_mut(), "{reply}\r\n")?;
        io.get_mut().flush()?;
    }
}

fn read_data(io: &mut BufReader<Box<dyn Stream>>) -> std::io::Result<(Vec<u8>, bool)> {
    let mut data = Vec::new();
    let mut crlf_only = true;
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with(b"\r\n") || line[..line.len() - 2].contains(&b'\r') {
            crlf_only = false;
        }
        if line == b".\r\n" {
            return Ok((data, crlf_only));
        }
        let unstuffed = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}

fn server_tls(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    )
}
