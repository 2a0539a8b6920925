//! A plugin that implements every hook and has no opinion at any: the
//! cost of the plugin machinery itself (benchmarks), and the smallest
//! template to start from.

use weir_plugin_sdk::{Hook, Plugin, export_plugin};

struct Noop;

impl Plugin for Noop {
    const HOOKS: &'static [Hook] = &[
        Hook::Connect,
        Hook::Helo,
        Hook::MailFrom,
        Hook::Rcpt,
        Hook::Data,
        Hook::PreDelivery,
        Hook::DeliveryResult,
    ];
}

export_plugin!(Noop);
