//! Randomized robustness test of the session (the fuzz target of STYLE.md,
//! run as an ordinary test: cargo-fuzz needs a nightly toolchain). Input is
//! biased to SMTP's alphabet (half the cases open a valid transaction
//! first) so it reaches deep into the grammar. The client runs in lockstep
//! like a real one (a command line, then its reply; content without
//! waiting), with lines now and then cut at random points. The session must
//! never panic or hang, and every reply line must be well formed.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ListenerContext, Session};
use crate::config::ListenerConfig;
use crate::queue::{QueueHandle, Spool};

/// A seeded generator, so a failure can be replayed from its seed.
struct Rng(StdRng);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0.random()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

const PIECES: &[&[u8]] = &[
    b"EHLO client.test\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"MAIL FROM:<>",
    b" SIZE=100",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b" RET=HDRS",
    b" ENVID=x+2By",
    b"RCPT TO:<c@d.test>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b" NOTIFY=SUCCESS,DELAY",
    b" ORCPT=rfc822;x@y",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 3 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".\r\n",
    b"..",
    b".",
    b"\0",
    b"<",
    b">",
    b":",
    b"@",
    b" ",
    b"\xff\xfe",
    b"j\xc3\xb6rg",
    b"Subject: x\r\n",
    b"hello world",
];

fn input(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    // Half the cases open a valid transaction first, to get deep.
    if rng.below(2) == 0 {
        out.extend_from_slice(
            b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n",
        );
        if rng.below(2) == 0 {
            out.extend_from_slice(b"DATA\r\n");
        }
    }
    for _ in 0..rng.below(60) {
        match rng.below(10) {
            0 => out.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
            1 => out.extend(std::iter::repeat_n(b'x', rng.below(1500))),
            _ => out.extend_from_slice(PIECES[rng.below(PIECES.len())]),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_input_never_breaks_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let config = ListenerConfig {
        command_timeout: Duration::from_millis(200),
        data_timeout: Duration::from_millis(200),
        max_message_size: bytesize::ByteSize::kib(4),
        max_errors: 1000,
        ..Default::default()
    };
    let ctx = Arc::new(ListenerContext {
        config,
        hostname: "mx.test".into(),
        spool,
        queue: QueueHandle::detached(),
        plugins: None,
        auth: None,
        directory: None,
        quarantine: crate::queue::quarantine::Quarantine::new(dir.path()),
        local_domains: std::sync::Arc::from([]),
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng(StdRng::seed_from_u64(seed));
    let (mut total_replies, mut reached_data) = (0, 0);
    for case in 0..200 {
        let bytes = input(&mut rng);
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_trigger, shutdown) = crate::shutdown::channel();
        let peer = "127.0.0.1:4000".parse().unwrap();
        let session = tokio::spawn(
            Session::new(server, ctx.clone(), peer, None, shutdown).run_with_greeting(),
        );
        // Like a client: a line (or a random piece) at a time, reading
        // what comes back in between, so the session gets past EHLO into
        // MAIL, RCPT, DATA and BDAT instead of stopping at the first
        // pipelining violation.
        let mut turns = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = match rest.windows(2).position(|w| w == b"\r\n") {
                Some(i) if rng.below(16) != 0 => i + 2,
                _ => 1 + rng.below(rest.len().min(64)),
            };
            turns.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        let (mut read, mut write) = tokio::io::split(client);
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        // Lockstep, as a real client: after a whole command line, wait for
        // its complete reply; inside message content and after BDAT (whose
        // reply follows the chunk), do not wait.
        let mut in_content = false;
        // The greeting comes first (or the refusal of an early talker).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !replies.windows(2).any(|w| w == b"\r\n") {
            match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => replies.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        for turn in turns {
            if write.write_all(&turn).await.is_err() {
                break;
            }
            let ends_content = in_content && (turn == b".\r\n" || turn.ends_with(b"\r\n.\r\n"));
            let is_command = !in_content && turn.ends_with(b"\r\n") && !turn.starts_with(b"BDAT");
            if ends_content {
                in_content = false;
            }
            if !(is_command || ends_content) {
                continue;
            }
            let seen = replies.len();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            loop {
                let complete = replies[seen..]
                    .split(|&b| b == b'\n')
                    .any(|l| l.len() >= 4 && l[3] == b' ');
                if complete {
                    break;
                }
                match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => replies.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            if replies[seen..].windows(4).any(|w| w == b"354 ") {
                in_content = true;
            }
        }
        let _ = write.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut replies)).await;
        drop(read);
        total_replies += replies
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"250"))
            .count();
        if replies.windows(4).any(|w| w == b"354 ") {
            reached_data += 1;
        }
        let finished = tokio::time::timeout(Duration::from_secs(10), session).await;
        assert!(
            matches!(finished, Ok(Ok(_))),
            "seed {seed} case {case}: the session panicked or hung on {:?}",
            String::from_utf8_lossy(&bytes)
        );
        let text = String::from_utf8(replies.clone()).expect("replies are UTF-8");
        for line in text.split_terminator("\r\n") {
            let ok = line.len() >= 4
                && line.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && matches!(line.as_bytes()[3], b' ' | b'-');
            assert!(ok, "seed {seed} case {case}: malformed reply line {line:?}");
        }
    }
    println!("seed {seed}: {total_replies} positive replies, DATA reached in {reached_data} cases");
    // Not vacuous: the sessions got deep into transactions (typical: 1,200+
    // positive replies and about 50 DATA phases; the client runs in lockstep,
    // so load does not change this much).
    assert!(
        total_replies > 500,
        "seed {seed}: only {total_replies} positive replies"
    );
    assert!(
        reached_data >= 20,
        "seed {seed}: DATA reached in {reached_data} cases only"
    );
}
