//! Storage faults: a write the database refuses for one room — its compaction, or its rows —
//! never holds back any other room, never wedges later flushes, and loses nothing. The faults
//! are real: a trigger in the database (PostgreSQL and SQLite alike) refuses the statement.

use std::time::Duration;

use duet_e2e::on_both_backends;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

on_both_backends! {
    a_failing_compaction_wedges_no_flush => a_failing_compaction_wedges_no_flush;
    a_room_whose_rows_are_refused_holds_back_no_other => a_room_whose_rows_are_refused_holds_back_no_other;
}

/// A trigger that makes the database refuse `event` on `table` for the rows matching `when`
/// (written against `OLD`/`NEW`), until [`Fault::heal`] or drop.
struct Fault<'a> {
    db: &'a Database,
    name: String,
    table: &'static str,
}

impl<'a> Fault<'a> {
    fn inject(db: &'a Database, table: &'static str, event: &str, when: &str) -> Fault<'a> {
        let name = format!("duet_fault_{}", uuid::Uuid::new_v4().simple());
        let sql = match db.backend {
            Backend::Postgres => format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
                 CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW \
                 WHEN ({when}) EXECUTE FUNCTION {name}();"
            ),
            Backend::Sqlite => format!(
                "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW \
                 WHEN {when} BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
            ),
        };
        db.sql(&sql);
        Fault { db, name, table }
    }

    fn heal(&self) {
        let name = &self.name;
        let sql = match self.db.backend {
            Backend::Postgres => format!(
                "DROP TRIGGER IF EXISTS {name} ON {}; DROP FUNCTION IF EXISTS {name}();",
                self.table
            ),
            Backend::Sqlite => format!("DROP TRIGGER IF EXISTS {name};"),
        };
        self.db.sql(&sql);
    }
}

impl Drop for Fault<'_> {
    fn drop(&mut self) {
        self.heal();
    }
}

async fn readyz(server: &Server) -> u16 {
    server
        .http
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("GET /readyz")
        .status()
        .as_u16()
}

