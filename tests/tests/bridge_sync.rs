//! The bridge (`duet-lsp`) between scripted editors that behave like VS Code, Neovim and Helix
//! (`duet_e2e::editor`), through a real `duet-server`: concurrent typing with emoji, CJK and
//! newlines in every pairing, three editors at once, thousands of back-to-back changes, and
//! positions in every encoding.

use std::time::Duration;

use duet_e2e::editor::{converge, wait_server_file, Encoding, FakeEditor, Kind, Pos, WAIT};
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::yclient::YClient;
use serde_json::json;

async fn start() -> (Database, Server) {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    (db, server)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn utf16(s: &str) -> u32 {
    s.encode_utf16().count() as u32
}

/// Lines with unique markers, emoji (one a ZWJ sequence), CJK and accents.
fn piece(who: &str, lines: usize) -> String {
    (0..lines)
        .map(|i| format!("{who}{i} ⟦{who}-{i}⟧ héllo 🎉 世界 こんにちは 👩‍💻 wörld\n"))
        .collect()
}

/// Two people type at once into the same file, one character per `didChange`, each in their own
/// line; every piece arrives whole and in place in both buffers and on the server.
async fn pair_typing_converges(ka: Kind, kb: Kind) {
    let (_db, server) = start().await;
    let initial = "# shared\nA:\nB:\n";
    let room = server.create_room_with(&[("main.py", initial)]).await;
    let delay = Duration::from_millis(2);
    let a = FakeEditor::builder(ka)
        .label("ann")
        .typing_delay(delay)
        .join(&server, &room, "main.py")
        .await;
    let b = FakeEditor::builder(kb)
        .label("bob")
        .typing_delay(delay)
        .join(&server, &room, "main.py")
        .await;
    assert_eq!(a.text("main.py"), initial);
    assert_eq!(b.text("main.py"), initial);

    let (pa, pb) = (piece("ann", 5), piece("bob", 5));
    tokio::join!(
        a.type_text("main.py", chars("# shared\nA:"), &pa),
        b.type_text("main.py", chars("# shared\nA:\nB:"), &pb),
    );
    let text = converge(
        &server,
        &room,
        "main.py",
        &[&a, &b],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(text, format!("# shared\nA:{pa}\nB:{pb}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_and_neovim_typing_concurrently_converge() {
    pair_typing_converges(Kind::VsCode, Kind::Neovim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_and_helix_typing_concurrently_converge() {
    pair_typing_converges(Kind::Neovim, Kind::Helix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_and_vscode_typing_concurrently_converge() {
    pair_typing_converges(Kind::Helix, Kind::VsCode).await;
}

/// VS Code, Neovim (150 ms batching) and Helix (with version gaps) type into one file at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_editors_of_mixed_kinds_converge() {
    let (_db, server) = start().await;
    let initial = "A:\nB:\nC:\n";
    let room = server.create_room_with(&[("notes.md", initial)]).await;
    let delay = Duration::from_millis(3);
    let mut editors = Vec::new();
    for (kind, label) in [
        (Kind::VsCode, "ann"),
        (Kind::Neovim, "bob"),
        (Kind::Helix, "cy"),
    ] {
        editors.push(
            FakeEditor::builder(kind)
                .label(label)
                .typing_delay(delay)
                .join(&server, &room, "notes.md")
                .await,
        );
    }
    let (a, b, c) = (&editors[0], &editors[1], &editors[2]);
    let (pa, pb, pc) = (piece("ann", 3), piece("bob", 3), piece("cy", 3));
    let helix_typing = async {
        let cursor = c.place_cursor("notes.md", chars("A:\nB:\nC:"));
        for (i, line) in pc.split_inclusive('\n').enumerate() {
            c.type_at("notes.md", cursor, line).await;
            // Completion previews: the version jumps without a didChange.
            c.helix_skip_versions("notes.md", 1 + i as i64);
        }
        c.type_at("notes.md", cursor, "!").await;
    };
    tokio::join!(
        a.type_text("notes.md", chars("A:"), &pa),
        b.type_text("notes.md", chars("A:\nB:"), &pb),
        helix_typing,
    );
    let text = converge(
        &server,
        &room,
        "notes.md",
        &[a, b, c],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(text, format!("A:{pa}\nB:{pb}\nC:{pc}!\n"));
    assert!(c.stats().version_gaps >= 1, "{:?}", c.stats());
}

/// Thousands of `didChange`s fired back to back, without waiting for anything: the bridge must
/// apply them in order (tower-lsp runs handlers concurrently; one channel keeps them ordered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_back_to_back_changes_arrive_in_order() {
    let (_db, server) = start().await;
    let initial = "start\n";
    let room = server.create_room_with(&[("burst.txt", initial)]).await;
    let a = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, "burst.txt").await;
    let b = FakeEditor::builder(Kind::Neovim)
        .label("bob")
        .debounce(Duration::ZERO)
        .join(&server, &room, "burst.txt")
        .await;
    let alphabet: Vec<char> = "abcdefghij é世🎉\nxyz0123456789".chars().collect();
    let typed: String = (0..5000)
        .map(|i| alphabet[(i * 7) % alphabet.len()])
        .collect();
    a.type_burst_at_end("burst.txt", &typed);
    let expected = format!("{initial}{typed}");
    assert_eq!(a.text("burst.txt"), expected);
    assert!(a.stats().did_change_sent >= 5000);
    let text = converge(
        &server,
        &room,
        "burst.txt",
        &[&a, &b],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(text, expected);
}

/// An editor working in `encoding` and a Yjs peer (UTF-16 offsets) edit around astral-plane
/// emoji and CJK: every position lands exactly where it should, in both directions.
async fn positions_round_trip(kind: Kind, offered: Option<&[&str]>, expected: Encoding) {
    let (_db, server) = start().await;
    let path = "enc.txt";
    let initial = "a🎉b世界\n🎉🎉x\nend\n";
    let room = server.create_room_with(&[(path, initial)]).await;
    let ed = FakeEditor::builder(kind)
        .position_encodings(offered)
        .join(&server, &room, path)
        .await;
    assert_eq!(ed.encoding(), expected, "negotiated encoding");
    let peer = YClient::join(&server.ws_url(&room)).await;
    let eds = [&ed];
    let wait = |text: &'static str| wait_server_file(&server, &room, path, text, WAIT, &eds);

    // The editor inserts right after an emoji.
    ed.insert(path, 2, "Z");
    wait("a🎉Zb世界\n🎉🎉x\nend\n").await;
    // The peer inserts after two emoji on the second line.
    peer.insert(path, utf16("a🎉Zb世界\n🎉🎉"), "Q");
    ed.wait_text(path, "a🎉Zb世界\n🎉🎉Qx\nend\n", WAIT).await;
    // The editor deletes a CJK character, then replaces an emoji with another.
    ed.delete(path, 4, 5);
    wait("a🎉Zb界\n🎉🎉Qx\nend\n").await;
    ed.replace(path, 7, 8, "😀");
    wait("a🎉Zb界\n🎉😀Qx\nend\n").await;
    // The peer inserts an emoji after an emoji, and deletes a CJK character after both.
    peer.insert(path, utf16("a🎉"), "🦀");
    ed.wait_text(path, "a🎉🦀Zb界\n🎉😀Qx\nend\n", WAIT).await;
    peer.edit(path, |txn, t| {
        yrs::Text::remove_range(t, txn, utf16("a🎉🦀Zb"), 1)
    });
    ed.wait_text(path, "a🎉🦀Zb\n🎉😀Qx\nend\n", WAIT).await;
    // The editor types at the end of a line that ends in an emoji, one character at a time.
    ed.type_text(path, chars("a🎉🦀Zb\n🎉😀"), "é世🎉").await;
    let expected_text = "a🎉🦀Zb\n🎉😀é世🎉Qx\nend\n";
    let text = converge(&server, &room, path, &[&ed], WAIT).await;
    assert_eq!(text, expected_text);
    peer.wait_text(path, expected_text, WAIT).await;
    // Positions of what the editor sent are exact in its encoding.
    let pos = ed.position(path, chars("a🎉🦀Zb\n🎉😀é世🎉"));
    let units = match expected {
        Encoding::Utf8 => "🎉😀é世🎉".len(),
        Encoding::Utf16 => "🎉😀é世🎉".encode_utf16().count(),
        Encoding::Utf32 => 5,
    };
    assert_eq!(pos, Pos::new(1, units as u32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_positions_round_trip_with_astral_and_cjk() {
    positions_round_trip(Kind::Neovim, Some(&["utf-8"]), Encoding::Utf8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf16_positions_round_trip_with_astral_and_cjk() {
    positions_round_trip(Kind::VsCode, None, Encoding::Utf16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf32_positions_round_trip_with_astral_and_cjk() {
    positions_round_trip(Kind::Helix, Some(&["utf-32"]), Encoding::Utf32).await;
}

/// Each editor gets the encoding docs/bridge.md promises: utf-32 or utf-8 where offered (Neovim,
/// Helix), utf-16 otherwise (VS Code); and the editors that negotiated something else than
/// utf-16 still converge with one that did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_encoding_is_negotiated_per_editor() {
    let (_db, server) = start().await;
    let path = "enc.txt";
    let room = server.create_room_with(&[(path, "🎉\n🎉\n🎉\n")]).await;
    let mut editors = Vec::new();
    for kind in Kind::ALL {
        let ed = FakeEditor::builder(kind)
            .typing_delay(Duration::from_millis(2))
            .join(&server, &room, path)
            .await;
        let encoding = ed.init_result["capabilities"]["positionEncoding"].as_str();
        match kind {
            Kind::VsCode => assert!(
                matches!(encoding, None | Some("utf-16")),
                "VS Code offers no encodings: utf-16, got {encoding:?}"
            ),
            Kind::Neovim | Kind::Helix => assert!(
                matches!(encoding, Some("utf-32") | Some("utf-8")),
                "{kind:?} offers utf-8/utf-32: expected one of them, got {encoding:?}"
            ),
        }
        editors.push(ed);
    }
    // All three type at once, each after the emoji of its own line.
    let lines: Vec<String> = ["v", "n", "h"]
        .iter()
        .map(|k| format!("{k}:é世🎉{k}"))
        .collect();
    tokio::join!(
        editors[0].type_text(path, 1, &lines[0]),
        editors[1].type_text(path, 3, &lines[1]),
        editors[2].type_text(path, 5, &lines[2]),
    );
    let refs: Vec<&FakeEditor> = editors.iter().collect();
    let text = converge(&server, &room, path, &refs, Duration::from_secs(20)).await;
    assert_eq!(
        text,
        format!("🎉{}\n🎉{}\n🎉{}\n", lines[0], lines[1], lines[2])
    );
}

/// A position past the end of a line or of the document in a `didChange`: LSP says it means
/// the line's end; the bridge must not crash, and the texts must still converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_position_does_not_crash_and_texts_converge() {
    let (_db, server) = start().await;
    let path = "main.py";
    let room = server.create_room_with(&[(path, "abc🎉\ndef\n")]).await;
    let ed = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, path).await;
    let other = FakeEditor::joined(Kind::Helix, "bob", &server, &room, path).await;

    // Character past the end of line 0.
    let at = json!({"line": 0, "character": 999});
    ed.change_raw(path, json!({"start": at, "end": at}), "X");
    assert_eq!(ed.text(path), "abc🎉X\ndef\n");
    converge(&server, &room, path, &[&ed, &other], WAIT).await;
    // A range whose end is past the end of line 1.
    ed.change_raw(
        path,
        json!({"start": {"line": 1, "character": 1}, "end": {"line": 1, "character": 50}}),
        "Y",
    );
    assert_eq!(ed.text(path), "abc🎉X\ndY\n");
    converge(&server, &room, path, &[&ed, &other], WAIT).await;
    // A line past the end of the document.
    let at = json!({"line": 40, "character": 3});
    ed.change_raw(path, json!({"start": at, "end": at}), "tail");
    converge(&server, &room, path, &[&ed, &other], WAIT).await;
    assert!(ed.alive(), "the bridge died\n{}", ed.report());

    // Still in business: an ordinary edit goes through both ways.
    ed.insert(path, 0, "# ok\n");
    other.insert(path, 0, "# too\n");
    let text = converge(&server, &room, path, &[&ed, &other], WAIT).await;
    assert!(
        text.contains("# ok\n") && text.contains("# too\n"),
        "{text:?}"
    );
    assert!(text.contains("abc🎉X\ndY\n"), "{text:?}");
    assert!(
        ed.shutdown().await.answered,
        "shutdown answered\n{}",
        ed.report()
    );
}

/// An editor that does not report its cursor (Helix) shows peers where its user last typed —
/// not where a peer's edit, applied in its buffer, ended; and people who chose no colour still
/// get different ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_edit_does_not_move_our_presence() {
    let (_db, server) = start().await;
    let initial = "one\ntwo\n";
    let room = server.create_room_with(&[("notes.txt", initial)]).await;
    let ann = FakeEditor::joined(Kind::Helix, "ann", &server, &room, "notes.txt").await;
    let bob = FakeEditor::joined(Kind::Helix, "bob", &server, &room, "notes.txt").await;
    let watcher = YClient::join(&server.ws_url(&room)).await;
    let head = |name: &str| {
        watcher
            .peers()
            .iter()
            .find(|p| p["user"]["name"] == name)
            .and_then(|p| p["cursor"]["head"].as_u64())
    };
    bob.insert("notes.txt", 0, "b");
    duet_e2e::eventually(WAIT, "bob's cursor after what he typed", || async {
        (head("bob") == Some(1)).then_some(())
    })
    .await;
    ann.insert("notes.txt", chars(initial) + 1, "ann was here\n");
    bob.wait_text("notes.txt", &format!("b{initial}ann was here\n"), WAIT)
        .await;
    duet_e2e::eventually(WAIT, "ann's cursor after what she typed", || async {
        (head("ann") == Some(utf16(&format!("b{initial}ann was here\n")) as u64)).then_some(())
    })
    .await;
    // Presence goes out at most every 100 ms: give a wrong update time to arrive.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(head("bob"), Some(1), "bob's cursor followed ann's edit");
    // Neither chose a colour: each gets one from the name, so they look different.
    let color = |name: &str| {
        watcher
            .peers()
            .iter()
            .find(|p| p["user"]["name"] == name)
            .map(|p| p["user"]["color"].clone())
    };
    assert_ne!(color("ann"), color("bob"), "{:?}", watcher.peers());
}

/// Where we typed, as peers see our cursor, is counted right in every position encoding: a
/// UTF-8 editor typing non-ASCII text after non-ASCII text, on one line and over two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_cursor_after_typing_non_ascii_is_right_in_utf8() {
    let (_db, server) = start().await;
    let initial = "héllo\n";
    let room = server.create_room_with(&[("notes.txt", initial)]).await;
    let ann = FakeEditor::builder(Kind::Helix)
        .label("ann")
        .position_encodings(Some(&["utf-8"]))
        .join(&server, &room, "notes.txt")
        .await;
    assert_eq!(ann.encoding().name(), "utf-8");
    let watcher = YClient::join(&server.ws_url(&room)).await;
    let head = || {
        watcher
            .peers()
            .iter()
            .find(|p| p["user"]["name"] == "ann")
            .and_then(|p| p["cursor"]["head"].as_u64())
    };
    ann.insert("notes.txt", 5, "üß");
    duet_e2e::eventually(WAIT, "ann's cursor after üß", || async {
        (head() == Some(utf16("hélloüß").into())).then_some(())
    })
    .await;
    ann.insert("notes.txt", 7, "ñ\n😀é");
    duet_e2e::eventually(WAIT, "ann's cursor after 😀é on the next line", || async {
        (head() == Some(utf16("hélloüßñ\n😀é").into())).then_some(())
    })
    .await;
}
