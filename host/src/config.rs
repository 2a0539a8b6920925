//! The gateway's configuration: one TOML file plus `WEIR_*` environment
//! overrides, read with figment, validated once at start.
//!
//! Distrusts: everything in the file. Unknown keys and bad values are errors
//! that name the key, the file and (where the key is in the file) the line.
//! With no file at all the embedded default runs a gateway that works on a
//! laptop: 127.0.0.1:2525, data under `./weir-data`, relaying only for
//! loopback clients.
//!
//! Every key is documented in `docs/config.md`; a unit test fails when one
//! is not.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name this gateway gives itself in banners, EHLO replies and Received
    /// headers. Defaults to the system's host name.
    pub hostname: String,
    /// Where the spool and other state live.
    pub data_dir: PathBuf,
    /// Log filter (tracing's `EnvFilter` syntax); `RUST_LOG` wins if set.
    pub log_level: String,
    /// Spool tuning.
    pub spool: SpoolConfig,
    /// Receive connectors.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Retry schedule and delivery concurrency.
    pub queue: QueueConfig,
    /// DNS resolution for delivery.
    pub dns: DnsConfig,
    /// Send connectors: where mail for each recipient domain goes.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Where plugins are and what happens when one fails.
    pub plugins: PluginsConfig,
    /// Email authentication of incoming mail (SPF, DKIM, DMARC, ARC).
    pub auth: AuthConfig,
    /// DKIM signing of outgoing mail.
    pub dkim: DkimConfig,
    /// Where the plugins' shared state lives (counters, throttles,
    /// greylisting): this process, or Redis for a cluster.
    pub state: StateConfig,
    /// Who may authenticate with SMTP AUTH.
    pub directory: DirectoryConfig,
}

/// The users of SMTP AUTH and their password hashes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// A file of `NAME:HASH` lines (`#` starts a comment).
    pub users_file: Option<PathBuf>,
    /// Users by name: `{ alice = "$argon2id$..." }`; these win over the
    /// file's.
    pub users: std::collections::BTreeMap<String, String>,
}

/// A SASL mechanism of SMTP AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SaslMechanism {
    /// RFC 4616: the user and password in one base64 string.
    Plain,
    /// The de facto LOGIN mechanism: user, then password, each asked for.
    Login,
}

/// The backend of the plugins' `state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `memory` (this process, the default) or `redis` (shared by every
    /// gateway pointed at the same Redis).
    pub backend: StateBackend,
    /// With `redis`: where it is, `redis://[:password@]host:port/db`.
    pub url: Option<String>,
    /// The most one operation may take; past it the plugin is told the
    /// backend is unavailable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Put before every key in Redis, so that several clusters can share
    /// one.
    pub prefix: String,
    /// With `memory`: the most keys kept. Past it the ones closest to
    /// expiring are dropped (and a warning logged), so that a flood of
    /// new clients or senders cannot grow the gateway without bound.
    /// About 200 octets a key: the default is some 200 MB at worst.
    pub max_entries: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Memory,
            url: None,
            timeout: Duration::from_millis(500),
            prefix: "weir:".into(),
            max_entries: 1_000_000,
        }
    }
}

/// Where the state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// This process's memory.
    Memory,
    /// A Redis server.
    Redis,
}

/// Email authentication of incoming mail.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The name results are reported under in Authentication-Results
    /// (RFC 8601 authserv-id); default: `hostname`.
    pub authserv_id: Option<String>,
}

/// DKIM signing (RFC 6376) of mail leaving through delivery.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimConfig {
    /// One entry per key: a domain may have several (RSA and Ed25519).
    pub sign: Vec<DkimSignConfig>,
}

/// One DKIM signing key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSignConfig {
    /// Messages whose From header is at this domain are signed (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at
    /// `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key, PEM: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    /// The algorithm follows the key. A relative path is taken from the
    /// working directory, like every path of the configuration.
    pub key: PathBuf,
    /// Header fields to sign; From is always signed and oversigned.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

