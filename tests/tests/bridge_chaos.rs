//! The bridge when things go wrong around it: the room server killed (`kill -9`) and restarted
//! while people keep typing, and a seeded randomized run of several editors of mixed kinds
//! (`DUET_SEED=<n>` replays a run's choices; timing still varies).

use std::time::Duration;

use duet_e2e::editor::{assert_once, converge, marker_mask, FakeEditor, Kind, Rng, WAIT};
use duet_e2e::proxy::Proxy;
use duet_e2e::server::{Backend, Database, Server};
use futures_util::future::join_all;

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Two people keep typing while the server dies without flushing and comes back: nothing
/// typed is lost, both converge with the restarted server, and the person was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_while_typing_loses_nothing() {
    let db = Database::new(Backend::Sqlite);
    let mut server = Server::start(&db, &[]).await;
    let initial = "start\n";
    let room = server.create_room_with(&[("notes.txt", initial)]).await;
    let a = FakeEditor::builder(Kind::VsCode)
        .label("ann")
        .typing_delay(Duration::from_millis(10))
        .join(&server, &room, "notes.txt")
        .await;
    let b = FakeEditor::builder(Kind::Neovim)
        .label("bob")
        .debounce(Duration::ZERO)
        .typing_delay(Duration::from_millis(14))
        .join(&server, &room, "notes.txt")
        .await;
    let mark = a.mark();
    let pa: String = (0..40).map(|i| format!("[a{i}é🎉]")).collect();
    let pb: String = (0..25).map(|i| format!("<b{i}世>\n")).collect();
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        server.kill9();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        server.restart().await;
    };
    tokio::join!(
        a.type_text("notes.txt", chars(initial), &pa),
        b.type_text("notes.txt", 0, &pb),
        chaos
    );
    let expected = format!("{pb}{initial}{pa}");
    let text = converge(
        &server,
        &room,
        "notes.txt",
        &[&a, &b],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(text, expected);

    // Ann was told she was offline (status or message), and is connected again.
    let told = a.received().into_iter().skip(mark).any(|r| {
        let text = r.params["message"].as_str().unwrap_or("").to_lowercase();
        (r.method == "duet/status"
            && matches!(r.params["state"].as_str(), Some("offline" | "connecting")))
            || (r.method == "window/showMessage"
                && ["offline", "disconnect", "lost", "reconnect"]
                    .iter()
                    .any(|w| text.contains(w)))
    });
    assert!(
        told,
        "ann was not told the server went away\n{}",
        a.report()
    );
    a.wait_connected(WAIT).await;
    b.wait_connected(WAIT).await;
}

/// The network under one editor goes silent (nothing arrives, nothing is closed, as when Wi-Fi
/// drops): its bridge notices within seconds and says so, reconnects once the network is back,
/// and what both people typed meanwhile reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_cut_is_noticed_and_nothing_typed_is_lost() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let initial = "start\n";
    let room = server.create_room_with(&[("notes.txt", initial)]).await;
    let proxy = Proxy::start(server.port).await;
    let invite = server
        .ws_url(&room)
        .replace(&format!(":{}/", server.port), &format!(":{}/", proxy.port));
    let a = FakeEditor::builder(Kind::VsCode)
        .label("ann")
        .invite(&invite)
        .start()
        .await;
    a.wait_connected(WAIT).await;
    a.open("notes.txt", initial);
    let b = FakeEditor::builder(Kind::Neovim)
        .label("bob")
        .debounce(Duration::ZERO)
        .join(&server, &room, "notes.txt")
        .await;

    proxy.cut();
    let cut = tokio::time::Instant::now();
    let ann = "typed while cut off 🎉\n";
    let bob = "bob meanwhile 世界\n";
    tokio::join!(
        a.type_text("notes.txt", chars(initial), ann),
        b.type_text("notes.txt", 0, bob)
    );
    a.wait_status(&["offline", "connecting"], Duration::from_secs(15))
        .await;
    let noticed = cut.elapsed();
    assert!(
        noticed < Duration::from_secs(10),
        "the bridge noticed the silent network only after {noticed:?}"
    );
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;
    proxy.restore();
    a.wait_connected(Duration::from_secs(30)).await;
    let text = converge(
        &server,
        &room,
        "notes.txt",
        &[&a, &b],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(text, format!("{bob}{initial}{ann}"));
}

