//! A plugin that misbehaves on request, for the gateway's sandbox tests:
//! at RCPT, `loop@...` spins forever, `alloc@...` grows memory past any
//! limit, `trap@...` panics (a trap), `lookups@...` looks up
//! `slow.test` in a loop forever (denied without the `dns` grant, so
//! answered at once; with it, each lookup waits on the DNS server);
//! anything else gets `continue`.

use weir_plugin_sdk::{Hook, Plugin, Verdict, dns, export_plugin};

struct Faults;

impl Plugin for Faults {
    const HOOKS: &'static [Hook] = &[Hook::Rcpt];

    fn on_rcpt(recipient: String) -> Verdict {
        match recipient.split('@').next().unwrap_or("") {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("asked to trap"),
            "lookups" => loop {
                std::hint::black_box(dns::lookup_a("slow.test").ok());
            },
            _ => Verdict::Continue,
        }
    }
}

export_plugin!(Faults);
