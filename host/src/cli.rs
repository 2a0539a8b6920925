//! The `weir` command line: parses arguments, loads the configuration
//! (exiting 64 on a bad one, before anything is bound), and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::queue::spool;

mod plugins;

/// Exit status for a bad configuration or command line (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// Weir: an SMTP gateway whose policy runs as sandboxed WebAssembly.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the embedded default if no --config is given).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective settings.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// The messages plugins quarantined: list, show, release, delete.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// The plugins the configuration loads, and reloading them.
    Plugins {
        #[command(subcommand)]
        command: plugins::PluginsCommand,
    },
    /// Plugin authors' tools.
    Plugin {
        #[command(subcommand)]
        command: plugins::PluginCommand,
    },
    /// Read a password (from the terminal without echo, or one line of
    /// standard input) and print its argon2id hash for `[directory]`.
    HashPassword,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List the messages in the spool, one per line: queue id, arrival
    /// time, size, sender and recipients.
    Ls {
        /// Configuration file (TOML), for the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON envelope per line instead.
        #[arg(long)]
        json: bool,
        /// Also show each recipient's state and last error.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Print one message as stored (with the Received header weir added).
    Cat {
        /// The queue id, as `queue ls` shows it.
        id: String,
        /// Configuration file (TOML), for the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List the quarantined messages, one per line: queue id, when, size,
    /// sender, recipients, the plugin and its reason.
    Ls {
        /// Configuration file (TOML), for the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON description per line instead.
        #[arg(long)]
        json: bool,
    },
    /// Print one quarantined message as it was held.
    Show {
        /// The queue id, as `quarantine ls` shows it.
        id: String,
        /// Configuration file (TOML), for the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Deliver quarantined messages: the running gateway takes them at
    /// once, a stopped one at its next start.
    Release {
        /// Queue ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Configuration file (TOML), for the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Delete quarantined messages for good.
    Delete {
        /// Queue ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Configuration file (TOML), for the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

impl QuarantineCommand {
    fn config_file(&self) -> &Option<PathBuf> {
        match self {
            QuarantineCommand::Ls { config, .. }
            | QuarantineCommand::Show { config, .. }
            | QuarantineCommand::Release { config, .. }
            | QuarantineCommand::Delete { config, .. } => config,
        }
    }
}

/// Runs the command line; returns the process exit status.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // A plugin test needs no gateway configuration.
    let cli = match cli.command {
        Command::Plugin { command } => return plugins::plugin(command),
        Command::HashPassword => return hash_password(),
        command => Cli { command },
    };
    let config_path = match &cli.command {
        Command::Serve { config } | Command::CheckConfig { config } => config,
        Command::Queue {
            command: QueueCommand::Ls { config, .. } | QueueCommand::Cat { config, .. },
        } => config,
        Command::Plugins { command } => command.config_file(),
        Command::Quarantine { command } => command.config_file(),
        Command::Plugin { .. } | Command::HashPassword => unreachable!("handled above"),
    };
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weir: bad configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_logging(&config.log_level);
    let result = match cli.command {
        Command::CheckConfig { .. } => {
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Serve { config: file } => serve(config, file),
        Command::Queue { command } => queue(&config, command),
        Command::Quarantine { command } => quarantine(&config, command),
        Command::Plugins { command } => plugins::plugins(&config, command),
        Command::Plugin { .. } | Command::HashPassword => {
            unreachable!("handled before the configuration is read")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::server::serve(config, file))
}

fn queue(config: &Config, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Ls { json, verbose, .. } => {
            for m in spool::scan(&config.data_dir, false)? {
                let e = &m.envelope;
                if json {
                    println!("{}", serde_json::to_string(e)?);
                    continue;
                }
                let when = chrono::DateTime::from_timestamp(e.received_at, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                let rcpts: Vec<&str> = e.recipients.iter().map(|r| r.address.as_str()).collect();
                println!(
                    "{} {when} {:>8} <{}> {}",
                    e.id,
                    e.size,
                    e.sender,
                    rcpts.join(" ")
                );
                if verbose {
                    for (r, state) in e.recipients.iter().zip(&m.states) {
                        println!("    {}: {}", r.address, describe(state));
                    }
                }
            }
            Ok(())
        }
        QueueCommand::Cat { id, .. } => {
            let wanted: crate::queue::QueueId = id
                .parse()
                .map_err(|_| anyhow::anyhow!("{id:?} is not a queue id"))?;
            let found = spool::scan(&config.data_dir, true)?
                .into_iter()
                .find(|m| m.envelope.id == wanted)
                .ok_or_else(|| anyhow::anyhow!("no message {id} in the spool"))?;
            use std::io::Write;
            std::io::stdout().write_all(found.message.as_deref().unwrap_or_default())?;
            Ok(())
        }
    }
}

/// `weir hash-password`: the password from the terminal (not echoed) or
/// from the first line of standard input.
fn hash_password() -> ExitCode {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let echo = terminal.then(echo_off).flatten();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = echo {
        restore_echo(saved);
        eprintln!();
    }
    let password = line.trim_end_matches(['\r', '\n']);
    match read {
        Ok(_) if !password.is_empty() => {
            println!("{}", crate::directory::hash_password(password));
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("weir: no password given");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("weir: cannot read the password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Turns the terminal's echo off; the previous settings, to put back.
fn echo_off() -> Option<libc::termios> {
    // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) == 0).then_some(saved)
    }
}

fn restore_echo(saved: libc::termios) {
    // SAFETY: as above, putting back what tcgetattr gave.
    unsafe {
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
    }
}

fn quarantine(config: &Config, command: QuarantineCommand) -> anyhow::Result<()> {
    let q = crate::queue::quarantine::Quarantine::new(&config.data_dir);
    match command {
        QuarantineCommand::Ls { json, .. } => {
            for h in q.list()? {
                if json {
                    println!("{}", serde_json::to_string(&h)?);
                    continue;
                }
                let e = &h.envelope;
                let when = chrono::DateTime::from_timestamp(h.held_at, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                let rcpts: Vec<&str> = e.recipients.iter().map(|r| r.address.as_str()).collect();
                println!(
                    "{} {when} {:>8} <{}> {}  [{} at {}: {}]",
                    e.id,
                    e.size,
                    e.sender,
                    rcpts.join(" "),
                    h.plugin,
                    h.hook,
                    h.reason
                );
            }
            Ok(())
        }
        QuarantineCommand::Show { id, .. } => {
            let (_, bytes) = q.get(&id)?;
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
            Ok(())
        }
        QuarantineCommand::Release { ids, .. } => {
            for id in &ids {
                q.release(id)?;
            }
            match crate::server::signal_gateway(&config.data_dir, libc::SIGUSR1)? {
                Some(pid) => println!(
                    "released {}; the gateway (process {pid}) delivers them now",
                    ids.join(" ")
                ),
                None => println!(
                    "released {}; no gateway runs on {}: they are delivered at its next start",
                    ids.join(" "),
                    config.data_dir.display()
                ),
            }
            Ok(())
        }
        QuarantineCommand::Delete { ids, .. } => {
            for id in &ids {
                q.delete(id)?;
            }
            println!("deleted {}", ids.join(" "));
            Ok(())
        }
    }
}

/// A recipient's state in words, for `queue ls --verbose`.
fn describe(state: &crate::queue::RcptState) -> String {
    use crate::queue::RcptState;
    match state {
        RcptState::Pending { attempts: 0, .. } => "waiting for its first attempt".into(),
        RcptState::Pending {
            attempts,
            next_attempt,
            last_reply,
        } => {
            let next = chrono::DateTime::from_timestamp_millis(*next_attempt)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            format!(
                "deferred after {attempts} attempt(s), next at {next}: {}",
                last_reply.as_deref().unwrap_or("")
            )
        }
        RcptState::Delivered { reply, .. } => format!("delivered: {reply}"),
        RcptState::Failed { reply, .. } => format!("bounced: {reply}"),
    }
}

/// Targets that log every compiled function at debug level (tens of
/// thousands of lines for a Python or JavaScript plugin, and seconds of
/// compile time): kept at error unless the configured filter names them.
const COMPILER_TARGETS: &[&str] = &[
    "cranelift_codegen",
    "cranelift_frontend",
    "wasmtime_internal_cranelift",
    "regalloc2",
];

/// The configured filter, with the compiler's targets quieted.
fn log_filter(level: &str) -> String {
    let mut filter = level.to_string();
    for target in COMPILER_TARGETS {
        if !level.contains(target) {
            filter.push_str(&format!(",{target}=error"));
        }
    }
    filter
}

pub(crate) fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_filter(level)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_compiler_stays_quiet_unless_the_filter_names_it() {
        let f = super::log_filter("debug");
        assert!(f.starts_with("debug,"), "{f}");
        assert!(f.contains("cranelift_codegen=error"), "{f}");
        let f = super::log_filter("info,cranelift_codegen=debug");
        assert!(!f.contains("cranelift_codegen=error"), "{f}");
        assert!(f.contains("wasmtime_internal_cranelift=error"), "{f}");
        tracing_subscriber::EnvFilter::try_new(super::log_filter("weir::smtp=debug,info")).unwrap();
    }
}
