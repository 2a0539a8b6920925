//! Starts the real `weir` binary and talks to it over real sockets.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// A running gateway with its own data directory.
pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addrs: HashMap<String, SocketAddr>,
}

impl Gateway {
    /// Starts weir with `listeners` (TOML for one or more `[[listener]]`
    /// tables, each with `bind = "127.0.0.1:0"` or a fixed port).
    pub fn start(listeners: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Gateway::start_in(dir, listeners)
    }

    /// Starts weir on an existing data directory (for restarts). Unless the
    /// configuration has routes or a `[queue]` table of its own, the queue
    /// is paused: receive tests keep what they sent in the spool, and
    /// nothing leaves the machine.
    pub fn start_in(dir: tempfile::TempDir, listeners: &str) -> Gateway {
        let config = dir.path().join("weir.toml");
        let queue = if listeners.contains("[queue]") || listeners.contains("[[route]]") {
            ""
        } else {
            "[queue]\npaused = true\n"
        };
        std::fs::write(
            &config,
            format!(
                "hostname = \"mx.test\"\ndata_dir = \"{}\"\nlog_level = \"debug\"\n{queue}{listeners}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("weir.log"))
            .unwrap();
        let mut child = Command::new(weir_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("weir starts");
        let expected = listeners.matches("[[listener]]").count();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = HashMap::new();
        while addrs.len() < expected {
            let line = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!("weir did not become ready; log:\n{}", read_log(dir.path()))
            });
            // "weir: listener NAME ready on ADDR"
            let mut words = line.split_whitespace();
            if let (
                Some("weir:"),
                Some("listener"),
                Some(name),
                Some("ready"),
                Some("on"),
                Some(addr),
            ) = (
                words.next(),
                words.next(),
                words.next(),
                words.next(),
                words.next(),
                words.next(),
            ) {
                addrs.insert(name.to_string(), addr.parse().unwrap());
            }
        }
        Gateway {
            child,
            dir,
            config,
            addrs,
        }
    }

    /// The address of the named listener.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// SIGTERM; returns the exit status once the process has ended.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    /// SIGKILL, and hand back the data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// The stored messages (envelope, bytes), read offline.
    pub fn spooled(&self) -> Vec<(weir::queue::Envelope, Vec<u8>)> {
        spooled(&self.data_dir())
    }

    /// Waits until the log holds `needle` at least `count` times; returns
    /// the log. (The log file is the only signal a reload gives.)
    pub fn wait_for_log(&self, needle: &str, count: usize) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} (x{count}) in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the weir CLI against this gateway's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(weir_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }
}

pub fn spooled(data_dir: &Path) -> Vec<(weir::queue::Envelope, Vec<u8>)> {
    weir::queue::spool::scan(data_dir, true)
        .unwrap()
        .into_iter()
        .map(|m| (m.envelope, m.message.unwrap()))
        .collect()
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("weir.log")).unwrap_or_default()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- weir log ({}; process: {:?}) ---\n{}",
                self.dir.path().display(),
                self.child.try_wait(),
                self.log()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener table bound to a free loopback port, with extra keys.
pub fn listener(name: &str, extra: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\n{extra}\n")
}

/// One reply: code and the text of every line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
    /// The enhanced status code of the last line.
    pub fn enhanced(&self) -> &str {
        self.lines
            .last()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("")
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Taken,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Taken => unreachable!(),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Taken => unreachable!(),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Taken => unreachable!(),
        }
    }
}

/// A deliberately simple SMTP client that can send anything, byte for byte.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects without reading the greeting.
    pub fn connect_raw(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects from `source` (any 127.x.y.z: all of 127/8 is loopback),
    /// and checks the greeting: tests of per-client and per-network
    /// policy need more than one client address.
    pub fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> Client {
        let mut c = Client::connect_raw_from(addr, source);
        let greeting = c.read_reply();
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        c
    }

    /// Connects from `source` without reading the greeting.
    pub fn connect_raw_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> Client {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects and checks the 220 greeting.
    pub fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr);
        let greeting = c.read_reply();
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        c
    }

    /// Connects with TLS from the first byte (port 465 style).
    pub fn connect_implicit_tls(addr: SocketAddr, ca: &rcgen::Certificate) -> Client {
        let mut c = Client::connect_raw(addr);
        c.start_tls(ca);
        let greeting = c.read_reply();
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        c
    }

    /// Runs the TLS handshake on the connection (after 220 to STARTTLS).
    pub fn start_tls(&mut self, ca: &rcgen::Certificate) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Taken) else {
            panic!("already TLS");
        };
        assert!(self.buf.is_empty(), "plaintext left before TLS");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        self.stream = Stream::Tls(Box::new(tls));
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .unwrap_or_else(|| panic!("connection closed while waiting for a reply"))
    }

    /// Reads one reply, or `None` if the server closed the connection.
    pub fn try_read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("bad reply line {line:?}"));
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if last {
                return Some(Reply { code, lines });
            }
        }
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Sends a command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Asserts the reply code of a command.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line);
        assert_eq!(r.code, code, "{line:?} got {r:?}");
        r
    }

    /// Asserts the server has closed the connection (after any replies
    /// already read).
    pub fn expect_closed(&mut self) {
        if let Some(r) = self.try_read_reply() {
            panic!("expected the connection to be closed, got {r:?}");
        }
    }

    /// EHLO, MAIL, RCPT..., DATA with `body`; returns the final reply.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        self.expect("EHLO client.test", 250);
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        }
        self.expect("DATA", 354);
        self.send(body.as_bytes());
        self.send(b".\r\n");
        self.read_reply()
    }
}

/// A self-signed certificate for "localhost", written as PEM files in
/// `dir`; returns the TOML keys for a listener and the certificate.
pub fn test_cert(dir: &Path) -> (String, rcgen::Certificate) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        ck.cert,
    )
}
