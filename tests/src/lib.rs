//! The harness for duet's end-to-end tests and benchmarks: it starts the real `duet-server`
//! binary against a real database, and drives it with real clients — a Rust y-websocket client
//! ([`yclient`]) and the reference Yjs provider in Node ([`node`]).
//!
//! PostgreSQL comes from `tests/run`, which starts a throwaway cluster and exports
//! `DUET_TEST_DATABASE_URL`; tests that stop the database start a private cluster of their own
//! ([`pg::Cluster`]). Every process a test starts is killed when its handle drops.

pub mod editor;
pub mod jsonlines;
pub mod nginx;
pub mod node;
pub mod nvim;
pub mod pg;
pub mod proxy;
pub mod redis;
pub mod server;
pub mod stats;
pub mod tls;
pub mod yclient;

use std::path::PathBuf;
use std::time::Duration;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A built binary of the workspace (`cargo build --workspace` puts them beside the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps/, benchmarks from target/<profile>/.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`), or run `tests/run`",
        path.display()
    );
    path
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on loopback (bound and released: good enough on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// Defines one test per storage back end: `$name::sqlite` and `$name::postgres`, each calling
/// `$body(Backend)`, so both stores are held to exactly the same tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident => $body:ident;)+) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$body($crate::server::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$body($crate::server::Backend::Postgres).await
                }
            }
        )+
    };
}
