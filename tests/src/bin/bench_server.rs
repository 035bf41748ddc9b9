//! Server fan-out benchmark: `duet-server`, the reference `y-websocket` server and
//! `@hocuspocus/server`, under the same load generator and the same protocol, in one run, each
//! driven up a ladder of loads until its p99 latency crosses 50 ms.
//!
//! A load is rooms × peers per room × edits per second per peer. Every peer is one WebSocket
//! connection with its own Y.Doc in the generator, `tests/node/bench.mjs`, which speaks the
//! y-websocket protocol itself (and Hocuspocus's framing of the same messages, for
//! `@hocuspocus/server`). Each edit inserts text carrying an id; latency runs from the local edit
//! to the update applied at each other peer of the room. Per server and load it prints edits/s
//! achieved, WebSocket messages/s received by all peers, latency p50/p99/max, the server's peak
//! RSS and CPU (% of one core), and edits lost; each figure is the median of `--runs` runs
//! (default 3). `--quick` is a smoke check: one short run of two small loads.
//!
//! There are two ladders: many rooms of 5 peers, and one room of many peers. At each step the
//! three servers take turns, run by run, so machine noise hits all alike. A server leaves a ladder
//! after the first step whose median p99 exceeds 50 ms, or in which it lost edits or peers; that
//! step is its crossing point. Every run starts a fresh server. A run during which other processes
//! took over half a core is repeated (at most twice per server and step), and the step says so.
//!
//! duet-server persists to SQLite (its limits raised so that they do not throttle the load); the
//! Node servers keep documents in memory only. The generator runs as `--generators` (default 2) Node
//! processes (rooms split between them) on the same machine as the server; a note marks the steps
//! where a generator fell behind its schedule or stalled, or where other processes took CPU.
//!
//! ```sh
//! cargo build --release -p duet-e2e --bin bench-server -p duet-server
//! cargo run --release -p duet-e2e --bin bench-server [-- --quick] [--runs N] [--generators N]
//! ```
//!
//! The full run takes about 10 minutes on 2 cores.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use duet_e2e::server::{Backend, Database, Server, TempDir};
use duet_e2e::workspace;
use serde_json::{json, Value};

const USAGE: &str = "usage: bench-server [--quick] [--runs N] [--generators N]";

/// A server leaves the ladder at the first step whose median p99 is above this.
const P99_LIMIT_MS: f64 = 50.0;

/// A run during which other processes took more CPU than this (% of one core) is repeated, up to
/// `NOISY_RETRIES` times per server and step: the machine may be shared.
const NOISY_CPU: f64 = 50.0;
const NOISY_RETRIES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Duet,
    YWebsocket,
    Hocuspocus,
}

impl Target {
    const ALL: [Target; 3] = [Target::Duet, Target::YWebsocket, Target::Hocuspocus];

