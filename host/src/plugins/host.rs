//! The host side of the contract: what plugins may call. Logging and their
//! own configuration work; DNS and state answer `denied` until they are
//! granted per plugin (still to come); the message resource exists for the
//! data hooks, which are not wired yet.

use wasmtime::component::Resource;

use super::HostState;

/// Bindings generated from `wit/plugin.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        with: {
            "weir:plugin/message.message": super::MessageData,
        },
    });
}

use bindings::weir::plugin::{auth_results, config, dns, log, message, state, types};

/// The message behind a `message` resource (data hooks; not wired yet).
pub struct MessageData {
    raw: Vec<u8>,
}

impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self) -> String {
        self.config.to_string()
    }
}

impl dns::Host for HostState {
    fn lookup_a(&mut self, _name: String) -> Result<Vec<String>, dns::DnsError> {
        Err(dns::DnsError::Denied)
    }
    fn lookup_aaaa(&mut self, _name: String) -> Result<Vec<String>, dns::DnsError> {
        Err(dns::DnsError::Denied)
    }
    fn lookup_mx(&mut self, _domain: String) -> Result<Vec<dns::Mx>, dns::DnsError> {
        Err(dns::DnsError::Denied)
    }
    fn lookup_txt(&mut self, _name: String) -> Result<Vec<String>, dns::DnsError> {
        Err(dns::DnsError::Denied)
    }
    fn lookup_ptr(&mut self, _ip: String) -> Result<Vec<String>, dns::DnsError> {
        Err(dns::DnsError::Denied)
    }
}

impl state::Host for HostState {
    fn incr(&mut self, _key: String, _by: u64, _window: u32) -> Result<u64, state::StateError> {
        Err(state::StateError::Denied)
    }
    fn get(&mut self, _key: String) -> Result<Option<Vec<u8>>, state::StateError> {
        Err(state::StateError::Denied)
    }
    fn set(&mut self, _key: String, _value: Vec<u8>, _ttl: u32) -> Result<(), state::StateError> {
        Err(state::StateError::Denied)
    }
    fn set_if_absent(
        &mut self,
        _key: String,
        _value: Vec<u8>,
        _ttl: u32,
    ) -> Result<bool, state::StateError> {
        Err(state::StateError::Denied)
    }
}

impl auth_results::Host for HostState {
    fn results(&mut self) -> Vec<auth_results::AuthResult> {
        Vec::new()
    }
}

impl message::Host for HostState {}

impl message::HostMessage for HostState {
    fn raw_size(&mut self, msg: Resource<MessageData>) -> u64 {
        self.table
            .get(&msg)
            .map(|m| m.raw.len() as u64)
            .unwrap_or(0)
    }
    fn headers(&mut self, _msg: Resource<MessageData>) -> Vec<types::Header> {
        Vec::new()
    }
    fn header(&mut self, _msg: Resource<MessageData>, _name: String) -> Vec<String> {
        Vec::new()
    }
    fn parts(&mut self, _msg: Resource<MessageData>) -> Vec<types::PartInfo> {
        Vec::new()
    }
    fn part_bytes(&mut self, _msg: Resource<MessageData>, _id: u32) -> Result<Vec<u8>, String> {
        Err("not available yet".into())
    }
    fn raw(&mut self, _msg: Resource<MessageData>) -> Result<Vec<u8>, String> {
        Err("not available yet".into())
    }
    fn drop(&mut self, msg: Resource<MessageData>) -> wasmtime::Result<()> {
        self.table.delete(msg)?;
        Ok(())
    }
}
