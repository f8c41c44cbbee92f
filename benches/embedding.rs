//! Benchmarks of the embedding layer (`tilebox::python`), through the library API a runner
//! uses: `python::load(Release, Placement)`, then `LoadedRelease::execute` and
//! `LoadedRelease::execute_batch`.
//!
//! Run with `cargo bench --bench embedding` (or `... -- calls` for some of the sections
//! `calls`, `parallel`, `memory`). It prints the machine's load average, then markdown tables
//! to stdout (progress goes to stderr):
//! - **calls**: a trivial task executed from one tokio task, in an own-GIL sub-interpreter
//!   and in a child process, one task per call (`execute`) and in batches
//!   (`execute_batch`): µs per task and the child-to-sub-interpreter ratios, next to the
//!   runtime's `execute` in a hot Python loop and the same channel round trip without Python;
//! - **parallel**: a CPU-bound pure-Python task, K tasks on one sub-interpreter vs 2K tasks
//!   split across two sub-interpreters running concurrently (wall times, speedup), with two
//!   child processes as the baseline;
//! - **memory**: VmRSS of this process before and after loading 1, 2 and 4 sub-interpreters
//!   of a small release.
//!
//! Without `--bench` (e.g. `cargo test --benches`) it runs a much smaller smoke version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tilebox::python::{self, LoadedRelease, Placement, Release, TaskOutcome, TaskRequest};

/// How much work each measurement does.
struct Settings {
    /// Calls before the measured rounds (per placement, singly and in the largest batches).
    warm_up_calls: usize,
    /// Tasks per measured round.
    calls: usize,
    /// Measured rounds of `calls` (per placement and batch size).
    call_rounds: usize,
    /// Batch sizes of the calls table, ascending; 1 is a plain `execute`.
    batch_sizes: &'static [usize],
    /// Target duration of one CPU-bound task; its loop length is calibrated to this.
    spin_target: Duration,
    /// K: CPU-bound tasks per interpreter per round.
    spin_tasks: usize,
    /// Rounds of (sequential, parallel).
    spin_rounds: usize,
    /// Numbers of sub-interpreters loaded for the RSS measurement, ascending.
    rss_counts: &'static [usize],
}

const FULL: Settings = Settings {
    warm_up_calls: 2_000,
    calls: 12_800,
    call_rounds: 5,
    batch_sizes: &[1, 8, 64],
    spin_target: Duration::from_millis(200),
    spin_tasks: 3,
    spin_rounds: 9,
    rss_counts: &[1, 2, 4],
};

const SMOKE: Settings = Settings {
    warm_up_calls: 10,
    calls: 64,
    call_rounds: 1,
    batch_sizes: &[1, 8],
    spin_target: Duration::from_millis(10),
    spin_tasks: 1,
    spin_rounds: 1,
    rss_counts: &[1, 2],
};

/// The bench's release: two runner modules over the embedded runtime, no venv.
/// `TimeNoop` times `_host.execute` of `Noop` in a Python loop inside one task: the Python
/// side of a call without the round trip to Rust (and with warm caches).
const NOOP_APP: &str = "\
import time
import uuid

from tilebox.workflows import ExecutionContext, Runner, Task, _host


class Noop(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass


class TimeNoop(Task):
    calls: int

    def execute(self, context: ExecutionContext) -> None:
        task = {
            'id': str(uuid.uuid4()),
            'display': 'Noop',
            'retry_count': 0,
            'parent_id': None,
            'depends_on': [],
            'job': {'id': str(uuid.uuid4()), 'name': 'bench', 'trace_parent': ''},
            'cluster': 'default',
        }
        started = time.perf_counter()
        for _ in range(self.calls):
            result = _host.execute('Noop', 'v0.0', b'', task)
            assert result['computed'], result
        context.current_task.display = repr((time.perf_counter() - started) / self.calls)


runner = Runner(tasks=[Noop, TimeNoop])
";

const SPIN_APP: &str = "\
from tilebox.workflows import ExecutionContext, Runner, Task


class Spin(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        total = 0
        for i in range(self.n):
            total += i
        context.current_task.display = str(total)


runner = Runner(tasks=[Spin])
";

/// The sections, in the order they are printed; naming some on the command line
/// (`cargo bench --bench embedding -- calls`) runs only those.
const SECTIONS: [&str; 3] = ["calls", "parallel", "memory"];

/// Loop length of the first, uncalibrated `Spin` task.
const CALIBRATION_LOOP: u64 = 1_000_000;

fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|argument| argument == "--bench");
    let settings = if full { &FULL } else { &SMOKE };
    // The child-process placement runs `tilebox python-host`; cargo builds the binary for
    // benches. Set before any thread starts.
    if std::env::var_os(tilebox::env::PYTHON_HOST).is_none() {
        let binary = Path::new(env!("CARGO_BIN_EXE_tilebox"));
        if !binary.is_file() {
            bail!(
                "the tilebox binary is missing at {}\nhint: build it with `cargo build --release`, or set {} to a tilebox binary",
                binary.display(),
                tilebox::env::PYTHON_HOST
            );
        }
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var(tilebox::env::PYTHON_HOST, binary) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(settings))
}

