//! What a client must do to keep a connection: finish its request headers within
//! `--header-timeout-secs`, never fall silent longer than `--idle-timeout-secs`, and find a free
//! place among `--max-connections`. Without these, silent or trickling connections (slowloris)
//! would be held forever until the process ran out of file descriptors and could accept
//! nothing, not even `/healthz`.
//!
//! [`Guarded`] wraps any [`Listener`], so the same rules hold for plain HTTP and, wrapped around
//! a listener whose connections come out of their TLS handshake, for HTTPS: it must see the
//! plaintext, since it watches for the blank line that ends the first request's headers. A
//! connection over the cap gets a 503 (JSON, `Retry-After`) and is closed at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::config::Limits;

/// Refusals answered with a 503 at once; past this many, further ones are simply closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long writing a refusal may take.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Descriptors kept for everything besides client connections (database, files, logs).
const RESERVED_DESCRIPTORS: usize = 64;

/// The connection rules, from the limits.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Rules {
    /// The configured rules, with the connection cap lowered to what the process's descriptor
    /// limit allows (with a warning): past it, accepting would fail for everyone.
    pub fn from_limits(limits: &Limits) -> Rules {
        let mut max_connections = limits.max_connections.max(1);
        if let Some(descriptors) = descriptor_limit() {
            let allowed = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1);
            if allowed < max_connections {
                tracing::warn!(
                    max_connections,
                    descriptors,
                    "the descriptor limit (ulimit -n) is too low for --max-connections; \
                     serving at most {allowed} connections: raise it to at least {}",
                    max_connections + RESERVED_DESCRIPTORS
                );
                max_connections = allowed;
            }
        }
        Rules {
            max_connections,
            header_timeout: Duration::from_secs(limits.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(limits.idle_timeout_secs.max(1)),
        }
    }
}

/// The soft limit on open files, where the system says (Linux).
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A listener whose connections follow the [`Rules`].
pub struct Guarded<L> {
    inner: L,
    rules: Rules,
    places: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
}

impl<L: Listener> Guarded<L> {
    pub fn new(inner: L, rules: Rules) -> Guarded<L> {
        Guarded {
            inner,
            rules,
            places: Arc::new(Semaphore::new(rules.max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
        }
    }
}

impl<L: Listener> Listener for Guarded<L> {
    type Io = GuardedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.places.clone().try_acquire_owned() {
                Ok(place) => return (GuardedIo::new(io, place, self.rules), addr),
                Err(_) => refuse(io, &self.refusals, self.rules.max_connections),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Answers a connection over the cap with a 503 and closes it.
fn refuse<Io: AsyncWrite + Unpin + Send + 'static>(
    mut io: Io,
    refusals: &Arc<Semaphore>,
    max: usize,
) {
    tracing::warn!(
        max_connections = max,
        "connection refused: at the connection limit"
    );
    let Ok(refusal) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let body = format!(
            "{{\"error\":\"the server is at its connection limit ({max}); try again shortly\"}}"
        );
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
            io.write_all(response.as_bytes()).await?;
            io.shutdown().await
        })
        .await;
        drop(refusal);
    });
}

/// A connection that holds a place among `--max-connections` and ends, with a read error, when
/// its request headers take too long or it falls silent too long.
pub struct GuardedIo<Io> {
    io: Io,
    _place: OwnedSemaphorePermit,
    rules: Rules,
    /// Until the first request's headers are complete: when they must be, and the last bytes
    /// read (the blank line that ends them may span two reads).
    headers: Option<(Pin<Box<Sleep>>, [u8; 3])>,
    idle: Pin<Box<Sleep>>,
}

impl<Io> GuardedIo<Io> {
    fn new(io: Io, place: OwnedSemaphorePermit, rules: Rules) -> GuardedIo<Io> {
        let now = Instant::now();
        GuardedIo {
            io,
            _place: place,
            rules,
            headers: Some((
                Box::pin(tokio::time::sleep_until(now + rules.header_timeout)),
                [0; 3],
            )),
            idle: Box::pin(tokio::time::sleep_until(now + rules.idle_timeout)),
        }
    }

    /// Notes bytes read: the connection is not idle, and its headers may be complete.
    fn heard(&mut self, bytes: &[u8]) {
        self.idle
            .as_mut()
            .reset(Instant::now() + self.rules.idle_timeout);
        if let Some((_, tail)) = &mut self.headers {
            let mut window = tail.to_vec();
            window.extend_from_slice(bytes);
            if window.windows(4).any(|w| w == b"\r\n\r\n") {
                self.headers = None;
            } else {
                tail.copy_from_slice(&window[window.len() - 3..]);
            }
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if let Some((deadline, _)) = &mut self.headers {
            if deadline.as_mut().poll(cx).is_ready() {
                return Some("request headers took too long");
            }
        }
        self.idle
            .as_mut()
            .poll(cx)
            .is_ready()
            .then_some("connection idle too long")
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for GuardedIo<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.heard(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(why) => {
                    tracing::debug!(why, "connection closed");
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for GuardedIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
