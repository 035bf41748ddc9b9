//! Bridge benchmarks, through the real `duet-lsp` and `duet-server` processes:
//!
//! - edit latency: a keystroke sent by editor A (a `didChange` into A's bridge) until it is
//!   in editor B's buffer (B's bridge applied it with `workspace/applyEdit`), at 1, 10 and 50
//!   keystrokes a second;
//! - completion latency: `textDocument/completion` round trips on a 10,000-line file, each
//!   after an edit, measured by the editor (so including JSON-RPC over stdio).
//!
//! `cargo run --release -p duet-e2e --bin bench-bridge [-- --quick]`

use std::time::{Duration, Instant};

use duet_e2e::editor::{FakeEditor, Kind};
use duet_e2e::server::{Backend, Database, Server};

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;

    println!(
        "edit latency, editor A keystroke -> editor B buffer (scripted VS Code editors, one room)"
    );
    println!(
        "{:>10} {:>8} {:>9} {:>9} {:>9}",
        "rate", "samples", "p50 ms", "p99 ms", "max ms"
    );
    for rate in [1u32, 10, 50] {
        let samples = if quick {
            20
        } else {
            (rate as usize * 10).clamp(30, 300)
        };
        let room = server.create_room_with(&[("main.py", "start\n")]).await;
        let a = FakeEditor::joined(Kind::VsCode, "a", &server, &room, "main.py").await;
        let b = FakeEditor::joined(Kind::VsCode, "b", &server, &room, "main.py").await;
        let mut latencies = Vec::with_capacity(samples);
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        for i in 0..samples {
            let started = Instant::now();
            let marker = format!("<{i}>");
            let end = a.text("main.py").chars().count();
            a.insert("main.py", end, &marker);
            loop {
                if b.text("main.py").contains(&marker) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "keystroke {i} never arrived"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            latencies.push(started.elapsed());
            if let Some(rest) = interval.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        let (p50, p99, max) = percentiles(&mut latencies);
        println!(
            "{:>7}/s {:>8} {:>9.2} {:>9.2} {:>9.2}",
            rate, samples, p50, p99, max
        );
    }

    let lines = 10_000;
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!(
            "def function_{i}(value_{i}, other):\n    return value_{i} + other\n"
        ));
    }
    let room = server.create_room_with(&[("big.py", &text)]).await;
    let editor = FakeEditor::joined(Kind::Neovim, "c", &server, &room, "big.py").await;
    let requests = if quick { 100 } else { 1000 };
    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        // Type a word on a line in the middle, then complete it.
        let offset = editor.text("big.py").len() / 2;
        editor.insert("big.py", offset, "\nimp");
        let at = offset + 4;
        let started = Instant::now();
        let answer = editor.completion("big.py", at).await;
        latencies.push(started.elapsed());
        assert!(
            answer.to_string().contains("import"),
            "no import suggestion: {answer}"
        );
    }
    let (p50, p99, max) = percentiles(&mut latencies);
    println!("\ncompletion on a {lines}-line file ({requests} requests, each after an edit)");
    println!("p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms (round trip over stdio, measured by the editor)");
}

/// p50, p99 and max in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99), at(1.0))
}