async fn run(settings: &Settings) -> anyhow::Result<()> {
    let workspace = tempfile::Builder::new()
        .prefix("tilebox-bench-")
        .tempdir()
        .context("temp dir")?;
    let root = workspace.path().join("release");
    fs_err::create_dir_all(&root)?;
    fs_err::write(root.join("noop_app.py"), NOOP_APP)?;
    fs_err::write(root.join("spin_app.py"), SPIN_APP)?;
    let runtime = python::runtime::unpack(&workspace.path().join("cache"))?;
    let bench = Bench { runtime, root };

    python::host::initialize()?;
    let (major, minor, micro) = python::host::embedded_version();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "CPython {major}.{minor}.{micro} embedded, {cores} cores available, load average at the start {}\n",
        load_average()?
    );

    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| SECTIONS.contains(&argument.as_str()))
        .collect();
    let wanted = |section: &str| named.is_empty() || named.iter().any(|name| name == section);
    // Memory first, while this process holds no other interpreter.
    let memory = match wanted("memory") {
        true => Some(bench.measure_memory(settings).await?),
        false => None,
    };
    let calls = match wanted("calls") {
        true => Some(bench.measure_calls(settings).await?),
        false => None,
    };
    let parallel = match wanted("parallel") {
        true => Some(bench.measure_parallel(settings).await?),
        false => None,
    };
    let tables: Vec<String> = [calls, parallel, memory].into_iter().flatten().collect();
    println!("{}", tables.join("\n"));
    println!("Load average at the end {}", load_average()?);
    Ok(())
}

struct Bench {
    runtime: PathBuf,
    root: PathBuf,
}

impl Bench {
    fn release(&self, label: &str, runner: &str) -> Release {
        Release {
            label: label.into(),
            runtime: self.runtime.clone(),
            root: self.root.clone(),
            site_packages: Vec::new(),
            venv: None,
            runner: runner.into(),
        }
    }

    async fn load(
        &self,
        label: &str,
        runner: &str,
        placement: Placement,
    ) -> anyhow::Result<LoadedRelease> {
        python::load(self.release(label, runner), placement)
            .await
            .with_context(|| format!("load {label} ({placement:?})"))
    }

