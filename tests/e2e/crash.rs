//! The durability promise: every message that got a 250 survives SIGKILL.
//!
//! Several clients send messages in a loop while the gateway is killed with
//! SIGKILL at random moments (after a random number of further 250s, so the
//! kill lands while other clients are mid-transaction) and restarted on
//! the same data directory. Afterwards every acknowledged message must be
//! in the spool, byte for byte. Duplicates are allowed (a message stored
//! just before the kill, whose 250 never arrived, is sent again); loss is
//! not.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

use crate::harness::{Gateway, PATIENCE, listener, spooled};

const CLIENTS: usize = 6;
const KILLS: usize = 6;

struct Shared {
    /// (generation, address) of the running gateway.
    target: Mutex<(u64, SocketAddr)>,
    restarted: Condvar,
    /// Subject -> body of every acknowledged message.
    acked: Mutex<HashMap<String, Vec<u8>>>,
    more_acked: Condvar,
    stop: AtomicBool,
}

/// A generator seeded per run (the seed is printed), so a failure can be
/// replayed.
struct Rng(StdRng);
impl Rng {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0.random_range(lo..hi)
    }
}

fn body_for(subject: &str, lines: usize) -> Vec<u8> {
    let mut b = format!("From: crash@example.org\r\nSubject: {subject}\r\n\r\n").into_bytes();
    for i in 0..lines {
        b.extend_from_slice(format!("{subject} line {i} {}\r\n", "x".repeat(50)).as_bytes());
    }
    b
}

/// Reads one reply's code; errors on a closed or broken connection.
fn reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..i + 2).collect();
            if line.get(3) == Some(&b'-') {
                continue;
            }
            let code = std::str::from_utf8(&line[..3])
                .ok()
                .and_then(|c| c.parse().ok());
            return code.ok_or_else(|| std::io::Error::other("bad reply"));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn expect(code: u16, want: u16) -> std::io::Result<()> {
    if code == want {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("got {code}, wanted {want}")))
    }
}

/// One connection's worth of messages; returns on any error.
fn session(
    addr: SocketAddr,
    client: usize,
    seq: &mut usize,
    rng: &mut Rng,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    let mut buf = Vec::new();
    expect(reply(&mut s, &mut buf)?, 220)?;
    s.write_all(b"EHLO crash.test\r\n")?;
    expect(reply(&mut s, &mut buf)?, 250)?;
    while !shared.stop.load(Ordering::Relaxed) {
        *seq += 1;
        let subject = format!("c{client}-m{seq}");
        let body = body_for(&subject, rng.range(1, 200) as usize);
        s.write_all(b"MAIL FROM:<crash@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n")?;
        expect(reply(&mut s, &mut buf)?, 250)?;
        expect(reply(&mut s, &mut buf)?, 250)?;
        expect(reply(&mut s, &mut buf)?, 354)?;
        s.write_all(&body)?;
        s.write_all(b".\r\n")?;
        expect(reply(&mut s, &mut buf)?, 250)?;
        shared.acked.lock().unwrap().insert(subject, body);
        shared.more_acked.notify_all();
    }
    let _ = s.write_all(b"QUIT\r\n");
    Ok(())
}

#[test]
fn every_acknowledged_message_survives_sigkill() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed: {seed}");
    let mut rng = Rng(StdRng::seed_from_u64(seed));
    let config = listener("in", "");
    let mut gw = Gateway::start(&config);
    let shared = Arc::new(Shared {
        target: Mutex::new((0, gw.addr("in"))),
        restarted: Condvar::new(),
        acked: Mutex::new(HashMap::new()),
        more_acked: Condvar::new(),
        stop: AtomicBool::new(false),
    });

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let shared = shared.clone();
            let mut rng = Rng(StdRng::seed_from_u64(seed.wrapping_add(client as u64)));
            std::thread::spawn(move || {
                let mut seq = 0;
                while !shared.stop.load(Ordering::Relaxed) {
                    let (generation, addr) = *shared.target.lock().unwrap();
                    if session(addr, client, &mut seq, &mut rng, &shared).is_err() {
                        // Wait for the next restart (or re-check shortly,
                        // in case the error was not a kill).
                        let guard = shared.target.lock().unwrap();
                        let _ = shared
                            .restarted
                            .wait_timeout_while(guard, Duration::from_millis(200), |t| {
                                t.0 == generation
                            })
                            .unwrap();
                    }
                }
            })
        })
        .collect();

    for round in 0..KILLS {
        // Kill after a random number of further acknowledgements.
        let target = shared.acked.lock().unwrap().len() + rng.range(5, 60) as usize;
        let guard = shared.acked.lock().unwrap();
        let (guard, timeout) = shared
            .more_acked
            .wait_timeout_while(guard, PATIENCE, |a| a.len() < target)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "round {round}: no progress; log:\n{}",
            gw.log()
        );
        drop(guard);
        let dir = gw.kill();
        gw = Gateway::start_in(dir, &config);
        let mut t = shared.target.lock().unwrap();
        *t = (t.0 + 1, gw.addr("in"));
        shared.restarted.notify_all();
    }
    // Let the last gateway take a few more, then stop everything.
    {
        let target = shared.acked.lock().unwrap().len() + 10;
        let guard = shared.acked.lock().unwrap();
        let _ = shared
            .more_acked
            .wait_timeout_while(guard, PATIENCE, |a| a.len() < target)
            .unwrap();
    }
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let dir = gw.kill();

    let stored: HashMap<String, Vec<u8>> = spooled(&dir.path().join("data"))
        .into_iter()
        .map(|(_, bytes)| {
            let text = String::from_utf8_lossy(&bytes);
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_string();
            (subject, bytes)
        })
        .collect();
    let acked = shared.acked.lock().unwrap();
    assert!(
        acked.len() > KILLS * 5,
        "too few messages to mean anything: {}",
        acked.len()
    );
    for (subject, body) in acked.iter() {
        let found = stored
            .get(subject)
            .unwrap_or_else(|| panic!("acknowledged message {subject} lost (seed {seed})"));
        assert!(
            found.ends_with(body),
            "message {subject} is not whole (seed {seed})"
        );
    }
    println!(
        "{} acknowledged messages, all found among {} stored",
        acked.len(),
        stored.len()
    );
}
