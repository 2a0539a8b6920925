//! A plugin for the gateway's tests of the contract:
//! - at RCPT, refuses `recipients@...` with 550 5.1.1 naming the
//!   recipients accepted before it, and spins forever for `spin@...`;
//! - at DATA, adds `X-Echo-Data` with everything `transaction` tells;
//! - before delivery, adds `X-Echo-Delivery` with the same, as delivery
//!   tells it, and the destination; quarantines mail for `hold@...`.

use weir_plugin_sdk::{Decision, Hook, Message, Mutation, Plugin, Reply, Verdict};
use weir_plugin_sdk::{export_plugin, transaction as t};

struct Echo;

/// Everything the transaction interface answers, on one line.
fn described() -> String {
    let tls = t::tls().map_or("none".to_string(), |i| i.version);
    let rcpts = t::recipients();
    let local: Vec<String> = rcpts
        .iter()
        .map(|r| t::is_local_domain(r.rsplit('@').next().unwrap_or("")).to_string())
        .collect();
    let queue = if t::queue_id().is_some() {
        "set"
    } else {
        "none"
    };
    format!(
        "ip={} port={} listener={} helo={} tls={tls} user={} queue={queue} sender=<{}> rcpts={} local={} tags={} score={:.1}",
        t::client_ip(),
        if t::client_port() > 0 { "set" } else { "0" },
        t::listener(),
        t::helo().unwrap_or_default(),
        t::authenticated_user().unwrap_or_else(|| "none".into()),
        t::sender().unwrap_or_default(),
        rcpts.join(","),
        local.join(","),
        t::tags().join(","),
        t::score(),
    )
}

impl Plugin for Echo {
    const HOOKS: &'static [Hook] = &[Hook::Rcpt, Hook::Data, Hook::PreDelivery];

    fn on_rcpt(recipient: String) -> Verdict {
        match recipient.split('@').next().unwrap_or("") {
            "recipients" => Reply::reject(
                550,
                "5.1.1",
                &format!("before me: {}", t::recipients().join(",")),
            ),
            "spin" => loop {
                std::hint::black_box(());
            },
            _ => Verdict::Continue,
        }
    }

    fn on_data(_msg: &Message) -> Decision {
        Decision::changes(vec![Mutation::add_header("X-Echo-Data", &described())])
    }

    fn on_pre_delivery(destination: String, _msg: &Message) -> Decision {
        if t::recipients().iter().any(|r| r.starts_with("hold@")) {
            return Decision::from(Verdict::Quarantine("held before delivery".into()));
        }
        let value = format!("{} destination={destination}", described());
        Decision::changes(vec![Mutation::add_header("X-Echo-Delivery", &value)])
    }
}

export_plugin!(Echo);
