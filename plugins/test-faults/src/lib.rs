//! A plugin that misbehaves on request, for the gateway's sandbox tests:
//! at RCPT, `loop@...` spins forever, `alloc@...` grows memory past any
//! limit, `trap@...` panics (a trap); anything else gets `continue`.

use weir_plugin_sdk::{Connection, Envelope, Hook, Plugin, Verdict, export_plugin};

struct Faults;

impl Plugin for Faults {
    const HOOKS: &'static [Hook] = &[Hook::Rcpt];

    fn on_rcpt(_conn: Connection, _env: Envelope, recipient: String) -> Verdict {
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
            _ => Verdict::Continue,
        }
    }
}

export_plugin!(Faults);
