//! `duet-server`: parses the flags, opens the store, serves until SIGTERM or Ctrl-C, then
//! closes every socket with a close frame and flushes every room.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use duet_server::api::{self, AppState};
use duet_server::autocomplete::Engine;
use duet_server::config::{Config, LogFormat};
use duet_server::listen::{Guarded, Rules};
use duet_server::metrics::Metrics;
use duet_server::proxy::Edge;
use duet_server::relay::Relay;
use duet_server::rooms::Rooms;
use duet_server::store::Store;
use duet_server::tls::{self, Certificates, TlsListener};
use tokio::sync::watch;

/// Opens the store; while the database does not answer (it may be starting too, or be down
/// for a moment), tries again with backoff instead of exiting. Other errors end the server.
async fn open_store(url: &str) -> anyhow::Result<Store> {
    let mut wait = Duration::from_millis(250);
    loop {
        match Store::connect(url).await {
            Ok(store) => return Ok(store),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(database = %redact(url), error = %e, retry_in = ?wait, "database not reachable");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the database ({})", redact(url)))
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing(config.log_format);

    // Before the database: a wrong certificate path should not wait for it.
    let certificates = match (&config.network.tls_cert, &config.network.tls_key) {
        (Some(cert), Some(key)) => Some(Certificates::load(cert, key)?),
        _ => None,
    };
    let url = config.database_url();
    if config.redis_url.is_some() && !url.starts_with("postgres") {
        anyhow::bail!(
            "--redis-url needs PostgreSQL: the nodes share one database, and an SQLite file \
             belongs to one process (set --database-url postgres://…, or drop --redis-url to run \
             a single node)"
        );
    }
    let metrics = Arc::new(Metrics::default());
    let relay = match &config.redis_url {
        Some(redis) => Some(
            Relay::new(redis, metrics.clone())
                .with_context(|| format!("invalid --redis-url ({})", redact(redis)))?,
        ),
        None => None,
    };
    let store = open_store(&url).await?;
    tracing::info!(database = %redact(&url), "store ready");
    if let Some(redis) = &config.redis_url {
        tracing::info!(redis = %redact(redis), "relaying to the other nodes through Redis");
    }

    let rooms = Rooms::new(
        store,
        config.limits.clone(),
        config.persistence.clone(),
        config.history.clone(),
        metrics,
        relay,
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let flusher = tokio::spawn(rooms.clone().run_flusher(shutdown_rx.clone()));
    let relaying = tokio::spawn(rooms.clone().run_relay(shutdown_rx.clone()));
    let app = api::router(AppState {
        rooms: rooms.clone(),
        autocomplete: Arc::new(Engine::builtin()),
        shutdown: shutdown_rx.clone(),
        edge: Arc::new(Edge {
            trusted: config.network.trusted_proxies.clone(),
            public_url: config.network.public_url.clone(),
            tls: certificates.is_some(),
        }),
    })
    .into_make_service_with_connect_info::<SocketAddr>();

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    tracing::info!(address = %listener.local_addr()?, tls = certificates.is_some(), "duet-server listening");
    // Every sync message is small and latency-bound: without TCP_NODELAY, Nagle's algorithm
    // meets the peer's delayed ACK and holds some of them back for 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    // Connection cap, header and idle timeouts: for plain HTTP and, around the handshaken
    // connections, for TLS.
    let rules = Rules::from_limits(&config.limits);
    let mut wait = shutdown_rx.clone();
    let stopping = async move {
        let _ = wait.changed().await;
        // Every WebSocket has been told to close: wait for their closing handshakes (see
        // `duet_server::connections`), 5 s at most.
        let closing =
            tokio::time::timeout(Duration::from_secs(5), rooms.connections().all_closed());
        if closing.await.is_err() {
            tracing::warn!("connections still open after 5 s; stopping anyway");
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: closing connections and flushing rooms");
        let _ = shutdown_tx.send(true);
    });
    match certificates {
        Some(certificates) => {
            tokio::spawn(tls::reload_on_sighup(certificates.clone()));
            // The outer `tap_io` only lets axum hand each request its peer's address.
            let listener = TlsListener::new(listener, certificates.acceptor())?;
            let listener = Guarded::new(listener, rules).tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .await?
        }
        None => {
            let listener = Guarded::new(listener, rules).tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .await?
        }
    }
    flusher.await?;
    relaying.await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    // Colours only for a person at a terminal: not in files, journald or `grep`.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A database or Redis URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