    /// Round trips of `Noop` from one tokio task to one interpreter per placement, handed
    /// over one at a time (`execute`) and in batches (`execute_batch`). The rounds of every
    /// placement and batch size are interleaved, so they all see the same machine noise.
    async fn measure_calls(&self, settings: &Settings) -> anyhow::Result<String> {
        let placements = [
            ("sub-interpreter", Placement::SubInterpreter),
            ("child process", Placement::ChildProcess),
        ];
        let mut loaded = Vec::new();
        for (name, placement) in placements {
            eprintln!("calls: loading the {name}");
            loaded.push(Arc::new(
                self.load("noop", "noop_app:runner", placement).await?,
            ));
        }
        let workers: Vec<_> = loaded.iter().map(Arc::clone).collect();
        let (warm_up, tasks, rounds) =
            (settings.warm_up_calls, settings.calls, settings.call_rounds);
        let batch_sizes = settings.batch_sizes;
        // per_task[placement][batch size]: each round's mean seconds per task.
        let (per_task, in_python) = tokio::spawn(async move {
            let noop = request("Noop", "");
            let largest = batch_sizes.last().copied().unwrap_or(1);
            let mut per_task =
                vec![vec![Vec::with_capacity(rounds); batch_sizes.len()]; workers.len()];
            for worker in &workers {
                call_in_batches(worker, &noop, warm_up, 1).await?;
                call_in_batches(worker, &noop, warm_up, largest).await?;
            }
            for round in 0..rounds {
                eprintln!("calls: round {}/{rounds}", round + 1);
                for (size_index, &size) in batch_sizes.iter().enumerate() {
                    let mut order: Vec<usize> = (0..workers.len()).collect();
                    if round % 2 == 1 {
                        order.reverse();
                    }
                    for index in order {
                        let started = Instant::now();
                        call_in_batches(&workers[index], &noop, tasks, size).await?;
                        per_task[index][size_index]
                            .push(started.elapsed().as_secs_f64() / tasks as f64);
                    }
                }
            }
            let mut in_python = Vec::new();
            for worker in &workers {
                let seconds = execute(worker, &request("TimeNoop", &tasks.to_string())).await?;
                in_python.push(
                    seconds
                        .parse::<f64>()
                        .with_context(|| format!("TimeNoop answered {seconds:?}"))?,
                );
            }
            anyhow::Ok((per_task, in_python))
        })
        .await??;
        for release in loaded {
            unload(release).await;
        }
        eprintln!("calls: no Python");
        let bare = tokio::spawn(bare_round_trips(tasks, rounds)).await?;

        let mut table = format!(
            "### Calls of a trivial task (`Noop`) from one tokio task to one interpreter\n\n\
             {tasks} tasks per round, {rounds} rounds; the rounds of every placement and batch size are interleaved. \
             Batch 1 is `LoadedRelease::execute`, larger batches `LoadedRelease::execute_batch`. \
             µs/task = the round's wall time / {tasks}. \
             Python side: `_host.execute` of `Noop` timed in a Python loop of {tasks} calls inside one task \
             (no round trip to Rust, warm caches): {} µs in the sub-interpreter, {} µs in the child process.\n\n\
             | Placement | Batch | Tasks/s (median round) | µs/task (median) | µs/task (min–max) |\n\
             |---|---:|---:|---:|---:|\n",
            micros(in_python[0]),
            micros(in_python[1]),
        );
        for ((name, _), rows) in placements.iter().zip(&per_task) {
            for (&size, per_round) in batch_sizes.iter().zip(rows) {
                table.push_str(&call_row(name, size, per_round));
            }
        }
        table.push_str(&call_row(
            "no Python: the same channels to a plain thread",
            1,
            &bare,
        ));
        table.push_str(
            "\n| Batch | Sub-interpreter µs/task | Child process µs/task | Child ÷ sub-interpreter, same batch | Child single calls ÷ sub-interpreter |\n\
             |---:|---:|---:|---:|---:|\n",
        );
        let child_single = median(&per_task[1][0]);
        for (size_index, &size) in batch_sizes.iter().enumerate() {
            let (sub, child) = (
                median(&per_task[0][size_index]),
                median(&per_task[1][size_index]),
            );
            table.push_str(&format!(
                "| {size} | {} | {} | **{:.2}×** | **{:.2}×** |\n",
                micros(sub),
                micros(child),
                child / sub,
                child_single / sub,
            ));
        }
        Ok(table)
    }