/// The plugin directory, the failure policy and each plugin's grants and
/// limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directory of `NAME.wasm` components (and optional `NAME.toml`).
    pub dir: PathBuf,
    /// What a chain does when a plugin traps, overruns its deadline or
    /// breaks its limits (a chain entry may override it).
    pub on_error: OnError,
    /// Reload the plugins when a file in `dir` changes.
    pub watch: bool,
    /// How often the directory is looked at when `watch` is on.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Compiled components are kept here (default: `DATA_DIR/plugin-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Per plugin (by name): what it may use and its limits.
    pub settings: std::collections::BTreeMap<String, PluginSettings>,
    /// Write `/tmp/perf-PID.map`, so `perf` names the plugins' compiled
    /// functions (profiling only).
    pub perf_map: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("./plugins"),
            on_error: OnError::Tempfail,
            watch: true,
            watch_interval: Duration::from_secs(1),
            cache_dir: None,
            settings: Default::default(),
            perf_map: false,
        }
    }
}

impl PluginsConfig {
    /// The settings of plugin `name` (the defaults if it has none).
    pub fn settings_of(&self, name: &str) -> PluginSettings {
        self.settings.get(name).cloned().unwrap_or_default()
    }
}

/// A capability a plugin may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// DNS lookups through the gateway's resolver.
    Dns,
    /// Counters and values in the `state` store.
    State,
    /// Reading the message body (`raw`, `part-bytes`).
    Body,
    /// Changing the message or the envelope (mutations).
    Modify,
}

/// One plugin's grants and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Capabilities beyond log and config (none by default).
    pub grants: Vec<Grant>,
    /// Deadline of a call at connect, helo, mail-from and rcpt.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Deadline of a call at data, pre-delivery and delivery-result.
    #[serde(with = "humantime_serde")]
    pub data_deadline: Duration,
    /// Time one call may spend waiting in the gateway's imports (DNS,
    /// state, authentication checks) on top of its deadline.
    #[serde(with = "humantime_serde")]
    pub wait_limit: Duration,
    /// Memory one instance may use.
    pub memory_limit: ByteSize,
    /// Ready instances kept for reuse.
    pub instances: usize,
    /// Configuration merged over `NAME.toml` (key by key).
    pub config: toml::Table,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            grants: Vec::new(),
            deadline: Duration::from_millis(100),
            data_deadline: Duration::from_secs(1),
            wait_limit: Duration::from_secs(30),
            memory_limit: ByteSize::mib(64),
            instances: 16,
            config: toml::Table::new(),
        }
    }
}

/// The answer when a plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 451 4.3.0: the client retries later (nothing slips through).
    #[default]
    Tempfail,
    /// Skip the failed plugin and go on with the chain.
    Continue,
}

/// One plugin in a chain: its name, or a table with a configuration of its
/// own for this chain and an `on_error` of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChainEntry {
    /// `"name"`.
    Name(String),
    /// `{ plugin = "name", config = { ... }, on_error = "continue" }`.
    Table(ChainEntryTable),
}

/// The table form of a chain entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntryTable {
    /// The plugin's name (`NAME.wasm`).
    pub plugin: String,
    /// Configuration merged over the plugin's own, for this entry only.
    #[serde(default)]
    pub config: toml::Table,
    /// Overrides `plugins.on_error` for this entry.
    #[serde(default)]
    pub on_error: Option<OnError>,
}

impl ChainEntry {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        match self {
            ChainEntry::Name(n) => n,
            ChainEntry::Table(t) => &t.plugin,
        }
    }

    /// The entry's own configuration table, if any.
    pub fn config(&self) -> Option<&toml::Table> {
        match self {
            ChainEntry::Name(_) => None,
            ChainEntry::Table(t) => Some(&t.config).filter(|c| !c.is_empty()),
        }
    }

    /// The entry's failure policy, if it overrides the default.
    pub fn on_error(&self) -> Option<OnError> {
        match self {
            ChainEntry::Name(_) => None,
            ChainEntry::Table(t) => t.on_error,
        }
    }
}

