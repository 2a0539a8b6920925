//! `weir plugins ls|reload` (what the configuration loads; telling the
//! running gateway to reload) and `weir plugin test` (one plugin against a
//! sample transaction, without a server: the plugin author's inner loop).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::config::{ChainEntry, Config, Grant, ListenerConfig, PluginSettings, PluginsConfig};
use crate::plugins::{
    Context, Decision, Generation, Hook, HookArgs, MessageView, Mutation, Runtime, Services,
    Verdict,
};

#[derive(Subcommand)]
pub(super) enum PluginsCommand {
    /// Load the plugins the configuration names (as the gateway would) and
    /// show each one's hooks, grants and limits, and every chain in order.
    Ls {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Tell the running gateway to reload its plugins and chains (SIGHUP to
    /// the process in the data directory's `weir.pid`).
    Reload {
        /// Configuration file (TOML), for the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

impl PluginsCommand {
    pub(super) fn config_file(&self) -> &Option<PathBuf> {
        match self {
            PluginsCommand::Ls { config } | PluginsCommand::Reload { config } => config,
        }
    }
}

#[derive(Subcommand)]
pub(super) enum PluginCommand {
    /// Run one plugin at one hook against a sample transaction and print
    /// its verdict and changes.
    Test(Box<TestArgs>),
}

#[derive(Args)]
pub(super) struct TestArgs {
    /// The component (`NAME.wasm`); `NAME.toml` beside it is its
    /// configuration unless --config is given.
    file: PathBuf,
    /// The hook: connect, helo, mail-from, rcpt, data, pre-delivery or
    /// delivery-result.
    #[arg(long)]
    hook: String,
    /// The message, for data and pre-delivery (a sample one otherwise).
    #[arg(long)]
    eml: Option<PathBuf>,
    /// The envelope sender.
    #[arg(long, default_value = "sender@example.org")]
    from: String,
    /// A recipient (repeatable); at rcpt, the last one is the recipient
    /// being added.
    #[arg(long)]
    rcpt: Vec<String>,
    /// The client's address.
    #[arg(long, default_value = "192.0.2.10")]
    ip: String,
    /// The EHLO name.
    #[arg(long, default_value = "client.example.org")]
    helo: String,
    /// The destination at pre-delivery (default: the first recipient's
    /// domain).
    #[arg(long)]
    destination: Option<String>,
    /// The plugin's configuration (TOML file), instead of `NAME.toml`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Grants (repeatable: dns, state, body, modify). Default: all of them.
    #[arg(long)]
    grant: Vec<String>,
    /// Print the message as the changes leave it (data, pre-delivery).
    #[arg(long)]
    show_message: bool,
    /// Call the hook this many times more on a ready instance and print
    /// the median and 99th percentile of a call (what the plugin costs the
    /// gateway per call once its pool is warm; the message is parsed once,
    /// during the first call, as the gateway parses it once per chain).
    #[arg(long, default_value_t = 0)]
    repeat: u32,
    /// Where compiled components are kept, so that only the first test of
    /// a component compiles it (seconds for Python or JavaScript).
    /// Default: `$XDG_CACHE_HOME/weir/plugins` or `~/.cache/weir/plugins`.
    #[arg(long, conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// Compile the component every time.
    #[arg(long)]
    no_cache: bool,
}

/// The per-user cache of compiled components for `weir plugin test`.
/// (A relative `XDG_CACHE_HOME` is ignored, as the XDG spec says; with
/// no usable `HOME` either, nothing is cached.)
fn user_cache_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })?;
    Some(base.join("weir").join("plugins"))
}

pub(super) fn plugins(config: &Config, command: PluginsCommand) -> anyhow::Result<()> {
    match command {
        PluginsCommand::Ls { .. } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let generation = runtime.block_on(async {
                let plugins = Runtime::new(
                    &config.plugins,
                    services(Some(&config.dns), config.authserv_id()),
                    Some(crate::server::cache_dir(config)),
                )?;
                anyhow::Ok(plugins.load(&config.plugins, &config.listeners).await?)
            })?;
            print_plugins(&generation);
            Ok(())
        }
        PluginsCommand::Reload { .. } => {
            let pid = crate::server::signal_gateway(&config.data_dir, libc::SIGHUP)?.ok_or_else(
                || {
                    anyhow::anyhow!(
                        "no gateway runs on {} (no {})",
                        config.data_dir.display(),
                        crate::server::PID_FILE
                    )
                },
            )?;
            println!("reload requested (process {pid}); the gateway's log says how it went");
            Ok(())
        }
    }
}

