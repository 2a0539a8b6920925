//! Receive connectors: accept connections, apply the connection-level
//! policy (allowed client ranges, connection limits in total and per
//! address, implicit TLS), and run one SMTP session per connection.
//!
//! Talks to: `smtp` (hands it the stream), `shutdown`. Never reads or
//! writes message data itself.

pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsMode;
use crate::shutdown::Shutdown;
use crate::smtp::{ListenerContext, Outcome, Reply, Session};

/// One receive connector, bound and ready to accept.
pub struct Listener {
    /// Configuration, host name and spool, shared with its sessions.
    ctx: Arc<ListenerContext>,
    /// The bound socket.
    tcp: TcpListener,
    /// TLS acceptor, unless `tls = "off"`.
    tls: Option<TlsAcceptor>,
    /// Limits simultaneous connections; each session holds one permit,
    /// returned when it ends.
    slots: Arc<Semaphore>,
    /// Open connections per client address, for `max_connections_per_ip`.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Tells the accept loop and every session to stop.
    shutdown: Shutdown,
    /// Held by every session; the server knows all are done when the
    /// channel closes.
    _done: mpsc::Sender<()>,
}

/// Counts a connection from one address for as long as it lives.
struct PerIpGuard {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("per-ip map poisoned");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Listener {
    /// Binds the listener's socket and prepares TLS.
    pub async fn bind(
        ctx: Arc<ListenerContext>,
        shutdown: Shutdown,
        done: mpsc::Sender<()>,
    ) -> anyhow::Result<Listener> {
        let config = &ctx.config;
        let tls = match (config.tls, &config.tls_cert, &config.tls_key) {
            (TlsMode::Off, _, _) => None,
            (_, Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => anyhow::bail!("listener {}: TLS needs tls_cert and tls_key", config.name),
        };
        let tcp = TcpListener::bind(config.bind).await.map_err(|e| {
            anyhow::anyhow!("listener {}: cannot bind {}: {e}", config.name, config.bind)
        })?;
        Ok(Listener {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            ctx,
            tcp,
            tls,
            per_ip: Arc::default(),
            shutdown,
            _done: done,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.ctx.config.name
    }

    /// Accepts connections until shutdown.
    pub async fn run(mut self) {
        loop {
            let accepted = tokio::select! {
                a = accept_with_backoff(&self.tcp) => a,
                _ = self.shutdown.wait() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(listener = %self.ctx.config.name, error = %e, "accept keeps failing; listener stops");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            self.admit(stream, peer);
        }
    }

    /// Applies the connection-level policy and starts a session.
    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let config = &self.ctx.config;
        let refusal = if !config.allows(peer.ip()) {
            Some(Reply::access_denied(&self.ctx.hostname))
        } else {
            None
        };
        let permit = self.slots.clone().try_acquire_owned().ok();
        let refusal = refusal.or_else(|| permit.is_none().then(Reply::too_many_connections));
        let (guard, over_ip) = {
            let mut map = self.per_ip.lock().expect("per-ip map poisoned");
            let n = map.entry(peer.ip()).or_insert(0);
            *n += 1;
            let over = *n > config.max_connections_per_ip;
            let guard = PerIpGuard {
                map: self.per_ip.clone(),
                ip: peer.ip(),
            };
            (guard, over)
        };
        let refusal = refusal.or_else(|| over_ip.then(Reply::too_many_connections_from_you));

        let ctx = self.ctx.clone();
        let tls = self.tls.clone();
        let shutdown = self.shutdown.clone();
        let done = self._done.clone();
        tokio::spawn(async move {
            let _guards: (Option<OwnedSemaphorePermit>, PerIpGuard, mpsc::Sender<()>) =
                (permit, guard, done);
            if let Some(reply) = refusal {
                tracing::info!(peer = %peer, listener = %ctx.config.name, code = reply.code, "connection refused: {}", reply.text);
                refuse(stream, &reply).await;
                return;
            }
            tracing::debug!(peer = %peer, listener = %ctx.config.name, "connection");
            serve(stream, peer, ctx, tls, shutdown).await;
        });
    }
}

/// Runs the session(s) of one connection: plain, then TLS after STARTTLS;
/// or TLS from the start.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerContext>,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
) {
    let handshake_timeout = ctx.config.command_timeout;
    if ctx.config.tls == TlsMode::Implicit {
        let acceptor = tls.expect("implicit TLS has an acceptor");
        if let Some((stream, info)) = handshake(&acceptor, stream, peer, handshake_timeout).await {
            Session::new(stream, ctx, peer, Some(info), shutdown)
                .run_with_greeting()
                .await;
        }
        return;
    }
    let session = Session::new(stream, ctx.clone(), peer, None, shutdown.clone());
    if let Outcome::StartTls(stream) = session.run_with_greeting().await {
        let acceptor = tls.expect("STARTTLS is only offered with an acceptor");
        if let Some((stream, info)) = handshake(&acceptor, stream, peer, handshake_timeout).await {
            // A fresh session: RFC 3207 4.2 says forget all state, and the
            // client must EHLO again. No second greeting is sent.
            Session::new(stream, ctx, peer, Some(info), shutdown)
                .run()
                .await;
        }
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<S>, crate::queue::TlsInfo)> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let info = tls::info(stream.get_ref().1);
            tracing::debug!(peer = %peer, version = %info.version, cipher = %info.cipher, "TLS established");
            Some((stream, info))
        }
        Ok(Err(e)) => {
            tracing::info!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(peer = %peer, "TLS handshake timed out");
            None
        }
    }
}

async fn refuse(mut stream: TcpStream, reply: &Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Accepts, backing off when the system is out of descriptors or the like
/// (1, 2, 4 ... 64 s), instead of spinning.
async fn accept_with_backoff(tcp: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    let mut backoff = 1;
    loop {
        match tcp.accept().await {
            Ok(a) => return Ok(a),
            Err(e) if backoff > 64 => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying in {backoff}s");
                tokio::time::sleep(Duration::from_secs(backoff)).await;
                backoff *= 2;
            }
        }
    }
}