impl From<&str> for ChainEntry {
    fn from(name: &str) -> Self {
        ChainEntry::Name(name.to_string())
    }
}

/// The chains of plugins a listener runs, per hook, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Chains {
    /// When a client connects, before the greeting.
    pub connect: Vec<ChainEntry>,
    /// At EHLO/HELO.
    pub helo: Vec<ChainEntry>,
    /// At MAIL FROM.
    pub mail_from: Vec<ChainEntry>,
    /// At each RCPT TO.
    pub rcpt: Vec<ChainEntry>,
    /// After the message, before the final reply.
    pub data: Vec<ChainEntry>,
    /// Before each delivery attempt of a message received here.
    pub pre_delivery: Vec<ChainEntry>,
    /// After each delivery attempt (notification only).
    pub delivery_result: Vec<ChainEntry>,
}

impl Chains {
    /// Every chain, in transaction order (the order of the contract's
    /// `hook` enum).
    pub fn all(&self) -> [&[ChainEntry]; 7] {
        [
            &self.connect,
            &self.helo,
            &self.mail_from,
            &self.rcpt,
            &self.data,
            &self.pre_delivery,
            &self.delivery_result,
        ]
    }
}

/// The queue manager: retries, expiry, concurrency, timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Deliver nothing: accepted messages wait in the spool (maintenance,
    /// or a gateway that only receives).
    pub paused: bool,
    /// Delay before the first retry; it doubles after each failure.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// A message still undelivered this long after arrival is bounced.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Send one "delayed" DSN when a message has waited this long (0: never).
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
    /// Outbound connections in total.
    pub max_concurrency: usize,
    /// Outbound connections to one destination (domain or smart host).
    pub max_per_destination: usize,
    /// How long an idle outbound connection is kept for the next message
    /// to the same destination.
    #[serde(with = "humantime_serde")]
    pub connection_cache_time: Duration,
    /// TCP connect timeout for outbound connections.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout for each reply from the next hop (RFC 5321 4.5.3.2).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Timeout for the reply to the end of the message data.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            paused: false,
            retry_initial: Duration::from_secs(5 * 60),
            retry_max: Duration::from_secs(4 * 3600),
            max_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Duration::ZERO,
            max_concurrency: 100,
            max_per_destination: 10,
            connection_cache_time: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
        }
    }
}

/// Name servers for delivery (MX, A, AAAA).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers as `ip:port`; empty means the system's (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// Timeout of one query.
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

/// How a route reaches the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// The recipient domain's MX hosts (A/AAAA if it has none).
    #[default]
    Mx,
    /// A list of relay hosts, tried in order.
    Smarthost,
    /// LMTP (RFC 2033) to a mailbox server, hosts tried in order.
    Lmtp,
}

/// TLS policy for outbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    /// Never use TLS.
    None,
    /// STARTTLS when offered, certificate not checked; plaintext otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS must succeed (certificate not checked); otherwise defer.
    Required,
    /// STARTTLS must succeed with a certificate valid for the host name.
    Verify,
}

/// One send connector: which recipient domains, and how to reach them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Name for logs.
    pub name: String,
    /// Recipient domains: `example.com`, `*.example.com` or `*`.
    pub domains: Vec<String>,
    /// How to reach the next hop.
    #[serde(rename = "type")]
    pub kind: RouteKind,
    /// `host:port` (or `host`) for smarthost and lmtp routes.
    pub hosts: Vec<String>,
    /// Port for MX delivery, and the default for `hosts` without one.
    pub port: Option<u16>,
    /// TLS policy.
    pub tls: OutboundTls,
    /// Extra trust anchors (PEM) for `tls = "verify"`, besides the Mozilla set.
    pub tls_ca_file: Option<PathBuf>,
    /// EHLO name; defaults to the global hostname.
    pub helo: Option<String>,
    /// Local address to send from (a dedicated IP).
    pub source_address: Option<IpAddr>,
    /// User name for AUTH PLAIN at a smart host (sent only over TLS).
    pub auth_username: Option<String>,
    /// Password for AUTH PLAIN.
    pub auth_password: Option<String>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: "default".into(),
            domains: vec!["*".into()],
            kind: RouteKind::Mx,
            hosts: Vec::new(),
            port: None,
            tls: OutboundTls::Opportunistic,
            tls_ca_file: None,
            helo: None,
            source_address: None,
            auth_username: None,
            auth_password: None,
        }
    }
}