/// One person types while the server is down; the others only wait. Whatever order the
/// bridges reconnect in, the offline edits reach every editor — three outages in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_reach_editors_that_reconnected_first() {
    let db = Database::new(Backend::Sqlite);
    let mut server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("notes.txt", "start\n")]).await;
    let mut editors = Vec::new();
    for (kind, label) in [
        (Kind::VsCode, "ann"),
        (Kind::Neovim, "bob"),
        (Kind::Helix, "cy"),
        (Kind::VsCode, "dee"),
    ] {
        editors.push(
            FakeEditor::builder(kind)
                .label(label)
                .debounce(Duration::ZERO)
                .join(&server, &room, "notes.txt")
                .await,
        );
    }
    let refs: Vec<&FakeEditor> = editors.iter().collect();
    let mut expected = String::from("start\n");
    for round in 0..3 {
        let typist = &editors[round % editors.len()];
        server.kill9();
        for ed in &editors {
            ed.wait_status(&["offline", "connecting"], WAIT).await;
        }
        let line = format!("offline {round} by {} é🎉\n", typist.label);
        typist.type_text("notes.txt", chars(&expected), &line).await;
        expected.push_str(&line);
        server.restart().await;
        let text = converge(&server, &room, "notes.txt", &refs, Duration::from_secs(30)).await;
        assert_eq!(text, expected, "after outage {round}");
    }
}

const PATH: &str = "random.txt";
const FILLER: &[&str] = &["a", "b", " ", "é", "世", "界", "🎉", "\n", "x", "—", "ñ"];

/// A random insertion point that is not inside a marker.
fn insertion_point(text: &[char], mask: &[bool], rng: &mut Rng) -> usize {
    let allowed: Vec<usize> = (0..=text.len())
        .filter(|&b| b == 0 || !mask[b - 1] || text[b - 1] == '»')
        .collect();
    *rng.pick(&allowed)
}

/// A random range of 1–5 characters outside every marker, if there is one.
fn filler_range(mask: &[bool], rng: &mut Rng) -> Option<(usize, usize)> {
    let starts: Vec<usize> = (0..mask.len()).filter(|&i| !mask[i]).collect();
    if starts.is_empty() {
        return None;
    }
    let start = *rng.pick(&starts);
    let mut end = start + 1;
    let want = 1 + rng.below(5);
    while end < mask.len() && end - start < want && !mask[end] {
        end += 1;
    }
    Some((start, end))
}

fn filler(rng: &mut Rng) -> String {
    (0..1 + rng.below(4)).map(|_| *rng.pick(FILLER)).collect()
}