    fn name(self) -> &'static str {
        match self {
            Target::Duet => "duet",
            Target::YWebsocket => "y-websocket",
            Target::Hocuspocus => "hocuspocus",
        }
    }

    /// The Node launcher (in `tests/node`) and the wire protocol of a Node server.
    fn node_server(self) -> Option<(&'static str, &'static str)> {
        match self {
            Target::Duet => None,
            Target::YWebsocket => Some(("refserver.mjs", "yws")),
            Target::Hocuspocus => Some(("hocuspocus.mjs", "hocuspocus")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Load {
    rooms: usize,
    peers: usize,
    /// Edits per second per peer.
    rate: u32,
}

const fn load(rooms: usize, peers: usize, rate: u32) -> Load {
    Load { rooms, peers, rate }
}

impl Load {
    fn label(&self) -> String {
        format!("{}x{}x{}/s", self.rooms, self.peers, self.rate)
    }

    fn edits_per_sec(&self) -> f64 {
        (self.rooms * self.peers) as f64 * f64::from(self.rate)
    }
}

/// Many rooms of 5 peers typing 10 edits/s each (about a fast typist): more rooms each step.
const ROOMS_LADDER: &[Load] = &[
    load(10, 5, 10),
    load(50, 5, 10),
    load(100, 5, 10),
    load(150, 5, 10),
    load(200, 5, 10),
    load(300, 5, 10),
];

/// One room, more peers each step: deliveries grow with the square of the peer count. A room
/// cannot be split between generator processes, so one generator process takes all of it.
const PEERS_LADDER: &[Load] = &[
    load(1, 20, 10),
    load(1, 40, 10),
    load(1, 60, 10),
    load(1, 80, 10),
];

const QUICK_LADDER: &[Load] = &[load(10, 4, 5), load(50, 4, 5)];

struct Settings {
    runs: usize,
    /// Measured seconds per run, after `warmup` seconds of editing.
    duration: u32,
    warmup: u32,
    generators: usize,
    ladders: Vec<&'static [Load]>,
}

impl Settings {
    fn from_args() -> anyhow::Result<Settings> {
        let mut settings = Settings {
            runs: 3,
            duration: 5,
            warmup: 2,
            generators: 2,
            ladders: vec![ROOMS_LADDER, PEERS_LADDER],
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = || -> anyhow::Result<usize> {
                let value = args.next().unwrap_or_default();
                match value.parse() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => anyhow::bail!("{arg} needs a positive number, got {value:?}"),
                }
            };
            match arg.as_str() {
                "--quick" => {
                    settings.runs = 1;
                    settings.duration = 3;
                    settings.warmup = 1;
                    settings.ladders = vec![QUICK_LADDER];
                }
                "--runs" => settings.runs = number()?,
                "--generators" => settings.generators = number()?,
                _ => anyhow::bail!("unknown argument {arg}; {USAGE}"),
            }
        }
        Ok(settings)
    }
}

/// The figures of one run (merged over the generator processes), or the medians of several.
#[derive(Debug, Clone, Copy)]
struct Figures {
    edits_per_sec: f64,
    msgs_per_sec: f64,
    p50: f64,
    p99: f64,
    max: f64,
    peak_mb: f64,
    cpu_pct: f64,
    lost: f64,
    /// Connect failures, disconnects, errors and diverged rooms.
    failures: f64,
    /// The busiest generator process: CPU (% of one core) and event-loop delay p99 (ms).
    generator_cpu: f64,
    generator_loop_p99: f64,
    /// Machine CPU (% of one core) used by neither the server nor the generators.
    other_cpu: f64,
}

impl Figures {
    fn median(runs: &[Figures]) -> Figures {
        let m = |field: fn(&Figures) -> f64| median(runs.iter().map(field).collect());
        Figures {
            edits_per_sec: m(|r| r.edits_per_sec),
            msgs_per_sec: m(|r| r.msgs_per_sec),
            p50: m(|r| r.p50),
            p99: m(|r| r.p99),
            max: m(|r| r.max),
            peak_mb: m(|r| r.peak_mb),
            cpu_pct: m(|r| r.cpu_pct),
            lost: m(|r| r.lost),
            failures: m(|r| r.failures),
            generator_cpu: m(|r| r.generator_cpu),
            generator_loop_p99: m(|r| r.generator_loop_p99),
            other_cpu: m(|r| r.other_cpu),
        }
    }

    /// Merges the results of the generator processes that shared one run.
    fn merge(results: &[Value]) -> Figures {
        let sum = |p: &str| results.iter().map(|r| f(r, p)).sum::<f64>();
        let largest = |p: &str| results.iter().map(|r| f(r, p)).fold(f64::NAN, f64::max);
        let mean = |p: &str| sum(p) / results.len() as f64;
        let mut samples: Vec<f64> = results
            .iter()
            .filter_map(|r| r["samples"].as_array())
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        samples.sort_by(f64::total_cmp);
        let cpu_pct = mean("/server/cpuPct");
        let generators_cpu = sum("/client/cpuPct");
        Figures {
            edits_per_sec: sum("/editsPerSec"),
            msgs_per_sec: sum("/msgsPerSec"),
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
            max: percentile(&samples, 100.0),
            peak_mb: largest("/server/rssPeakMB"),
            cpu_pct,
            lost: sum("/lostEdits"),
            failures: sum("/connectFailures")
                + sum("/disconnects")
                + sum("/errors")
                + sum("/divergedRooms"),
            generator_cpu: largest("/client/cpuPct"),
            generator_loop_p99: largest("/client/loopDelayP99Ms"),
            other_cpu: (mean("/machine/cpuPct") - cpu_pct - generators_cpu).max(0.0),
        }
    }
}

fn f(result: &Value, pointer: &str) -> f64 {
    result
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The same nearest-rank percentile as bench.mjs.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const EXPLANATION: &str = "\
Figures are medians of the runs. msgs/s counts every WebSocket message the peers received, and
per edit in a room of N peers duet sends N-1 (one per other peer), y-websocket N (it also echoes
the update to its sender) and hocuspocus N+1 (the echo, and a SyncStatus ack to the sender).
CPU % is of one core: duet-server is multi-threaded, the Node servers are not. ratio = duet / other
server; below 1 is better for duet. duet persists every room to SQLite; y-websocket and hocuspocus
keep documents in memory only. The generator processes share the machine's cores with the server.";

/// What happened to one server at one step.
struct Outcome {
    median: Figures,
    /// Why the server leaves the ladder here, if it does.
    crossed: Option<String>,
    notes: Vec<String>,
}

impl Outcome {
    fn new(load: &Load, runs: &[anyhow::Result<Figures>], repeated: usize) -> Outcome {
        let ok: Vec<Figures> = runs
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let median = Figures::median(&ok);
        let failed = runs.iter().find_map(|r| r.as_ref().err());
        let lossy = ok
            .iter()
            .filter(|r| r.lost > 0.0 || r.failures > 0.0)
            .count();
        let crossed = if let Some(err) = failed {
            let first_line = format!("{err:#}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            Some(format!("run failed: {first_line}"))
        } else if lossy > 0 {
            Some(format!(
                "lost edits or peers in {lossy} of {} runs",
                ok.len()
            ))
        } else if median.p99 > P99_LIMIT_MS {
            Some(format!("p99 > {P99_LIMIT_MS} ms"))
        } else {
            None
        };
        let mut notes = Vec::new();
        let behind = median.edits_per_sec / load.edits_per_sec();
        if behind < 0.95 || median.generator_loop_p99 > 10.0 || median.generator_cpu > 90.0 {
            notes.push(format!(
                "generator-bound? ({:.0}% of target rate, its CPU {:.0}%, loop p99 {:.0} ms)",
                behind * 100.0,
                median.generator_cpu,
                median.generator_loop_p99
            ));
        }
        if median.other_cpu > 25.0 {
            notes.push(format!("other load {:.0}% of a core", median.other_cpu));
        }
        if repeated > 0 {
            notes.push(format!("{repeated} run(s) repeated for other load"));
        }
        Outcome {
            median,
            crossed,
            notes,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_args()?;
    print_setup(&settings)?;
    let mut crossings = Vec::new();
    let mut clean_at_low_load = true;
    for ladder in &settings.ladders {
        let mut active = Target::ALL.to_vec();
        for (step, load) in ladder.iter().enumerate() {
            if active.is_empty() {
                break;
            }
            let mut runs: Vec<Vec<anyhow::Result<Figures>>> =
                active.iter().map(|_| Vec::new()).collect();
            let mut repeated = vec![0; active.len()];
            for _ in 0..settings.runs {
                for ((target, runs), repeated) in active.iter().zip(&mut runs).zip(&mut repeated) {
                    let mut result = run(*target, load, &settings).await;
                    while *repeated < NOISY_RETRIES
                        && result.as_ref().is_ok_and(|r| r.other_cpu > NOISY_CPU)
                    {
                        *repeated += 1;
                        result = run(*target, load, &settings).await;
                    }
                    if let Err(err) = &result {
                        eprintln!("{} at {}: {err:#}", target.name(), load.label());
                    }
                    runs.push(result);
                }
            }
            let outcomes: Vec<(Target, Outcome)> = active
                .iter()
                .zip(&runs)
                .zip(&repeated)
                .map(|((target, runs), repeated)| (*target, Outcome::new(load, runs, *repeated)))
                .collect();
            print_step(load, &outcomes);
            for (target, outcome) in &outcomes {
                if let Some(why) = &outcome.crossed {
                    clean_at_low_load &= step > 0;
                    crossings.push(format!(
                        "{:<12} {:<14} p99 {:>7.1} ms  ({why})",
                        target.name(),
                        load.label(),
                        outcome.median.p99
                    ));
                    active.retain(|t| t != target);
                }
            }
        }
        let last = ladder.last().expect("ladders are not empty").label();
        for target in active {
            crossings.push(format!("{:<12} not crossed up to {last}", target.name()));
        }
    }
    println!();
    println!("Crossing points (median p99 > {P99_LIMIT_MS} ms, lost edits or a failed run):");
    for line in &crossings {
        println!("  {line}");
    }
    println!();
    println!("{EXPLANATION}");
    anyhow::ensure!(
        clean_at_low_load,
        "a server already failed the first step of a ladder (see above)"
    );
    Ok(())
}

fn print_setup(settings: &Settings) -> anyhow::Result<()> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, model)| model.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kb: f64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let node = node(&["--version"]).output()?;
    let version = |package: &str| -> String {
        let path = workspace().join(format!("tests/node/node_modules/{package}/package.json"));
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "machine: {cpu}, {cores} cores, {:.1} GiB RAM, Linux {}",
        ram_kb / 1048576.0,
        kernel.trim()
    );
    println!(
        "duet-server {} ({} build, SQLite), y-websocket {}, @hocuspocus/server {}, Node {}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        version("y-websocket"),
        version("@hocuspocus/server"),
        String::from_utf8_lossy(&node.stdout).trim()
    );
    println!(
        "per step: {} run(s) per server in turn, {} s measured after {} s warmup, up to {} generator processes",
        settings.runs, settings.duration, settings.warmup, settings.generators
    );
    println!();
    println!(
        "{:<14} {:<16} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>6} {:>5}  notes",
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
    Ok(())
}

fn print_step(load: &Load, outcomes: &[(Target, Outcome)]) {
    let label = load.label();
    for (target, outcome) in outcomes {
        let r = &outcome.median;
        let mut notes = outcome.notes.clone();
        if let Some(why) = &outcome.crossed {
            notes.insert(0, format!("CROSSED: {why}"));
        }
        let line = format!(
            "{:<14} {:<16} {:>8.0} {:>8.0} {:>7.2} {:>7.2} {:>7.1} {:>8.1} {:>6.1} {:>5.0}  {}",
            label,
            target.name(),
            r.edits_per_sec,
            r.msgs_per_sec,
            r.p50,
            r.p99,
            r.max,
            r.peak_mb,
            r.cpu_pct,
            r.lost,
            notes.join("; ")
        );
        println!("{}", line.trim_end());
    }
    let Some((_, duet)) = outcomes.iter().find(|(t, _)| *t == Target::Duet) else {
        return;
    };
    for (target, other) in outcomes.iter().filter(|(t, _)| *t != Target::Duet) {
        let (a, b) = (&duet.median, &other.median);
        let ratio = |x: f64, y: f64| x / y.max(1e-9);
        println!(
            "{:<14} {:<16} {:>8.2} {:>8.2} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>6.2}",
            label,
            format!("duet/{}", target.name()),
            ratio(a.edits_per_sec, b.edits_per_sec),
            ratio(a.msgs_per_sec, b.msgs_per_sec),
            ratio(a.p50, b.p50),
            ratio(a.p99, b.p99),
            ratio(a.max, b.max),
            ratio(a.peak_mb, b.peak_mb),
            ratio(a.cpu_pct, b.cpu_pct),
        );
    }
}

/// One run: a fresh server, the load from the generator processes, their merged figures.
async fn run(target: Target, load: &Load, settings: &Settings) -> anyhow::Result<Figures> {
    let dir = TempDir::new("bench-server");
    match target.node_server() {
        None => {
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
            generate(
                load,
                settings,
                &dir.0,
                &rooms,
                (&server.ws_base(), "yws"),
                server.pid(),
            )
        }
        Some((script, protocol)) => {
            let server = NodeServer::start(script)?;
            let rooms: Vec<Value> = (0..load.rooms)
                .map(|i| json!({"room": format!("bench-{i}")}))
                .collect();
            let url = format!("ws://127.0.0.1:{}", server.port);
            generate(
                load,
                settings,
                &dir.0,
                &rooms,
                (&url, protocol),
                server.child.id(),
            )
        }
    }
}

/// `refserver.mjs` or `hocuspocus.mjs` on a free port; killed on drop (and it exits by itself
/// when its stdin closes, should this process die first).
struct NodeServer {
    child: Child,
    port: u16,
}

impl NodeServer {
    fn start(script: &str) -> anyhow::Result<NodeServer> {
        let mut server = NodeServer {
            child: node(&[script, "--port", "0", "--exit-on-stdin-eof"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?,
            port: 0,
        };
        let stdout = server.child.stdout.take().expect("stdout");
        let line = read_line(&mut BufReader::new(stdout))?;
        server.port = line
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{script} printed {line:?}, not `listening <port>`"))?;
        Ok(server)
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load against `url` from up to `settings.generators` bench.mjs processes, the rooms
/// split between them, all starting to edit at once; merges their results.
fn generate(
    load: &Load,
    settings: &Settings,
    dir: &Path,
    rooms: &[Value],
    (url, protocol): (&str, &str),
    pid: u32,
) -> anyhow::Result<Figures> {
    let count = settings.generators.min(rooms.len());
    let (peers, rate, pid) = (
        load.peers.to_string(),
        load.rate.to_string(),
        pid.to_string(),
    );
    let (duration, warmup) = (settings.duration.to_string(), settings.warmup.to_string());
    let mut generators = Vec::new();
    for k in 0..count {
        let share: Vec<&Value> = rooms.iter().skip(k).step_by(count).collect();
        let rooms_file = dir.join(format!("rooms-{k}.json"));
        std::fs::write(&rooms_file, serde_json::to_vec(&share)?)?;
        let log = dir.join(format!("generator-{k}.log"));
        let rooms_file = rooms_file.display().to_string();
        #[rustfmt::skip]
        let args = [
            "bench.mjs", "--url", url, "--protocol", protocol, "--rooms-from", &rooms_file,
            "--peers", &peers, "--rate", &rate, "--duration", &duration, "--warmup", &warmup,
            "--pid", &pid, "--json", "--samples", "--sync-start",
        ];
        let mut child = node(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?)
            .spawn()?;
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        generators.push(Generator { child, stdout, log });
    }
    // Everybody connected first, then everybody starts editing.
    let ready: Vec<anyhow::Result<String>> = generators.iter_mut().map(|g| g.read_line()).collect();
    for g in &mut generators {
        let _ = g.child.stdin.as_mut().expect("stdin").write_all(b"go\n");
    }
    let mut results = Vec::new();
    for (g, ready) in generators.iter_mut().zip(ready) {
        let line = ready.and_then(|line| match line.as_str() {
            "ready" => g.read_line(),
            _ => Ok(line),
        });
        let result = line.and_then(|line| Ok(serde_json::from_str::<Value>(&line)?));
        let _ = g.child.wait();
        results.push(result.map_err(|e| {
            let log = std::fs::read_to_string(&g.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::anyhow!(
                "bench.mjs gave no result ({e:#}); its log ends:\n{}",
                tail.join("\n")
            )
        })?);
    }
    Ok(Figures::merge(&results))
}

/// One bench.mjs process.
struct Generator {
    child: Child,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

impl Generator {
    fn read_line(&mut self) -> anyhow::Result<String> {
        read_line(&mut self.stdout)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of a child's stdout.
fn read_line(stdout: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let mut line = String::new();
    anyhow::ensure!(stdout.read_line(&mut line)? > 0, "end of output");
    Ok(line.trim_end().to_string())
}

fn node(args: &[&str]) -> Command {
    let mut command = Command::new("node");
    command
        .args(args)
        .current_dir(workspace().join("tests/node"));
    command
}
