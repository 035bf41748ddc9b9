//! History benchmark, against a real `duet-server` on SQLite and on PostgreSQL: a room with a
//! 100 KB file and a 5 KB one; a raw Yjs peer makes a small edit in the middle of the 100 KB file,
//! then a version is taken on request, again and again. It prints
//!
//! - bytes stored per version (the versions' texts, paths and listings, without the database's
//!   per-row overhead), the mean and the median (the mean includes the whole text stored every
//!   33 rows of a file), beside the 100 KB file itself (what a full copy per version would store
//!   at least);
//! - the time to take a version (`POST /rooms/{id}/versions`: a flush, then the version);
//! - the time to list a page of 50 versions, to read the 100 KB file at a version (beside reading
//!   its current text, `GET /rooms/{id}/files/{path}`), and to restore it (a restore of one file,
//!   which flushes, edits the live room and takes the version before).
//!
//! Times are client-side over loopback HTTP, p50 and p99 of each run; every figure is the median
//! over `--runs` runs (min–max beside it). Each restore is checked to have reached the peer.
//!
//! `cargo run --release -p duet-e2e --bin bench-history [-- --quick] [--runs N]`

use std::time::{Duration, Instant};

use duet_e2e::pg::Cluster;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::stats::{machine, quantile, source, Args, Runs};
use duet_e2e::yclient::YClient;
use reqwest::Method;
use serde_json::json;

const FILE: &str = "main.py";
const WAIT: Duration = Duration::from_secs(30);

/// The timed requests, in the order of [`Figures::times`].
const TIMES: [&str; 5] = [
    "take a version (POST versions), ms",
    "list 50 versions (GET versions), ms",
    "read the 100 KB file at a version, ms",
    "  read its current text (reference), ms",
    "restore the 100 KB file (POST restore), ms",
];
const TAKE: usize = 0;
const LIST: usize = 1;
const READ: usize = 2;
const READ_CURRENT: usize = 3;
const RESTORE: usize = 4;

/// Each figure over the runs.
#[derive(Default)]
struct Figures {
    bytes_per_version: Runs,
    /// The median version's bytes: one whose changed file is stored as a patch.
    bytes_median: Runs,
    /// p50 and p99 of each of [`TIMES`].
    times: [[Runs; 2]; 5],
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("{}", machine());
    let versions = args.pick(60, 10);
    let samples = args.pick(40, 10);
    // PostgreSQL: the tests' database if there is one, else a private cluster.
    let cluster = std::env::var_os("DUET_TEST_DATABASE_URL")
        .is_none()
        .then(Cluster::start);
    let backends = [Backend::Sqlite, Backend::Postgres];
    let mut figures: [Figures; 2] = Default::default();
    for run in 1..=args.runs {
        for (b, backend) in backends.into_iter().enumerate() {
            eprintln!("run {run}/{}: {backend:?}", args.runs);
            let db = match (backend, &cluster) {
                (Backend::Postgres, Some(cluster)) => {
                    Database::with_url(Backend::Postgres, cluster.url())
                }
                _ => Database::new(backend),
            };
            one_run(&db, versions, samples, &mut figures[b]).await;
        }
    }
    println!(
        "\nhistory: a room with a 100 KB file and a 5 KB one; {versions} versions, each after one \
         small edit (a few bytes) in the middle of the 100 KB file; {samples} samples of each \
         request; {} runs, median (min–max) of the runs",
        args.runs
    );
    println!("{:<58} {:>22} {:>22}", "", "SQLite", "PostgreSQL");
    let row = |label: &str, cells: [String; 2]| {
        println!("{label:<58} {:>22} {:>22}", cells[0], cells[1]);
    };
    row(
        "bytes stored per version, mean",
        figures
            .each_ref()
            .map(|f| f.bytes_per_version.show(0).to_string()),
    );
    row(
        "bytes stored per version, median",
        figures
            .each_ref()
            .map(|f| f.bytes_median.show(0).to_string()),
    );
    row(
        "  the 100 KB file (reference: a copy per version)",
        [(100 << 10).to_string(), (100 << 10).to_string()],
    );
    for (t, label) in TIMES.into_iter().enumerate() {
        for (q, name) in ["p50", "p99"].into_iter().enumerate() {
            row(
                &format!("{label} {name}"),
                figures
                    .each_ref()
                    .map(|f| f.times[t][q].show(2).to_string()),
            );
        }
    }
}