fn services(dns: Option<&crate::config::DnsConfig>, authserv_id: String) -> Services {
    Services {
        resolver: dns.and_then(|d| crate::delivery::dns::resolver(d).ok()),
        state: Default::default(),
        authserv_id,
    }
}

fn print_plugins(generation: &Generation) {
    if generation.plugins.is_empty() {
        println!("no plugins (no listener has a chain)");
        return;
    }
    println!("plugins:");
    for (key, p) in &generation.plugins {
        let hooks: Vec<&str> = p
            .hooks
            .iter()
            .map(|h| crate::plugins::hook_name(*h))
            .collect();
        let grants: Vec<String> = p
            .settings
            .grants
            .iter()
            .map(|g| format!("{g:?}").to_lowercase())
            .collect();
        println!(
            "  {key}  sha256:{}  hooks: {}  grants: {}  deadline: {:?}/{:?}  memory: {}  instances: {}",
            &p.digest[..12],
            hooks.join(","),
            if grants.is_empty() {
                "none".to_string()
            } else {
                grants.join(",")
            },
            p.settings.deadline,
            p.settings.data_deadline,
            p.settings.memory_limit,
            p.settings.instances,
        );
    }
    println!("chains:");
    for (listener, hook, keys) in generation.describe_chains() {
        println!("  {listener} {hook}: {}", keys.join(" -> "));
    }
}