/// The plain-text copy of a file as the database holds it.
fn stored_text(db: &Database, room: &RoomRef, path: &str) -> String {
    let out = db.sql(&format!(
        "SELECT content FROM room_files WHERE room_id = '{}' AND path = '{path}'",
        room.id
    ));
    // One row: its text and the line break that ends it.
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

/// Types `lines` lines into `a.txt` of each room, one line per room at a time, and waits after
/// each round until the server has written it, so that every room's updates span many flushes.
async fn type_rounds(server: &Server, clients: &[YClient], lines: usize, tag: &str) -> String {
    let mut typed = String::new();
    for i in 0..lines {
        let line = format!("{tag} {i}\n");
        for client in clients {
            client.append("a.txt", &line);
        }
        typed.push_str(&line);
        let before = server.metric("duet_update_rows_written_total").await;
        duet_e2e::eventually(10 * SECOND, "a flush", || async {
            (server.metric("duet_update_rows_written_total").await > before).then_some(())
        })
        .await;
    }
    typed
}

async fn a_failing_compaction_wedges_no_flush(backend: Backend) {
    let db = Database::new(backend);
    let mut server =
        Server::start(&db, &["--compact-after", "2", "--flush-interval-ms", "50"]).await;
    let doomed_name = format!("doomed-{}", uuid::Uuid::new_v4());
    let mut rooms = Vec::new();
    for name in [
        doomed_name.as_str(),
        &doomed_name,
        &doomed_name,
        "healthy",
        "healthy",
    ] {
        rooms.push(
            server
                .create_room(json!({"name": name, "files": {"a.txt": ""}}))
                .await,
        );
    }
    let fault = Fault::inject(
        &db,
        "rooms",
        "UPDATE OF state",
        &format!("OLD.name = '{doomed_name}'"),
    );
    let mut clients = Vec::new();
    for room in &rooms {
        clients.push(YClient::join(&server.ws_url(room)).await);
    }
    let mut typed = type_rounds(&server, &clients, 6, "before").await;
    duet_e2e::eventually(
        20 * SECOND,
        "three failed and two done compactions",
        || async {
            (server.metric("duet_compaction_failures_total").await >= 3
                && server.metric("duet_compactions_total").await >= 2)
                .then_some(())
        },
    )
    .await;
    // Every later flush still works: each room's next rows are written, and the server is not
    // degraded (it was, for good, when a failed compaction left the rooms after it unmarked).
    typed.push_str(&type_rounds(&server, &clients, 4, "after").await);
    duet_e2e::eventually(10 * SECOND, "every room's text in the store", || async {
        rooms
            .iter()
            .all(|room| stored_text(&db, room, "a.txt") == typed)
            .then_some(())
    })
    .await;
    assert_eq!(readyz(&server).await, 200, "{}", server.log());
    assert!(
        server.log().contains("compaction failed"),
        "{}",
        server.log()
    );

    // Healed, the doomed rooms are compacted after their next flush.
    fault.heal();
    let compacted = server.metric("duet_compactions_total").await;
    typed.push_str(&type_rounds(&server, &clients, 3, "healed").await);
    duet_e2e::eventually(10 * SECOND, "the doomed rooms compacted", || async {
        (server.metric("duet_compactions_total").await >= compacted + 3).then_some(())
    })
    .await;

    // The shutdown flush succeeds, and everything is there after a restart.
    drop(clients);
    assert!(server.terminate().await, "clean exit on SIGTERM");
    assert!(
        server.log().contains("all rooms flushed"),
        "{}",
        server.log()
    );
    server.restart().await;
    for room in &rooms {
        assert_eq!(
            server.file(room, "a.txt").await.as_deref(),
            Some(typed.as_str())
        );
    }
}

async fn a_room_whose_rows_are_refused_holds_back_no_other(backend: Backend) {
    let db = Database::new(backend);
    let mut server = Server::start(&db, &["--flush-interval-ms", "50"]).await;
    let doomed = server.create_room_with(&[("a.txt", "")]).await;
    let healthy = server.create_room_with(&[("a.txt", "")]).await;
    let fault = Fault::inject(
        &db,
        "room_updates",
        "INSERT",
        &format!("NEW.room_id = '{}'", doomed.id),
    );
    let ann = YClient::join(&server.ws_url(&doomed)).await;
    let bob = YClient::join(&server.ws_url(&healthy)).await;
    for i in 0..5 {
        ann.append("a.txt", &format!("doomed {i}\n"));
        bob.append("a.txt", &format!("healthy {i}\n"));
    }
    let healthy_text: String = (0..5).map(|i| format!("healthy {i}\n")).collect();
    let doomed_text: String = (0..5).map(|i| format!("doomed {i}\n")).collect();
    // The healthy room is written although it shares every flush with the refused one.
    duet_e2e::eventually(10 * SECOND, "the healthy room written", || async {
        (stored_text(&db, &healthy, "a.txt") == healthy_text).then_some(())
    })
    .await;
    // The refused room is kept in memory, and the server says it is behind.
    duet_e2e::eventually(10 * SECOND, "/readyz to report degraded", || async {
        (readyz(&server).await == 503).then_some(())
    })
    .await;
    assert_eq!(stored_text(&db, &doomed, "a.txt"), "");
    assert_eq!(
        server.file(&doomed, "a.txt").await.as_deref(),
        Some(doomed_text.as_str())
    );
    // More typing in the healthy room is written at once all the while.
    bob.append("a.txt", "more\n");
    let healthy_text = format!("{healthy_text}more\n");
    duet_e2e::eventually(
        10 * SECOND,
        "the healthy room's next line written",
        || async { (stored_text(&db, &healthy, "a.txt") == healthy_text).then_some(()) },
    )
    .await;

    // Once the database takes the rows again, they are written and the server is ready.
    drop(fault);
    duet_e2e::eventually(20 * SECOND, "/readyz to recover", || async {
        (readyz(&server).await == 200).then_some(())
    })
    .await;
    assert_eq!(stored_text(&db, &doomed, "a.txt"), doomed_text);
    drop((ann, bob));
    server.kill9();
    server.restart().await;
    let info: Value = server.room_info(&doomed).await;
    assert_eq!(info["files"][0]["size"], doomed_text.len());
    assert_eq!(
        server.file(&healthy, "a.txt").await.as_deref(),
        Some(healthy_text.as_str())
    );
}