/// p50 and p99 of one run's samples, in milliseconds, added to `into`.
fn record(samples: &[Duration], into: &mut [Runs; 2]) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    into[0].push(quantile(&ms, 0.5));
    into[1].push(quantile(&ms, 0.99));
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (Duration, T) {
    let start = Instant::now();
    let value = f.await;
    (start.elapsed(), value)
}

async fn call(server: &Server, method: Method, room: &RoomRef, path: &str) -> Duration {
    let body = (method == Method::POST).then(|| json!({"paths": [FILE]}));
    let (took, (status, reply)) = timed(server.call(method, room, path, body)).await;
    assert!(status < 300, "{path}: {status} {reply}");
    took
}

async fn one_run(db: &Database, versions: usize, samples: usize, figures: &mut Figures) {
    let server = Server::start(db, &["--version-interval-secs", "3600"]).await;
    let text = source(100 << 10);
    let room = server
        .create_room_with(&[(FILE, &text), ("util.py", &source(5 << 10))])
        .await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    peer.set_presence(json!({"user": {"name": "Ann"}}));
    server.take_version(&room, "start").await;
    let start_bytes = stored_bytes(db, &room);

    let mut take = Vec::new();
    let mut each = Vec::new();
    let mut last = start_bytes;
    for i in 0..versions {
        // A few bytes at a line in the middle of the file.
        let anchor = format!("\nvalue_{} ", 800 + i * 7);
        peer.insert_after(FILE, &anchor, &format!("+{i}"));
        let expected = peer.text(FILE).expect("the file");
        wait_for(&server, &room, &expected).await;
        take.push(
            timed(server.take_version(&room, &format!("edit {i}")))
                .await
                .0,
        );
        let now = stored_bytes(db, &room);
        each.push((now - last) as f64);
        last = now;
    }
    each.sort_by(f64::total_cmp);
    figures.bytes_median.push(quantile(&each, 0.5));
    let bytes = stored_bytes(db, &room) - start_bytes;
    figures
        .bytes_per_version
        .push(bytes as f64 / versions as f64);
    record(&take, &mut figures.times[TAKE]);

    let newest = versions as i64 + 1;
    let mut list = Vec::new();
    let mut read = Vec::new();
    let mut current = Vec::new();
    for i in 0..samples {
        list.push(call(&server, Method::GET, &room, "/versions?limit=50").await);
        let version = 1 + (i as i64 * 7) % newest;
        read.push(
            call(
                &server,
                Method::GET,
                &room,
                &format!("/versions/{version}/files/{FILE}"),
            )
            .await,
        );
        current.push(call(&server, Method::GET, &room, &format!("/files/{FILE}")).await);
    }
    record(&list, &mut figures.times[LIST]);
    record(&read, &mut figures.times[READ]);
    record(&current, &mut figures.times[READ_CURRENT]);

    // Back and forth between the first version and the one after the last edit, each restore
    // checked at the peer.
    let last = peer.text(FILE).expect("the file");
    let mut restore = Vec::new();
    for i in 0..samples {
        let (version, expected) = if i % 2 == 0 {
            (1, text.as_str())
        } else {
            (newest, last.as_str())
        };
        restore.push(
            call(
                &server,
                Method::POST,
                &room,
                &format!("/versions/{version}/restore"),
            )
            .await,
        );
        peer.wait_text(FILE, expected, WAIT).await;
    }
    record(&restore, &mut figures.times[RESTORE]);
}

async fn wait_for(server: &Server, room: &RoomRef, expected: &str) {
    duet_e2e::eventually(WAIT, "the server to have the edit", || async {
        (server.file(room, FILE).await.as_deref() == Some(expected)).then_some(())
    })
    .await;
}

/// Bytes of the room's versions: their texts and paths, and their listings.
fn stored_bytes(db: &Database, room: &RoomRef) -> u64 {
    let bytes = |column: &str| match db.backend {
        Backend::Postgres => format!("COALESCE(OCTET_LENGTH({column}), 0)"),
        Backend::Sqlite => format!("COALESCE(LENGTH(CAST({column} AS BLOB)), 0)"),
    };
    let sql = format!(
        "SELECT (SELECT COALESCE(SUM({} + {}), 0) FROM room_version_files WHERE room_id = '{id}') \
         + (SELECT COALESCE(SUM({} + {} + {}), 0) FROM room_versions WHERE room_id = '{id}')",
        bytes("path"),
        bytes("content"),
        bytes("authors"),
        bytes("files"),
        bytes("label"),
        id = room.id
    );
    db.sql(&sql).trim().parse().expect("a byte count")
}
