//! SIGTERM: stop accepting, let a message in flight finish, tell idle
//! sessions 421 4.3.0, exit cleanly; everything acknowledged is on disk.

use crate::harness::{Client, Gateway, listener};

#[test]
fn sigterm_lets_the_message_in_flight_finish_then_says_421() {
    let mut gw = Gateway::start(&listener("in", ""));
    let mut busy = Client::connect(gw.addr("in"));
    let mut idle = Client::connect(gw.addr("in"));
    idle.expect("EHLO idle.test", 250);
    busy.expect("EHLO busy.test", 250);
    busy.expect("MAIL FROM:<a@example.org>", 250);
    busy.expect("RCPT TO:<b@example.net>", 250);
    busy.expect("DATA", 354);
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n");

    let waiter = std::thread::spawn(move || {
        let status = gw.terminate();
        (gw, status)
    });
    // The idle session is told the gateway is stopping.
    let r = idle.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.3.0"), "{r:?}");
    idle.expect_closed();

    // The session inside DATA may finish its message.
    busy.send(b"second half\r\n.\r\n");
    let r = busy.read_reply();
    assert_eq!(r.code, 250, "{r:?}");
    let r = busy.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.3.0"), "{r:?}");
    busy.expect_closed();

    let (gw, status) = waiter.join().unwrap();
    assert!(status.success(), "{status:?}");
    let spooled = gw.spooled();
    assert_eq!(spooled.len(), 1);
    assert!(spooled[0].1.ends_with(b"first half\r\nsecond half\r\n"));
}