    /// K `Spin` tasks on one interpreter vs 2K on two interpreters at once, for two
    /// sub-interpreters and, as the baseline, two child processes. The four measurements of
    /// a round run back to back, so both placements see the same noise.
    async fn measure_parallel(&self, settings: &Settings) -> anyhow::Result<String> {
        eprintln!("parallel: calibrating");
        let mut pairs = Vec::new();
        for (name, one, two, placement) in [
            (
                "sub-interpreters",
                "1 sub-interpreter",
                "2 sub-interpreters",
                Placement::SubInterpreter,
            ),
            (
                "child processes",
                "1 child process",
                "2 child processes",
                Placement::ChildProcess,
            ),
        ] {
            let first = self.load("spin-a", "spin_app:runner", placement).await?;
            let second = self.load("spin-b", "spin_app:runner", placement).await?;
            // Warm-up: the first task of an interpreter pays for lazy imports.
            spin(&first, CALIBRATION_LOOP).await?;
            spin(&second, CALIBRATION_LOOP).await?;
            pairs.push(Pair {
                name,
                one,
                two,
                first,
                second,
                sequential: Vec::new(),
                concurrent: Vec::new(),
            });
        }
        let started = Instant::now();
        spin(&pairs[0].first, CALIBRATION_LOOP).await?;
        let calibration = started.elapsed();
        let loop_length = ((CALIBRATION_LOOP as f64) * settings.spin_target.as_secs_f64()
            / calibration.as_secs_f64())
        .round()
        .max(1.0) as u64;
        let started = Instant::now();
        spin(&pairs[0].first, loop_length).await?;
        let single_task = started.elapsed();

        let tasks = settings.spin_tasks;
        let counters_before = cpu_counters()?;
        for round in 1..=settings.spin_rounds {
            eprintln!("parallel: round {round}/{}", settings.spin_rounds);
            for pair in &mut pairs {
                let phase = Phase::start()?;
                spin_repeatedly(&pair.first, loop_length, tasks).await?;
                pair.sequential.push(phase.finish()?);
                let phase = Phase::start()?;
                let (a, b) = tokio::join!(
                    spin_repeatedly(&pair.first, loop_length, tasks),
                    spin_repeatedly(&pair.second, loop_length, tasks)
                );
                pair.concurrent.push(phase.finish()?);
                a?;
                b?;
            }
        }
        let counters = cpu_counters()?.since(&counters_before);
        let mut table = format!(
            "### CPU-bound pure Python in parallel\n\n\
             Task: `for i in range(n): total += i` with n = {loop_length} ({:.0} ms per task when measured); \
             {} rounds, each running the four rows back to back. \
             Speedup = (2K tasks / wall with 2 interpreters) / (K tasks / wall with 1). \
             Busy cores = non-idle, non-steal CPU time of the whole machine / wall (from `/proc/stat`); \
             steal over all rounds: {:.1}% of CPU time.\n\n\
             | Setup | Tasks | Wall min (s) | Wall median (s) | Busy cores (median) |\n\
             |---|---:|---:|---:|---:|\n",
            single_task.as_secs_f64() * 1e3,
            settings.spin_rounds,
            counters.steal_percent(),
        );
        let mut speedups =
            String::from("\n| Placement | Speedup (min) | Speedup (median) |\n|---|---:|---:|\n");
        for pair in pairs {
            let walls =
                |phases: &[Phase]| phases.iter().map(|phase| phase.wall).collect::<Vec<_>>();
            let busy = |phases: &[Phase]| {
                median(
                    &phases
                        .iter()
                        .map(|phase| phase.busy_cores)
                        .collect::<Vec<_>>(),
                )
            };
            let (one, two) = (walls(&pair.sequential), walls(&pair.concurrent));
            table.push_str(&format!(
                "| {}, sequential | K = {tasks} | {:.3} | {:.3} | {:.2} |\n",
                pair.one,
                minimum(&one),
                median(&one),
                busy(&pair.sequential),
            ));
            table.push_str(&format!(
                "| {}, concurrent | 2K = {} | {:.3} | {:.3} | {:.2} |\n",
                pair.two,
                2 * tasks,
                minimum(&two),
                median(&two),
                busy(&pair.concurrent),
            ));
            speedups.push_str(&format!(
                "| {} | **{:.2}×** | **{:.2}×** |\n",
                pair.name,
                2.0 * minimum(&one) / minimum(&two),
                2.0 * median(&one) / median(&two),
            ));
            pair.first.unload().await;
            pair.second.unload().await;
        }
        table.push_str(&speedups);
        Ok(table)
    }