/// One person's random session: inserts markers (never deleted by anyone) and filler, deletes
/// and replaces filler only. Returns the markers inserted.
async fn random_session(ed: &FakeEditor, who: usize, seed: u64, ops: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut markers = Vec::new();
    for k in 0..ops {
        let roll = rng.below(100);
        let marker = format!("«{who}.{k}»");
        let mut inserted_marker = false;
        ed.edit_with(PATH, |text| {
            let text: Vec<char> = text.chars().collect();
            let mask = marker_mask(&text);
            match roll {
                0..=29 => {
                    inserted_marker = true;
                    let at = insertion_point(&text, &mask, &mut rng);
                    vec![(at, at, marker.clone())]
                }
                30..=59 => {
                    let at = insertion_point(&text, &mask, &mut rng);
                    vec![(at, at, filler(&mut rng))]
                }
                60..=84 => filler_range(&mask, &mut rng)
                    .map(|(a, b)| vec![(a, b, String::new())])
                    .unwrap_or_default(),
                _ => filler_range(&mask, &mut rng)
                    .map(|(a, b)| vec![(a, b, filler(&mut rng))])
                    .unwrap_or_default(),
            }
        });
        if inserted_marker {
            markers.push(marker);
        }
        // Helix completion previews: the version jumps, then the accepted item is sent.
        if ed.kind == Kind::Helix && rng.chance(10) {
            ed.helix_skip_versions(PATH, 1 + rng.below(3) as i64);
            ed.edit_with(PATH, |text| {
                let text: Vec<char> = text.chars().collect();
                let mask = marker_mask(&text);
                let at = insertion_point(&text, &mask, &mut rng);
                vec![(at, at, filler(&mut rng))]
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.below(16) as u64)).await;
    }
    markers
}

/// N = 3–4 editors of random kinds edit at random with random pauses while the server is
/// killed and restarted once; then all buffers equal the server's text and every marker is
/// there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_editors_converge() {
    randomized_run("randomized_editors_converge", true).await;
}

/// The same without the outage: what remains is the editor ↔ bridge transform alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_editors_converge_without_outage() {
    randomized_run("randomized_editors_converge_without_outage", false).await;
}

async fn randomized_run(test: &str, outage: bool) {
    let mut rng = Rng::from_env(test);
    let db = Database::new(Backend::Sqlite);
    let mut server = Server::start(&db, &[]).await;
    let initial = "# random\nsome filler 世界 🎉\n«seed»\n";
    let room = server.create_room_with(&[(PATH, initial)]).await;
    let n = 3 + rng.below(2);
    let mut editors = Vec::new();
    for i in 0..n {
        let kind = *rng.pick(&Kind::ALL);
        let debounce = Duration::from_millis(if rng.chance(50) { 150 } else { 0 });
        let label = format!("e{i}-{}", kind.name());
        eprintln!("{label} (neovim debounce {debounce:?})");
        editors.push(
            FakeEditor::builder(kind)
                .label(&label)
                .debounce(debounce)
                .join(&server, &room, PATH)
                .await,
        );
    }
    let ops = 40 + rng.below(40);
    let seeds: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
    // Sessions last about ops × 8 ms: the server dies somewhere inside them.
    let kill_after = Duration::from_millis(150 + rng.below(ops * 6) as u64);
    let down_for = Duration::from_millis(200 + rng.below(800) as u64);
    if outage {
        eprintln!(
            "{n} editors, {ops} ops each, server killed after {kill_after:?} for {down_for:?}"
        );
    } else {
        eprintln!("{n} editors, {ops} ops each, no outage");
    }

    let sessions = join_all(
        editors
            .iter()
            .enumerate()
            .map(|(i, ed)| random_session(ed, i, seeds[i], ops)),
    );
    let chaos = async {
        if outage {
            tokio::time::sleep(kill_after).await;
            server.kill9();
            tokio::time::sleep(down_for).await;
            server.restart().await;
        }
    };
    let (markers, ()) = tokio::join!(sessions, chaos);

    let refs: Vec<&FakeEditor> = editors.iter().collect();
    let text = converge(&server, &room, PATH, &refs, Duration::from_secs(60)).await;
    assert_once(&text, "«seed»");
    for marker in markers.iter().flatten() {
        assert_once(&text, marker);
    }
    // Nothing but whole markers between « and ».
    let mask = marker_mask(&text.chars().collect::<Vec<_>>());
    assert_eq!(
        mask.iter().filter(|&&m| m).count(),
        markers.iter().flatten().map(|m| chars(m)).sum::<usize>() + chars("«seed»"),
        "markers were split or damaged: {text:?}"
    );
    for ed in &editors {
        ed.assert_no_violations();
        assert!(ed.alive(), "{} died\n{}", ed.label, ed.report());
    }
}