/// `weir plugin test`: exit 0 when the plugin answered, 1 when it could
/// not be loaded or failed, 64 on bad arguments.
pub(super) fn plugin(command: PluginCommand) -> ExitCode {
    let PluginCommand::Test(args) = command;
    super::init_logging("warn");
    match test(*args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir plugin test: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_hook(s: &str) -> Option<Hook> {
    Some(match s.replace('_', "-").as_str() {
        "connect" => Hook::Connect,
        "helo" | "ehlo" => Hook::Helo,
        "mail-from" | "mail" => Hook::MailFrom,
        "rcpt" => Hook::Rcpt,
        "data" => Hook::Data,
        "pre-delivery" => Hook::PreDelivery,
        "delivery-result" => Hook::DeliveryResult,
        _ => return None,
    })
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let Some(hook) = parse_hook(&args.hook) else {
        eprintln!(
            "weir plugin test: unknown hook {:?}; one of connect, helo, mail-from, rcpt, data, pre-delivery, delivery-result",
            args.hook
        );
        return Ok(ExitCode::from(64));
    };
    let name = args
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|_| args.file.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| anyhow::anyhow!("{} is not a NAME.wasm file", args.file.display()))?
        .to_string();
    let dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let grants = if args.grant.is_empty() {
        vec![Grant::Dns, Grant::State, Grant::Body, Grant::Modify]
    } else {
        args.grant
            .iter()
            .map(|g| match g.as_str() {
                "dns" => Ok(Grant::Dns),
                "state" => Ok(Grant::State),
                "body" => Ok(Grant::Body),
                "modify" => Ok(Grant::Modify),
                other => Err(anyhow::anyhow!("unknown grant {other:?}")),
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut settings = PluginSettings {
        grants,
        ..Default::default()
    };
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        settings.config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not TOML: {e}", path.display()))?;
    }
    let mut plugins_config = PluginsConfig {
        dir,
        ..Default::default()
    };
    plugins_config.settings.insert(name.clone(), settings);
    let mut listener = ListenerConfig {
        name: "test".into(),
        ..Default::default()
    };
    listener.chains.rcpt = vec![ChainEntry::Name(name.clone())];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cache = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(user_cache_dir)
    };
    let size = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    runtime.block_on(async move {
        let started = std::time::Instant::now();
        let plugins = Runtime::new(
            &plugins_config,
            services(Some(&Default::default()), "weir.test".into()),
            cache,
        )?;
        let generation = plugins.load(&plugins_config, &[listener]).await?;
        let plugin = generation.plugins.get(&name).expect("loaded above").clone();
        println!(
            "plugin: {name} (sha256:{}, {}), loaded in {:?} ({})",
            &plugin.digest[..12],
            bytesize::ByteSize::b(size),
            started.elapsed(),
            if plugin.cached {
                "compiled form from the cache"
            } else {
                "compiled"
            }
        );
        let hooks: Vec<&str> = plugin
            .hooks
            .iter()
            .map(|h| crate::plugins::hook_name(*h))
            .collect();
        println!("hooks: {}", hooks.join(", "));
        if !plugin.hooks.contains(&hook) {
            println!(
                "the plugin does not implement {}: the gateway would not call it",
                crate::plugins::hook_name(hook)
            );
            return Ok(ExitCode::from(2));
        }
        let sample = sample(&args, hook)?;
        let (context, hook_args, view) = (&sample.context, sample.args(hook), &sample.message);
        match plugin.time_new_instance().await {
            Ok(took) => println!("new instance: {took:?} (instantiation and init)"),
            Err(e) => {
                println!("failed: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
        let started = std::time::Instant::now();
        let decision = match plugin.call(context, &hook_args).await {
            Ok(d) => d,
            Err(e) => {
                println!("failed: {e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        println!("time: {:?} (first call)", started.elapsed());
        print_decision(&decision);
        if args.repeat > 0 {
            let mut times = Vec::with_capacity(args.repeat as usize);
            for _ in 0..args.repeat {
                let started = std::time::Instant::now();
                if let Err(e) = plugin.call(context, &hook_args).await {
                    println!("failed on a repeated call: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                times.push(started.elapsed());
            }
            times.sort();
            let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            println!(
                "repeat: {} calls on a ready instance: median {:?}, p99 {:?}",
                times.len(),
                at(0.5),
                at(0.99)
            );
        }
        if args.show_message
            && let Some(view) = view
        {
            let edited = crate::plugins::message::apply(view, &decision.mutations)
                .map_err(|e| anyhow::anyhow!("the changes cannot be applied: {e}"))?;
            let bytes = edited.message.unwrap_or_else(|| view.raw().to_vec());
            println!("message:");
            print!("{}", String::from_utf8_lossy(&bytes));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The sample transaction the flags describe.
struct Sample {
    context: Arc<Context>,
    /// The argument of helo, mail-from and rcpt.
    word: String,
    destination: String,
    message: Option<Arc<MessageView>>,
    outcomes: Vec<crate::plugins::DeliveryOutcome>,
}

impl Sample {
    fn args(&self, hook: Hook) -> HookArgs<'_> {
        let message = || self.message.clone().expect("made for this hook");
        match hook {
            Hook::Connect => HookArgs::Connect,
            Hook::Helo => HookArgs::Helo(&self.word),
            Hook::MailFrom => HookArgs::MailFrom(&self.word),
            Hook::Rcpt => HookArgs::Rcpt(&self.word),
            Hook::Data => HookArgs::Data(message()),
            Hook::PreDelivery => HookArgs::PreDelivery(&self.destination, message()),
            Hook::DeliveryResult => HookArgs::DeliveryResult(&self.outcomes),
        }
    }
}

fn sample(args: &TestArgs, hook: Hook) -> anyhow::Result<Sample> {
    let ip: std::net::IpAddr = args
        .ip
        .parse()
        .map_err(|_| anyhow::anyhow!("--ip {:?} is not an IP address", args.ip))?;
    let mut rcpts = if args.rcpt.is_empty() {
        vec!["recipient@example.net".to_string()]
    } else {
        args.rcpt.clone()
    };
    let message = || -> anyhow::Result<Arc<MessageView>> {
        let raw = match &args.eml {
            Some(path) => std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
            None => format!(
                "From: <{}>\r\nTo: <{}>\r\nSubject: weir plugin test\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <test@weir>\r\n\r\nA sample message.\r\n",
                args.from, rcpts[0]
            )
            .into_bytes(),
        };
        // Files saved on Unix often end lines with LF alone.
        let raw = if raw.windows(2).any(|w| w == b"\r\n") {
            raw
        } else {
            String::from_utf8_lossy(&raw)
                .replace('\n', "\r\n")
                .into_bytes()
        };
        Ok(Arc::new(MessageView::new(Arc::new(raw))))
    };
    let message = matches!(hook, Hook::Data | Hook::PreDelivery)
        .then(message)
        .transpose()?;
    let word = match hook {
        Hook::Helo => args.helo.clone(),
        Hook::MailFrom => args.from.clone(),
        // At rcpt, the last recipient is the one being added.
        Hook::Rcpt => rcpts.pop().expect("at least one"),
        _ => String::new(),
    };
    let destination = args.destination.clone().unwrap_or_else(|| {
        rcpts
            .first()
            .and_then(|r| r.rsplit_once('@'))
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    });
    let outcomes = rcpts
        .iter()
        .map(|r| crate::plugins::DeliveryOutcome {
            recipient: r.clone(),
            status: "delivered".into(),
            reply: "250 2.0.0 OK".into(),
            remote_host: Some("mx.example.net".into()),
        })
        .collect();
    let envelope = !matches!(hook, Hook::Connect | Hook::Helo);
    let context = Context {
        helo: (hook != Hook::Connect).then(|| args.helo.clone()),
        queue_id: envelope.then(|| "TEST".into()),
        sender: envelope.then(|| args.from.clone()),
        recipients: if envelope && hook != Hook::MailFrom {
            rcpts
        } else {
            Vec::new()
        },
        ..Context::new(std::net::SocketAddr::new(ip, 40000), "test")
    };
    Ok(Sample {
        context: Arc::new(context),
        word,
        destination,
        message,
        outcomes,
    })
}

fn print_decision(d: &Decision) {
    let reply = |r: &crate::plugins::PluginReply| format!("{} {} {}", r.code, r.enhanced, r.text);
    let verdict = match &d.verdict {
        Verdict::Continue => "continue".to_string(),
        Verdict::Accept => "accept".to_string(),
        Verdict::Reject(r) => format!("reject {}", reply(r)),
        Verdict::Tempfail(r) => format!("tempfail {}", reply(r)),
        Verdict::Disconnect(r) => format!("disconnect {}", reply(r)),
        Verdict::Discard => "discard".to_string(),
        Verdict::Quarantine(reason) => format!("quarantine {reason}"),
    };
    println!("verdict: {verdict}");
    if d.mutations.is_empty() {
        println!("mutations: none");
        return;
    }
    println!("mutations:");
    for m in &d.mutations {
        let text = match m {
            Mutation::AddHeader(h) => format!("add-header {}: {}", h.name, h.value),
            Mutation::RemoveHeader(n) => format!("remove-header {n}"),
            Mutation::RemoveHeaderAt(at) => format!("remove-header-at {}[{}]", at.name, at.index),
            Mutation::ReplaceHeader(h) => format!("replace-header {}: {}", h.name, h.value),
            Mutation::AddRecipient(r) => format!("add-recipient {r}"),
            Mutation::RemoveRecipient(r) => format!("remove-recipient {r}"),
            Mutation::ReplaceBody(b) => format!("replace-body ({} octets)", b.len()),
            Mutation::ReplacePart(p) => format!(
                "replace-part {} with {} ({} octets)",
                p.part,
                p.content_type,
                p.body.len()
            ),
            Mutation::RemovePart(id) => format!("remove-part {id}"),
            Mutation::SetRoute(r) => format!("set-route {r}"),
            Mutation::RequireTls => "require-tls".to_string(),
            Mutation::Tag(t) => format!("tag {t}"),
            Mutation::AddScore(s) => format!("add-score {s}"),
        };
        println!("  {text}");
    }
}