    /// VmRSS after loading 1, 2, 4 sub-interpreters of the `Noop` release: per interpreter
    /// over the baseline, and per interpreter added since the previous row (the first one
    /// also pays for one-time work such as compiling the runtime's `.pyc` files).
    async fn measure_memory(&self, settings: &Settings) -> anyhow::Result<String> {
        eprintln!("memory");
        let baseline = memory_usage()?;
        let mut table = format!(
            "### Memory of sub-interpreters (`Noop` release: runtime plus a trivial runner, one task executed in each)\n\n\
             Baseline after CPython initialisation: VmRSS {:.1} MiB (RssAnon {:.1} MiB).\n\n\
             | Sub-interpreters | VmRSS (MiB) | Increment over baseline (MiB) | Per interpreter (MiB) | Per added interpreter (MiB) | RssAnon per interpreter (MiB) |\n\
             |---:|---:|---:|---:|---:|---:|\n",
            megabytes(baseline.resident),
            megabytes(baseline.anonymous),
        );
        let mut loaded = Vec::new();
        let mut previous = baseline.resident;
        for &count in settings.rss_counts {
            let added = count - loaded.len();
            while loaded.len() < count {
                let release = self
                    .load(
                        &format!("memory-{}", loaded.len()),
                        "noop_app:runner",
                        Placement::SubInterpreter,
                    )
                    .await?;
                call_repeatedly(&release, &request("Noop", ""), 1).await?;
                loaded.push(release);
            }
            let usage = memory_usage()?;
            let increment = usage.resident.saturating_sub(baseline.resident);
            let anonymous = usage.anonymous.saturating_sub(baseline.anonymous);
            table.push_str(&format!(
                "| {count} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                megabytes(usage.resident),
                megabytes(increment),
                megabytes(increment) / count as f64,
                megabytes(usage.resident.saturating_sub(previous)) / added as f64,
                megabytes(anonymous) / count as f64,
            ));
            previous = usage.resident;
        }
        for release in loaded {
            release.unload().await;
        }
        Ok(table)
    }
}

/// One row of the calls table; `per_task` holds each round's mean seconds per task.
fn call_row(name: &str, batch: usize, per_task: &[f64]) -> String {
    let median = median(per_task);
    format!(
        "| {name} | {batch} | {:.0} | {} | {}–{} |\n",
        1.0 / median,
        micros(median),
        micros(minimum(per_task)),
        micros(maximum(per_task)),
    )
}

/// Seconds as microseconds with one decimal.
fn micros(seconds: f64) -> String {
    format!("{:.1}", seconds * 1e6)
}

/// The sub-interpreter's round trip without Python: a std channel to a dedicated thread and
/// a tokio oneshot back, as `SubInterpreter::execute_batch` does. Mean seconds per call per round.
async fn bare_round_trips(calls: usize, rounds: usize) -> Vec<f64> {
    let (commands, receiver) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let thread = std::thread::spawn(move || {
        while let Ok(reply) = receiver.recv() {
            let _ = reply.send(());
        }
    });
    let round_trip = || {
        let (reply, answer) = tokio::sync::oneshot::channel();
        commands.send(reply).expect("the echo thread runs");
        answer
    };
    for _ in 0..calls / 10 {
        round_trip().await.expect("the echo thread answers");
    }
    let mut per_call = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..calls {
            round_trip().await.expect("the echo thread answers");
        }
        per_call.push(started.elapsed().as_secs_f64() / calls as f64);
    }
    drop(commands);
    thread.join().expect("the echo thread ends");
    per_call
}

fn request(name: &str, input: &str) -> TaskRequest {
    TaskRequest {
        name: name.into(),
        version: "v0.0".into(),
        input: input.as_bytes().to_vec(),
        id: uuid::Uuid::now_v7().to_string(),
        display: name.into(),
        retry_count: 0,
        parent_id: None,
        depends_on: Vec::new(),
        job: python::JobInfo {
            id: uuid::Uuid::now_v7().to_string(),
            name: "bench".into(),
            trace_parent: String::new(),
        },
        cluster: "default".into(),
    }
}

/// Executes `request` once; it must compute. Answers the task's display.
async fn execute(loaded: &LoadedRelease, request: &TaskRequest) -> anyhow::Result<String> {
    let (events, _received) = tokio::sync::mpsc::unbounded_channel();
    match loaded.execute(request.clone(), events).await? {
        TaskOutcome::Computed { display, .. } => Ok(display),
        failed => bail!("{} failed: {failed:?}", request.name),
    }
}

/// Executes `request` `count` times, one after the other; every call must compute.
async fn call_repeatedly(
    loaded: &LoadedRelease,
    request: &TaskRequest,
    count: usize,
) -> anyhow::Result<()> {
    call_in_batches(loaded, request, count, 1).await
}

