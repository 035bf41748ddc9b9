//! Command-line flags and their environment fallbacks. `duet-server --help` is the reference.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::proxy::{PublicUrl, TrustedProxy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// duet room server: rooms over REST, live Yjs sync over WebSocket, persisted in PostgreSQL or
/// an embedded SQLite file.
#[derive(Debug, Clone, Parser)]
#[command(name = "duet-server", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "DUET_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// `postgres://…` for PostgreSQL, `sqlite://FILE` for SQLite. Unset: an embedded SQLite
    /// file, `duet.db` in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// `redis://HOST:PORT` (or `rediss://`): run as one of several nodes behind a load
    /// balancer, relaying each room's updates and presence to the other nodes through this
    /// Redis. Needs PostgreSQL (every node shares it). Unset: a single node, as ever.
    #[arg(long, env = "DUET_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Where the embedded SQLite file goes when no DATABASE_URL is given.
    #[arg(long, env = "DUET_DATA_DIR", default_value = ".")]
    pub data_dir: std::path::PathBuf,

    /// Log format.
    #[arg(long, env = "DUET_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub persistence: Persistence,

    #[command(flatten)]
    pub history: History,

    #[command(flatten)]
    pub network: Network,
}

/// Per-room and per-connection limits. Past one, only the offending connection is refused or
/// closed, with a close reason that names the limit.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Peers connected to one room at once.
    #[arg(long, env = "DUET_MAX_PEERS", default_value_t = 32)]
    pub max_peers: usize,

    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "DUET_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,

    /// Largest file in a room, in bytes of UTF-8 text.
    #[arg(long, env = "DUET_MAX_FILE_BYTES", default_value_t = 4 << 20)]
    pub max_file_bytes: usize,

    /// Largest room: the sum of its files, in bytes of UTF-8 text.
    #[arg(long, env = "DUET_MAX_ROOM_BYTES", default_value_t = 32 << 20)]
    pub max_room_bytes: usize,

    /// Most files in one room.
    #[arg(long, env = "DUET_MAX_FILES", default_value_t = 2000)]
    pub max_files: usize,

    /// Sustained messages per second accepted from one connection (bursts of twice as many).
    #[arg(long, env = "DUET_MAX_MESSAGES_PER_SECOND", default_value_t = 200)]
    pub max_messages_per_second: u32,

    /// Largest presence (awareness) state one client may announce, in bytes of JSON.
    #[arg(long, env = "DUET_MAX_PRESENCE_BYTES", default_value_t = 64 << 10)]
    pub max_presence_bytes: usize,

    /// Presence (awareness) client ids one connection may announce: a Yjs client has one per
    /// document.
    #[arg(long, env = "DUET_MAX_PRESENCE_STATES", default_value_t = 4)]
    pub max_presence_states: usize,

    /// Connections open at once (HTTP and WebSocket); past it, a new one is answered 503 and
    /// closed. Lowered, with a warning, when the descriptor limit (`ulimit -n`) is too low.
    #[arg(long, env = "DUET_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Seconds a new connection may take to send its request headers.
    #[arg(long, env = "DUET_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a connection may send nothing before it is closed (a WebSocket peer that answers
    /// the server's pings never is).
    #[arg(long, env = "DUET_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Rooms one client (address; IPv6: its /64) may create per minute (bursts of as many).
    #[arg(long, env = "DUET_MAX_ROOMS_PER_MINUTE", default_value_t = 30)]
    pub max_rooms_per_minute: u32,

    /// A secret that `POST /rooms` must bear (`Authorization: Bearer <secret>`): set it on a
    /// public server so that only those who have it create rooms. Unset: anyone may.
    #[arg(long, env = "DUET_CREATE_TOKEN", hide_env_values = true, value_parser = secret)]
    pub create_token: Option<Secret>,

    /// Messages queued for one connection before it counts as too slow and is disconnected
    /// (it re-syncs when it reconnects).
    #[arg(long, env = "DUET_SEND_QUEUE", default_value_t = 512)]
    pub send_queue: usize,
}

/// A secret from the command line: never shown, not even in debug output.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn secret(value: &str) -> Result<Secret, String> {
    match value.trim() {
        "" => Err("the secret is empty".into()),
        value => Ok(Secret(value.to_string())),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Persistence {
    /// Group commit: how often buffered updates are written, in milliseconds.
    #[arg(long, env = "DUET_FLUSH_INTERVAL_MS", default_value_t = 200)]
    pub flush_interval_ms: u64,

    /// Update rows (one per room per flush) stored since the last compaction before the
    /// room's state is rewritten as one snapshot.
    #[arg(long, env = "DUET_COMPACT_AFTER", default_value_t = 500)]
    pub compact_after: u64,

    /// Seconds a room with no peers stays in memory before it is flushed and unloaded.
    #[arg(long, env = "DUET_IDLE_UNLOAD_SECS", default_value_t = 60)]
    pub idle_unload_secs: u64,
}

/// Versions of rooms: when they are taken and how long they are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct History {
    /// While a room is being edited, a version is taken every this many seconds (one is also
    /// taken when its last peer leaves, before every restore, and on request).
    #[arg(long, env = "DUET_VERSION_INTERVAL_SECS", default_value_t = 300)]
    pub version_interval_secs: u64,

    /// Versions kept per room; older ones are pruned (0: no limit).
    #[arg(long, env = "DUET_KEEP_VERSIONS", default_value_t = 200)]
    pub keep_versions: u64,

    /// Days a version is kept; older ones are pruned, except each room's newest (0: no limit).
    #[arg(long, env = "DUET_KEEP_VERSIONS_DAYS", default_value_t = 30)]
    pub keep_versions_days: u64,
}

impl History {
    pub fn version_interval(&self) -> Duration {
        Duration::from_secs(self.version_interval_secs)
    }

    /// What to keep as of `now` (Unix milliseconds).
    pub fn retention(&self, now: i64) -> crate::history::Retention {
        crate::history::Retention {
            count: self.keep_versions,
            since: (self.keep_versions_days > 0)
                .then(|| now - self.keep_versions_days as i64 * 86_400_000),
        }
    }
}

/// How people reach the server: TLS, a public URL, reverse proxies.
#[derive(Debug, Clone, clap::Args)]
pub struct Network {
    /// Serve HTTPS and WSS with this certificate (PEM: the certificate, then its chain).
    /// Needs --tls-key. Both files are read again on SIGHUP; open connections stay.
    #[arg(long, env = "DUET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "DUET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// The URL people reach this server at (`https://duet.example.com`), when it differs from
    /// the address a request came to (behind a proxy, another host name): invites and
    /// `ws_url` are built on it (`wss://duet.example.com/ws/…`).
    #[arg(long, env = "DUET_PUBLIC_URL")]
    pub public_url: Option<PublicUrl>,

    /// A reverse proxy (IP address or CIDR network; repeat, or comma-separate in the
    /// environment) whose X-Forwarded-For and X-Forwarded-Proto are believed. From anyone
    /// else those headers are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "DUET_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<TrustedProxy>,
}

impl Persistence {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms.max(1))
    }

    pub fn idle_unload(&self) -> Duration {
        Duration::from_secs(self.idle_unload_secs)
    }
}

impl Config {
    /// The database to open: `DATABASE_URL` as given, else the embedded SQLite file.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let file = self.data_dir.join("duet.db");
                // Printed at start: an absolute path says exactly where the rooms are.
                let file = std::path::absolute(&file).unwrap_or(file);
                format!("sqlite://{}", file.display())
            }
        }
    }
}