/// The top-level keys of [`Config`], for filtering the environment.
const TOP_LEVEL_KEYS: &[&str] = &[
    "auth",
    "dkim",
    "hostname",
    "data_dir",
    "log_level",
    "spool",
    "listener",
    "queue",
    "dns",
    "route",
    "plugins",
    "state",
    "directory",
];

/// Spool tuning. The durability guarantee does not depend on these.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// A segment file is closed and a new one started past this size.
    pub segment_size: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            segment_size: ByteSize::mib(64),
        }
    }
}

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// No TLS; STARTTLS is not offered.
    #[default]
    Off,
    /// STARTTLS offered, not required (port 25).
    Starttls,
    /// STARTTLS offered and required before MAIL (port 587).
    Required,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
}

/// One receive connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Name used in logs, Received headers and the spool.
    pub name: String,
    /// Address and port to listen on (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Host name in this listener's banner; defaults to the global hostname.
    pub banner_hostname: Option<String>,
    /// Clients allowed to connect at all; others get 554 5.7.1.
    pub allowed_clients: Vec<IpNet>,
    /// Clients allowed to send to domains that are not local.
    pub relay_clients: Vec<IpNet>,
    /// Domains this gateway accepts mail for from anyone allowed to connect.
    pub local_domains: Vec<String>,
    /// TLS policy.
    pub tls: TlsMode,
    /// PEM certificate chain, needed unless `tls = "off"`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key, needed unless `tls = "off"`.
    pub tls_key: Option<PathBuf>,
    /// Largest message accepted (announced in EHLO SIZE).
    pub max_message_size: ByteSize,
    /// Most recipients in one transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Most simultaneous connections to this listener.
    pub max_connections: usize,
    /// Most simultaneous connections from one client address.
    pub max_connections_per_ip: usize,
    /// How long to wait for a command (RFC 5321 4.5.3.2.7: at least 5 min).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long to wait for each read of message data.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Error replies a client may provoke before it is disconnected.
    pub max_errors: usize,
    /// Wait this long before the greeting; a client that talks first is
    /// rejected (the early-talker check of Postfix's postscreen).
    #[serde(with = "humantime_serde")]
    pub greeting_delay: Duration,
    /// SASL mechanisms offered with AUTH (RFC 4954): `"PLAIN"`,
    /// `"LOGIN"`. Empty: no AUTH on this listener.
    pub auth_mechanisms: Vec<SaslMechanism>,
    /// Offer and accept AUTH only over TLS, so passwords never cross the
    /// network in clear (Postfix's `smtpd_tls_auth_only`).
    pub auth_require_tls: bool,
    /// Refuse MAIL FROM with 530 5.7.0 until the client has authenticated
    /// (a submission port, RFC 6409).
    pub require_auth: bool,
    /// Plugins run at each hook.
    pub chains: Chains,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "default".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 2525)),
            banner_hostname: None,
            allowed_clients: vec![
                "0.0.0.0/0".parse().expect("literal"),
                "::/0".parse().expect("literal"),
            ],
            relay_clients: vec![
                "127.0.0.0/8".parse().expect("literal"),
                "::1/128".parse().expect("literal"),
            ],
            local_domains: Vec::new(),
            tls: TlsMode::Off,
            tls_cert: None,
            tls_key: None,
            max_message_size: ByteSize::mib(25),
            max_recipients: 1000,
            max_connections: 1000,
            max_connections_per_ip: 50,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_errors: 20,
            greeting_delay: Duration::ZERO,
            auth_mechanisms: Vec::new(),
            auth_require_tls: true,
            require_auth: false,
            chains: Chains::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: default_hostname(),
            data_dir: PathBuf::from("./weir-data"),
            log_level: "info".into(),
            spool: SpoolConfig::default(),
            listeners: vec![ListenerConfig::default()],
            queue: QueueConfig::default(),
            dns: DnsConfig::default(),
            routes: vec![RouteConfig::default()],
            plugins: PluginsConfig::default(),
            auth: AuthConfig::default(),
            dkim: DkimConfig::default(),
            state: StateConfig::default(),
            directory: DirectoryConfig::default(),
        }
    }
}