/// Executes `request` `count` times, handed over `batch` at a time (`execute` when `batch`
/// is 1); every call must compute.
async fn call_in_batches(
    loaded: &LoadedRelease,
    request: &TaskRequest,
    count: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let (events, _received) = tokio::sync::mpsc::unbounded_channel();
    let computed = |outcome: Result<TaskOutcome, python::Error>| match outcome? {
        TaskOutcome::Computed { .. } => Ok(()),
        failed => bail!("{} failed: {failed:?}", request.name),
    };
    let mut remaining = count;
    while remaining > 0 {
        let size = batch.min(remaining);
        remaining -= size;
        if size == 1 {
            computed(loaded.execute(request.clone(), events.clone()).await)?;
            continue;
        }
        let tasks = (0..size)
            .map(|_| (request.clone(), events.clone()))
            .collect();
        for outcome in loaded.execute_batch(tasks).await {
            computed(outcome)?;
        }
    }
    Ok(())
}

async fn spin(loaded: &LoadedRelease, loop_length: u64) -> anyhow::Result<()> {
    call_repeatedly(loaded, &request("Spin", &loop_length.to_string()), 1).await
}

async fn spin_repeatedly(
    loaded: &LoadedRelease,
    loop_length: u64,
    count: usize,
) -> anyhow::Result<()> {
    for _ in 0..count {
        spin(loaded, loop_length).await?;
    }
    Ok(())
}

async fn unload(loaded: Arc<LoadedRelease>) {
    match Arc::try_unwrap(loaded) {
        Ok(loaded) => loaded.unload().await,
        Err(_) => unreachable!("the measuring task has ended and dropped its handle"),
    }
}

/// Two loaded copies of the `Spin` release and what was measured on them.
struct Pair {
    name: &'static str,
    /// The one-interpreter setup, e.g. "1 sub-interpreter".
    one: &'static str,
    /// The two-interpreter setup.
    two: &'static str,
    first: LoadedRelease,
    second: LoadedRelease,
    sequential: Vec<Phase>,
    concurrent: Vec<Phase>,
}

/// Machine-wide CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
struct CpuCounters {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl CpuCounters {
    fn since(&self, earlier: &CpuCounters) -> CpuCounters {
        CpuCounters {
            busy: self.busy.saturating_sub(earlier.busy),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    fn steal_percent(&self) -> f64 {
        let total = self.busy + self.idle + self.steal;
        100.0 * self.steal as f64 / total.max(1) as f64
    }
}

fn cpu_counters() -> anyhow::Result<CpuCounters> {
    let stat = fs_err::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|field| field.parse().context("a /proc/stat counter"))
        .collect::<anyhow::Result<_>>()?;
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    Ok(CpuCounters {
        busy: field(0) + field(1) + field(2) + field(5) + field(6),
        idle: field(3) + field(4),
        steal: field(7),
    })
}

/// One timed measurement: its wall time and how many cores the machine kept busy.
struct Phase {
    wall: f64,
    busy_cores: f64,
}

struct PhaseStart {
    started: Instant,
    counters: CpuCounters,
}

impl Phase {
    fn start() -> anyhow::Result<PhaseStart> {
        Ok(PhaseStart {
            started: Instant::now(),
            counters: cpu_counters()?,
        })
    }
}

impl PhaseStart {
    fn finish(self) -> anyhow::Result<Phase> {
        let wall = self.started.elapsed().as_secs_f64();
        let counters = cpu_counters()?.since(&self.counters);
        Ok(Phase {
            wall,
            busy_cores: counters.busy as f64 / clock_ticks_per_second() / wall,
        })
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory of this process, in kB, from `/proc/self/status`.
struct MemoryUsage {
    resident: u64,
    anonymous: u64,
}

fn memory_usage() -> anyhow::Result<MemoryUsage> {
    let status = fs_err::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/self/status"))
    };
    Ok(MemoryUsage {
        resident: field("VmRSS:")?,
        anonymous: field("RssAnon:")?,
    })
}

/// The 1, 5 and 15 minute load averages of the machine, from `/proc/loadavg`.
fn load_average() -> anyhow::Result<String> {
    let text = fs_err::read_to_string("/proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

fn megabytes(kilobytes: u64) -> f64 {
    kilobytes as f64 / 1024.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn minimum(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn maximum(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
