//! What parsing costs per command and per message: the command rule
//! lookup and smtp-proto's parser as a session runs them on each line, a
//! whole transaction's commands, and DATA's dot-unstuffing of a 4 KiB and a
//! 100 KiB message (every line dot-stuffed: the worst case).
//!
//! Run: `cargo bench -p weir --bench smtp_parser`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smtp_proto::Request;
use weir::smtp::command;
use weir::smtp::data::DotReader;

/// One line as the session parses it: its rule, then the request.
fn parse(line: &[u8]) -> usize {
    let rule = command::rule_for(line);
    assert!(line.len() <= rule.max_line);
    let request = Request::parse(&mut line.iter()).expect("a valid command");
    std::hint::black_box(request.into_owned());
    rule.max_line
}

const TRANSACTION: &[&[u8]] = &[
    b"EHLO client.example.org\r\n",
    b"MAIL FROM:<sender@example.org> SIZE=4096 BODY=8BITMIME\r\n",
    b"RCPT TO:<rcpt@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;rcpt@example.net\r\n",
    b"DATA\r\n",
    b"QUIT\r\n",
];

fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: <sender@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: a bench message\r\n\r\n"
            .to_vec();
    let line = b"..a line that starts with a dot, stuffed, and then some text to fill it\r\n";
    while m.len() + line.len() < size {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("command");
    for line in TRANSACTION {
        let verb = String::from_utf8_lossy(&line[..4]).to_string();
        g.bench_with_input(BenchmarkId::from_parameter(verb), line, |b, line| {
            b.iter(|| parse(std::hint::black_box(line)))
        });
    }
    g.bench_function("transaction", |b| {
        b.iter(|| {
            TRANSACTION
                .iter()
                .map(|l| parse(std::hint::black_box(l)))
                .sum::<usize>()
        })
    });
    g.finish();
}

fn data(c: &mut Criterion) {
    let mut g = c.benchmark_group("data");
    for size in [4 * 1024, 100 * 1024] {
        let input = message(size);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &input, |b, input| {
            let mut out = Vec::with_capacity(input.len());
            b.iter(|| {
                out.clear();
                let mut reader = DotReader::new(usize::MAX);
                let fed = reader.feed(std::hint::black_box(input), &mut out);
                assert!(fed.done);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commands, data);
criterion_main!(benches);