fn default_hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl ListenerConfig {
    /// Whether a client at `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        contains(&self.allowed_clients, ip)
    }

    /// Whether a client at `ip` may relay to non-local domains.
    pub fn may_relay(&self, ip: IpAddr) -> bool {
        contains(&self.relay_clients, ip)
    }

    /// Whether `domain` is one we accept mail for (case-insensitive).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.local_domains
            .iter()
            .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    // An IPv4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named on the command line does not exist.
    #[error("config file {0} not found")]
    NotFound(PathBuf),
    /// A key is unknown or its value is wrong.
    #[error("{message}")]
    Invalid {
        /// What was wrong, with the key, file and line.
        message: String,
    },
}

impl ConfigError {
    fn invalid(message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads the embedded default, then `file` (if any), then `WEIR_*`
    /// environment variables (`__` separates nested keys:
    /// `WEIR_SPOOL__SEGMENT_SIZE`), and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let mut text = None;
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::NotFound(path.to_path_buf()));
            }
            text = std::fs::read_to_string(path).ok();
            figment = figment.merge(Toml::file_exact(path));
        }
        // The WEIR_ namespace is shared with scripts and wrappers
        // (WEIR_BIN, WEIR_CMD...): only variables that name one of our
        // top-level keys are configuration.
        let env = Env::prefixed("WEIR_")
            .filter(|key| {
                let top = key.as_str().split("__").next().unwrap_or("");
                TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
            })
            .split("__");
        figment = figment.merge(env);
        let config: Config = figment
            .extract()
            .map_err(|e| describe_figment_error(e, file, text.as_deref()))?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: Option<&Path>) -> Result<(), ConfigError> {
        let origin = file
            .map(|f| format!(" in {}", f.display()))
            .unwrap_or_default();
        if self.listeners.is_empty() {
            return Err(ConfigError::invalid(format!(
                "no [[listener]] configured{origin}"
            )));
        }
        if self.hostname.is_empty() {
            return Err(ConfigError::invalid(format!(
                "key `hostname`{origin}: must not be empty"
            )));
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("key `route.{i}.{k}`{origin}");
            if r.domains.is_empty() {
                return Err(ConfigError::invalid(format!(
                    "{}: must name at least one domain (or \"*\")",
                    key("domains")
                )));
            }
            if r.kind != RouteKind::Mx && r.hosts.is_empty() {
                return Err(ConfigError::invalid(format!(
                    "{}: a {:?} route needs at least one host",
                    key("hosts"),
                    r.kind
                )));
            }
            if r.auth_username.is_some() != r.auth_password.is_some() {
                return Err(ConfigError::invalid(format!(
                    "{}: auth_username and auth_password go together",
                    key("auth_username")
                )));
            }
        }
        if self.state.backend == StateBackend::Redis {
            match &self.state.url {
                None => {
                    return Err(ConfigError::invalid(format!(
                        "key `state.url`{origin}: state.backend = \"redis\" needs a url (redis://host:port/db)"
                    )));
                }
                Some(url) if redis::Client::open(url.as_str()).is_err() => {
                    return Err(ConfigError::invalid(format!(
                        "key `state.url`{origin}: {url:?} is not a Redis URL (redis://host:port/db)"
                    )));
                }
                Some(_) => {}
            }
        }
        if self.state.timeout.is_zero() {
            return Err(ConfigError::invalid(format!(
                "key `state.timeout`{origin}: must be longer than zero"
            )));
        }
        if self.queue.max_concurrency == 0 || self.queue.max_per_destination == 0 {
            return Err(ConfigError::invalid(format!(
                "key `queue.max_concurrency`{origin}: concurrency limits must be at least 1"
            )));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("key `listener.{i}.{k}`{origin}");
            if !names.insert(l.name.as_str()) {
                return Err(ConfigError::invalid(format!(
                    "{}: listener name {:?} is used twice",
                    key("name"),
                    l.name
                )));
            }
            if l.tls != TlsMode::Off && (l.tls_cert.is_none() || l.tls_key.is_none()) {
                return Err(ConfigError::invalid(format!(
                    "{}: tls = {:?} needs tls_cert and tls_key",
                    key("tls"),
                    l.tls
                )));
            }
            for (k, v) in [
                ("max_recipients", l.max_recipients),
                ("max_connections", l.max_connections),
                ("max_connections_per_ip", l.max_connections_per_ip),
                ("max_errors", l.max_errors),
            ] {
                if v == 0 {
                    return Err(ConfigError::invalid(format!(
                        "{}: must be at least 1",
                        key(k)
                    )));
                }
            }
            // The spool stores a record length in 32 bits.
            if l.max_message_size.as_u64() == 0 || l.max_message_size.as_u64() > u32::MAX as u64 / 2
            {
                return Err(ConfigError::invalid(format!(
                    "{}: must be between 1 byte and 2 GiB",
                    key("max_message_size")
                )));
            }
            if !l.auth_mechanisms.is_empty()
                && self.directory.users.is_empty()
                && self.directory.users_file.is_none()
            {
                return Err(ConfigError::invalid(format!(
                    "{}: AUTH needs users: set directory.users_file or directory.users",
                    key("auth_mechanisms")
                )));
            }
            if !l.auth_mechanisms.is_empty() && l.auth_require_tls && l.tls == TlsMode::Off {
                return Err(ConfigError::invalid(format!(
                    "{}: AUTH is offered only over TLS (auth_require_tls) and this listener has tls = \"off\"",
                    key("auth_mechanisms")
                )));
            }
            if l.require_auth && l.auth_mechanisms.is_empty() {
                return Err(ConfigError::invalid(format!(
                    "{}: require_auth needs auth_mechanisms",
                    key("require_auth")
                )));
            }
            if l.command_timeout.is_zero() || l.data_timeout.is_zero() {
                return Err(ConfigError::invalid(format!(
                    "{}: timeouts must be longer than zero",
                    key("command_timeout")
                )));
            }
        }
        Ok(())
    }

    /// The authserv-id of Authentication-Results: `auth.authserv_id`,
    /// else the host name, lower case.
    pub fn authserv_id(&self) -> String {
        self.auth
            .authserv_id
            .clone()
            .unwrap_or_else(|| self.hostname.clone())
            .to_ascii_lowercase()
    }

    /// The effective configuration as TOML, for `weir check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}

