//! What the benchmarks (`bench-bridge`, `bench-room`, `bench-history`, `bench-nodes`,
//! `bench-limits`) share: their flags, the machine they ran on, the source text they edit,
//! percentiles of one run's samples, the median (with min–max) of a figure over runs, and a
//! process's CPU time.

use std::fmt;
use std::time::Duration;

/// The benchmarks' flags: `--quick` (a smoke run: fewer and shorter runs) and `--runs N`.
#[derive(Debug, Clone, Copy)]
pub struct Args {
    pub quick: bool,
    pub runs: usize,
}

impl Args {
    /// Parses the process's arguments; exits with a usage line on anything else.
    pub fn parse() -> Args {
        fn usage() -> ! {
            eprintln!("usage: [--quick] [--runs N]   (default: 3 runs, 1 with --quick)");
            std::process::exit(2)
        }
        let (mut quick, mut runs) = (false, None);
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--runs" => match it.next().and_then(|n| n.parse().ok()) {
                    Some(n) if n > 0 => runs = Some(n),
                    _ => usage(),
                },
                _ => usage(),
            }
        }
        Args {
            quick,
            runs: runs.unwrap_or(if quick { 1 } else { 3 }),
        }
    }

    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// The machine: CPU model, cores, RAM and kernel, from `/proc`.
pub fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    let cpuinfo = read("/proc/cpuinfo");
    let ram_kb: f64 = field(&read("/proc/meminfo"), "MemTotal")
        .trim_end_matches(" kB")
        .parse()
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "machine: {}, {cores} cores, {:.1} GiB RAM, Linux {}",
        field(&cpuinfo, "model name"),
        ram_kb / 1024.0 / 1024.0,
        read("/proc/sys/kernel/osrelease").trim()
    )
}

/// CPU seconds (user + system) a process has used, from `/proc` (10 ms ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// `size` bytes of Python-like source, in lines.
pub fn source(size: usize) -> String {
    let mut text = String::with_capacity(size + 64);
    let mut i = 0;
    while text.len() < size {
        text.push_str(&format!(
            "value_{i} = compute(value_{i}, other, {i})  # step {i}\n"
        ));
        i += 1;
    }
    text.truncate(size - 1);
    text.push('\n');
    text
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "no samples");
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// p50, p99 and max of one run's latencies, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Latency {
            p50: quantile(&ms, 0.5),
            p99: quantile(&ms, 0.99),
            max: quantile(&ms, 1.0),
        }
    }
}

/// One figure over several runs: printed as its median, with the range when there were
/// several runs (`1.23 (1.10–1.41)`).
#[derive(Debug, Clone, Default)]
pub struct Runs(pub Vec<f64>);

impl Runs {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        assert!(n > 0, "no runs");
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    /// Formats with `decimals` decimals.
    pub fn show(&self, decimals: usize) -> Shown<'_> {
        Shown(self, decimals)
    }
}

pub struct Shown<'a>(&'a Runs, usize);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (runs, d) = (self.0, self.1);
        let mut text = format!("{:.d$}", runs.median());
        if runs.0.len() > 1 {
            let min = runs.0.iter().copied().fold(f64::INFINITY, f64::min);
            let max = runs.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            text.push_str(&format!(" ({min:.d$}–{max:.d$})"));
        }
        f.pad(&text)
    }
}

/// p50, p99 and max over runs: each the median of the runs' own.
#[derive(Debug, Clone, Default)]
pub struct LatencyRuns {
    pub p50: Runs,
    pub p99: Runs,
    pub max: Runs,
}

impl LatencyRuns {
    pub fn push(&mut self, run: Latency) {
        self.p50.push(run.p50);
        self.p99.push(run.p99);
        self.max.push(run.max);
    }
}
