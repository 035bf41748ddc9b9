//! Presence (awareness) from careless or hostile peers: nobody can set another's presence, one
//! connection announces a few client ids at most, each state is bounded, and the offender alone
//! is closed, with a reason.

use std::time::Duration;

use duet_e2e::node::NodeClient;
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

fn names(peers: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = peers
        .iter()
        .filter_map(|p| p["user"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// A peer sends a presence state under the stock provider's client id, with a newer clock:
/// before, everyone (the victim's own provider included, which then re-broadcast it) saw the
/// victim renamed. Now the state is dropped: the victim stays who it is for everyone, and its
/// own state is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_set_another_peers_presence() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room(json!({})).await;
    let mut victim = NodeClient::spawn();
    let joined = victim
        .ok(
            json!({"cmd": "connect", "url": server.ws_base(), "room": room.id, "token": room.token,
                   "awareness": {"user": {"name": "ann", "color": "#e06c75"}}}),
        )
        .await;
    let victim_id = joined["clientId"]
        .as_u64()
        .expect("the provider's client id");
    let witness = YClient::join(&server.ws_url(&room)).await;
    duet_e2e::eventually(5 * SECOND, "ann's presence", || async {
        (names(&witness.peers()) == ["ann"]).then_some(())
    })
    .await;

    let mallory = YClient::join(&server.ws_url(&room)).await;
    mallory.set_presence(json!({"user": {"name": "mallory"}}));
    for clock in [1_000, 1_000_000] {
        mallory.send_presence_as(
            victim_id,
            clock,
            &json!({"user": {"name": "mallory as ann"}}),
        );
    }
    // Mallory's own state goes out after the spoofs: once the witness has it, the spoofs were
    // handled too.
    mallory.set_presence(json!({"user": {"name": "mallory", "done": true}}));
    duet_e2e::eventually(5 * SECOND, "mallory's last state", || async {
        witness
            .peers()
            .iter()
            .any(|p| p["user"]["done"] == true)
            .then_some(())
    })
    .await;
    assert_eq!(names(&witness.peers()), ["ann", "mallory"]);
    let presence = server.room_info(&room).await["peers"].clone();
    let server_names: Vec<&str> = presence
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["state"]["user"]["name"].as_str())
        .collect();
    assert_eq!(server_names.len(), 2, "{presence}");
    assert!(server_names.contains(&"ann"), "{presence}");
    // The victim's own provider never saw the spoof, so it did not adopt it either.
    let seen = victim.ok(json!({"cmd": "peers"})).await["peers"].clone();
    assert!(
        !seen.to_string().contains("mallory as ann"),
        "the victim received the spoof: {seen}"
    );
    assert_eq!(
        mallory.closed(),
        None,
        "a relayed or foreign state is dropped, not punished"
    );
}

/// One connection announcing many client ids, or a huge state: before, 150 states of 1 MiB
/// were all kept (+150 MB) and sent to every joiner. Now the connection is closed at the
/// limit, nothing of it is kept, and the server's memory stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_states_are_bounded_per_connection_and_in_size() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room(json!({})).await;
    let witness = YClient::join(&server.ws_url(&room)).await;
    witness.set_presence(json!({"user": {"name": "witness"}}));
    let rss_before = rss_kib(server.pid());

    // Many client ids from one connection: the fifth is one too many.
    let many = YClient::join(&server.ws_url(&room)).await;
    for client in 1..=150u64 {
        many.send_presence_as(
            client,
            1,
            &json!({"user": {"name": format!("ghost {client}")}}),
        );
    }
    let (code, reason) = many.wait_closed(5 * SECOND).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("too many presence states"), "{reason}");

    // Huge states, from many connections: each is closed at its first.
    let state = json!({"user": {"name": "big"}, "junk": "x".repeat(1 << 20)});
    for i in 0..40u64 {
        let big = YClient::join(&server.ws_url(&room)).await;
        big.send_presence_as(1_000 + i, 1, &state);
        let (code, reason) = big.wait_closed(5 * SECOND).await;
        assert_eq!(code, 1009, "{reason}");
        assert!(reason.contains("presence state too large"), "{reason}");
    }

    // What is kept: the witness and the four states the first connection owned until it was
    // closed, which left with it.
    duet_e2e::eventually(5 * SECOND, "only the witness's presence", || async {
        let peers = server.room_info(&room).await["peers"].clone();
        (peers.as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    let joiner = YClient::join(&server.ws_url(&room)).await;
    duet_e2e::eventually(5 * SECOND, "the joiner to see the witness", || async {
        (names(&joiner.peers()) == ["witness"]).then_some(())
    })
    .await;
    let grown = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grown < 40 * 1024, "the server grew by {grown} KiB");
    assert_eq!(witness.closed(), None);
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
