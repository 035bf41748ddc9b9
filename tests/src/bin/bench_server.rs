//! Server fan-out benchmark: the same load, from the same generator (`tests/node/bench.mjs`,
//! raw y-websocket protocol), against `duet-server` and against the reference `y-websocket`
//! server, in one run; prints both sets of figures side by side with their ratios.
//!
//! `cargo run --release -p duet-e2e --bin bench-server [-- --quick]`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::workspace;
use serde_json::{json, Value};

struct Load {
    rooms: usize,
    peers: usize,
    rate: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = if quick { "4" } else { "10" };
    let loads: &[Load] = if quick {
        &[Load {
            rooms: 10,
            peers: 4,
            rate: 5,
        }]
    } else {
        &[
            Load {
                rooms: 10,
                peers: 5,
                rate: 10,
            },
            Load {
                rooms: 50,
                peers: 4,
                rate: 5,
            },
            Load {
                rooms: 1,
                peers: 20,
                rate: 10,
            },
            Load {
                rooms: 100,
                peers: 5,
                rate: 5,
            },
        ]
    };
    println!(
        "{:<16} {:<10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6}",
        "load",
        "server",
        "edits/s",
        "msgs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "peak MB",
        "CPU %",
        "lost"
    );
    for load in loads {
        let label = format!("{}x{}x{}/s", load.rooms, load.peers, load.rate);
        let ours = run_duet(load, duration).await?;
        let reference = run_reference(load, duration)?;
        for (name, r) in [("duet", &ours), ("y-websocket", &reference)] {
            println!(
                "{:<16} {:<10} {:>9.0} {:>9.0} {:>8.2} {:>8.2} {:>8.1} {:>9.1} {:>7.1} {:>6}",
                label,
                name,
                f(r, "/editsPerSec"),
                f(r, "/msgsPerSec"),
                f(r, "/latencyMs/p50"),
                f(r, "/latencyMs/p99"),
                f(r, "/latencyMs/max"),
                f(r, "/server/rssPeakMB"),
                f(r, "/server/cpuPct"),
                f(r, "/lostEdits"),
            );
        }
        let ratio = |p: &str| f(&ours, p) / f(&reference, p).max(1e-9);
        println!(
            "{:<16} {:<10} {:>9} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7.2}",
            label,
            "ratio",
            "",
            "",
            ratio("/latencyMs/p50"),
            ratio("/latencyMs/p99"),
            ratio("/latencyMs/max"),
            ratio("/server/rssPeakMB"),
            ratio("/server/cpuPct"),
        );
    }
    println!("(ratio = duet / y-websocket; below 1 is better for duet. msgs/s counts every message received,");
    println!(" and the reference server also echoes each update back to its sender.)");
    Ok(())
}

fn f(result: &Value, pointer: &str) -> f64 {
    result
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

async fn run_duet(load: &Load, duration: &str) -> anyhow::Result<Value> {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(
        &db,
        &["--max-peers", "1000", "--max-messages-per-second", "10000"],
    )
    .await;
    let mut rooms = Vec::new();
    for _ in 0..load.rooms {
        let room = server.create_room_with(&[("main.py", "")]).await;
        rooms.push(json!({"room": room.id, "token": room.token}));
    }
    let file = db.dir.0.join("rooms.json");
    std::fs::write(&file, serde_json::to_vec(&rooms)?)?;
    let base = server.ws_base();
    let rooms_from = file.display().to_string();
    bench(
        load,
        duration,
        &base,
        server.pid(),
        &["--rooms-from", &rooms_from],
    )
}

fn run_reference(load: &Load, duration: &str) -> anyhow::Result<Value> {
    let mut child = node(&["refserver.mjs", "--port", "0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_default()
        .to_string();
    let result = bench(
        load,
        duration,
        &format!("ws://127.0.0.1:{port}"),
        child.id(),
        &[],
    );
    stop(&mut child);
    result
}

fn bench(
    load: &Load,
    duration: &str,
    url: &str,
    pid: u32,
    extra: &[&str],
) -> anyhow::Result<Value> {
    let (rooms, peers, rate) = (
        load.rooms.to_string(),
        load.peers.to_string(),
        load.rate.to_string(),
    );
    let pid = pid.to_string();
    let mut args = vec![
        "bench.mjs",
        "--url",
        url,
        "--rooms",
        &rooms,
        "--peers",
        &peers,
        "--rate",
        &rate,
        "--duration",
        duration,
        "--warmup",
        "2",
        "--pid",
        &pid,
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = node(&args).stderr(Stdio::inherit()).output()?;
    let line = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(line.trim())
        .map_err(|e| anyhow::anyhow!("bench.mjs printed no result ({e}): {line}"))
}

fn node(args: &[&str]) -> Command {
    let mut command = Command::new("node");
    command
        .args(args)
        .current_dir(workspace().join("tests/node"));
    command
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