/// Turns figment's error into one that names the key, the file and the line.
fn describe_figment_error(
    err: figment::Error,
    file: Option<&Path>,
    text: Option<&str>,
) -> ConfigError {
    use figment::error::Kind;
    let mut messages = Vec::new();
    for e in err {
        // figment's path already ends with an unknown field's name.
        let path = e.path.clone();
        let key = path.join(".");
        let from_file = e.metadata.as_ref().is_some_and(|m| m.name.contains("TOML"));
        let from_env = e.metadata.as_ref().is_some_and(|m| m.name.contains("env"));
        let place = match (from_file, file, text) {
            (true, Some(f), Some(t)) => match line_of_key(t, &path) {
                Some(line) => format!(" in {}, line {line}", f.display()),
                None => format!(" in {}", f.display()),
            },
            _ if from_env => " (from the environment)".to_string(),
            _ => String::new(),
        };
        let what = match &e.kind {
            Kind::UnknownField(field, expected) => {
                format!(
                    "unknown key `{field}`; expected one of: {}",
                    expected.join(", ")
                )
            }
            kind => kind.to_string(),
        };
        messages.push(format!("key `{key}`{place}: {what}"));
    }
    ConfigError::invalid(messages.join("\n"))
}

/// Finds the 1-based line of a dotted key path (`listener.0.bind`) in TOML
/// text, so an error can point at it.
fn line_of_key(text: &str, path: &[String]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    let mut parts = path.iter().peekable();
    while let Some(part) = parts.next() {
        let (key, value) = table.get_key_value(part)?;
        span = key.span().or(span);
        // `[[listener]]` arrays are addressed by index: `listener.0`.
        let value = match (value, parts.peek().and_then(|p| p.parse::<usize>().ok())) {
            (toml_edit::Item::ArrayOfTables(array), Some(index)) => {
                parts.next();
                let t = array.get(index)?;
                span = t.span().or(span);
                table = t;
                continue;
            }
            (value, _) => value,
        };
        match value.as_table_like() {
            Some(t) => table = t,
            None => break,
        }
    }
    let offset = span?.start;
    Some(text[..offset].bytes().filter(|&b| b == b'\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the config accepts, dotted (`listener.bind`).
    fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if v.is_table()
                        || v.as_array()
                            .is_some_and(|a| a.iter().all(|e| e.is_table()) && !a.is_empty())
                    {
                        keys(v, &key, out);
                    } else {
                        out.push(key);
                    }
                }
            }
            toml::Value::Array(a) => {
                for v in a {
                    keys(v, prefix, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_config_key_is_documented() {
        let mut config = Config::default();
        // Options are only serialised when set.
        let l = &mut config.listeners[0];
        l.banner_hostname = Some("x".into());
        l.tls_cert = Some("c".into());
        l.tls_key = Some("k".into());
        config
            .plugins
            .settings
            .insert("p".into(), PluginSettings::default());
        config.plugins.cache_dir = Some("c".into());
        config.auth.authserv_id = Some("mx".into());
        config.state.url = Some("redis://127.0.0.1/".into());
        config.directory.users_file = Some("u".into());
        config.directory.users.insert("alice".into(), "h".into());
        config.dkim.sign.push(DkimSignConfig {
            domain: "d".into(),
            selector: "s".into(),
            key: "k".into(),
            headers: Some(vec!["From".into()]),
        });
        let value = toml::Value::try_from(&config).unwrap();
        let mut all = Vec::new();
        keys(&value, "", &mut all);
        all.sort();
        all.dedup();
        let docs = include_str!("../../docs/config.md");
        let all: Vec<String> = all
            .into_iter()
            .map(|k| {
                k.replace("plugins.settings.p.", "plugins.settings.NAME.")
                    .replace("directory.users.alice", "directory.users.NAME")
            })
            .collect();
        let missing: Vec<_> = all
            .iter()
            .filter(|k| !docs.contains(&format!("`{k}`")))
            .collect();
        assert!(all.len() > 15, "{all:?}");
        assert!(missing.is_empty(), "undocumented config keys: {missing:?}");
    }

    #[test]
    fn the_embedded_default_relays_only_for_loopback() {
        let l = &Config::default().listeners[0];
        assert_eq!(l.bind, "127.0.0.1:2525".parse().unwrap());
        assert!(l.may_relay("127.0.0.1".parse().unwrap()));
        assert!(l.may_relay("::1".parse().unwrap()));
        assert!(l.may_relay("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!l.may_relay("192.0.2.1".parse().unwrap()));
        assert!(!l.may_relay("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn line_numbers_of_nested_keys() {
        let text = "a = 1\n[spool]\nsegment_size = 5\n\n[[listener]]\nname = \"x\"\n[[listener]]\nname = \"y\"\nbind = 3\n";
        let path = |p: &str| p.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(line_of_key(text, &path("a")), Some(1));
        assert_eq!(line_of_key(text, &path("spool.segment_size")), Some(3));
        assert_eq!(line_of_key(text, &path("listener.1.bind")), Some(9));
        assert_eq!(line_of_key(text, &path("listener.0.name")), Some(6));
    }
}
