#!/usr/bin/env python3
"""Runner and orchestrator benchmarks: one command, a real `tilebox server` on loopback.

    python3 bench/run.py [--no-build] [--only throughput,latency,rss,fanout,deploy] [--json-out F]
                         [--data-base /dev/shm] [--quiet-wait S] [--repeat N] ...   (see --help)

What it measures (DESIGN.md §9), printing a markdown table at the end:

1. No-op throughput and dispatch latency of our runner (`tilebox runner start --project P -n 1`
   and `-n 2`, direct mode) and of the official SDK's direct runner (`tilebox-workflows==0.66.0`
   from PyPI in a uv venv, `client.runner(tasks=[...]).run_forever()`), same server, same jobs:
   - throughput: a job whose root task submits N no-op subtasks, from the job's execution
     statistics (total tasks / (last_task_stopped_at - first_task_started_at)), and the drain
     rate of the subtasks alone (N / (last subtask stopped - root stopped));
   - dispatch latency: with the runner idle (long-polling or sleeping between polls), single-task
     jobs submitted one at a time after a random pause; server side `started_at - submitted_at`
     (the server stores milliseconds), and client side (submit call start -> first line of the
     task body, both `time.time_ns()` on this machine).
2. A 100,000-task fan-out (root submits 100k no-op subtasks, our runner -n 2): submission to
   last task stopped, progress sampled every 2 s.
3. Deploy-to-first-task: a release runner is already following a cluster and a job for the
   release is queued; `workflow publish-release`, then `workflow deploy-release --latest`; time
   from the deploy command returning to the task's `started_at`, split at the runner's
   "loaded release" log line. First a release while nothing is loaded, then --deploy-repeat
   new releases, each adding a task that a queued job waits for.
4. Runner RSS (VmRSS/VmHWM of the process) with 1, 2 and 4 slots after running 200 tasks.

The machine is shared: before each measurement the harness waits (bounded) for the CPU to be
quiet, and reports how much CPU other processes used during it. Everything runs in a temp
directory; every process it starts runs in its own process group and is stopped at the end.

Only the standard library here; the SDK runs in a venv created with uv (`target/bench-sdk-venv-*`,
or the interop tests' venv if present).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SDK_VERSION = "0.66.0"
SDK_PYTHON_VERSION = "3.13"
CLK_TCK = os.sysconf("SC_CLK_TCK")

APP = '''
import os
import time

from tilebox.workflows import ExecutionContext, Runner, Task


class Noop(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass


class FanOut(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtasks([Noop() for _ in range(self.n)])


class Stamp(Task):
    i: int

    def execute(self, context: ExecutionContext) -> None:
        now = time.time_ns()
        with open(os.environ["TILEBOX_BENCH_STAMPS"], "a") as stamps:
            stamps.write(f"{self.i} {now}\\n")


runner = Runner(tasks=[Noop, FanOut, Stamp])
'''

def deploy_source(version: int) -> str:
    """Release `version` of the deploy benchmark's workflow: tasks Noop, Noop2 .. Noop<version>."""
    names = ["Noop"] + [f"Noop{k}" for k in range(2, version + 1)]
    classes = "".join(
        f"\n\nclass {name}(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n" for name in names
    )
    return f"from tilebox.workflows import ExecutionContext, Runner, Task\n{classes}\n\nrunner = Runner(tasks=[{', '.join(names)}])\n"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an API timestamp like 2026-11-22T08:46:23.03Z."""
    if not text:
        return None
    text = text.rstrip("Z")
    main, _, fraction = text.partition(".")
    seconds = dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    return seconds + int((fraction + "000000")[:6]) / 1e6


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


# --- /proc readings ---------------------------------------------------------------------------


def process_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may contain spaces.
    return text[text.rfind(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = process_stat(int(entry))
            if fields and int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of the live processes of a process group (children that exited and
    were reaped count through cutime/cstime of their parent)."""
    total = 0
    for pid in group_pids(pgid):
        fields = process_stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


def status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def filesystem_of(path: Path) -> str:
    """`<device> <fstype>` of the mount holding path (longest matching mount point)."""
    best = ("", "?", "?")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[0]):
            best = (mount, device, fstype)
    return f"{best[1]} ({best[2]}, mounted on {best[0]})"


def fsync_probe(directory: Path, count: int = 200) -> dict:
    """Latency of 4 KiB append + fdatasync in directory: what a durable commit waits for."""
    path = directory / "fsync-probe"
    latencies = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return {"p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "max_ms": max(latencies)}


class CpuWindow:
    """CPU used by named process groups over a window, and by everything else on the machine."""

    def __init__(self, groups: dict[str, int]):
        self.groups = groups
        self.wall = time.monotonic()
        self.busy = machine_busy_seconds()
        self.start = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}

    def stop(self) -> dict:
        wall = time.monotonic() - self.wall
        busy = machine_busy_seconds() - self.busy
        used = {name: group_cpu_seconds(pgid) - self.start[name] for name, pgid in self.groups.items()}
        ours = sum(used.values())
        return {
            "wall_s": wall,
            "cpu_s": used,
            "other_cores": max(0.0, busy - ours) / wall if wall > 0 else 0.0,
        }


# --- the harness ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="tilebox-bench-"))
        self.processes: list[subprocess.Popen] = []
        self.binary: Path | None = None
        self.url = ""
        self.server: subprocess.Popen | None = None
        self.sdk_python: Path | None = None
        self.results: dict = {}
        self.extra_dirs: list[Path] = []
        self.rng = random.Random(args.seed)

    # processes

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TILEBOX_API_KEY", None)
        env.pop("TILEBOX_CLUSTER", None)
        env["TILEBOX_API_URL"] = self.url
        env["NO_COLOR"] = "1"
        env["XDG_CACHE_HOME"] = str(self.tmp / "xdg-cache")
        env.update(extra)
        return env

    def spawn(self, argv: list, log_name: str, **kwargs) -> subprocess.Popen:
        stderr = open(self.tmp / f"{log_name}.log", "ab")
        process = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=kwargs.pop("stdout", subprocess.DEVNULL),
            stderr=stderr,
            start_new_session=True,
            **kwargs,
        )
        stderr.close()
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 15.0) -> None:
        """SIGTERM (twice: our runner hands running tasks back on the second), then SIGKILL,
        to the process group the harness created for it."""
        if process.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGTERM):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=timeout / 2)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        # Leftovers of the group (e.g. the SDK's lease renewer process).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if process in self.processes:
            self.processes.remove(process)

    def cleanup(self) -> None:
        for process in list(reversed(self.processes)):
            self.stop(process, timeout=6)
        if self.args.keep_temp:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for directory in self.extra_dirs:
                shutil.rmtree(directory, ignore_errors=True)

    def cli(self, *args: str, timeout: float = 120, cwd: Path | None = None, check: bool = True):
        completed = subprocess.run(
            [str(self.binary), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=self.env(),
            cwd=cwd,
        )
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"tilebox {' '.join(args)} failed ({completed.returncode}): {completed.stderr.decode(errors='replace')}"
            )
        return completed

    def cli_json(self, *args: str, **kwargs):
        return json.loads(self.cli("--json", *args, **kwargs).stdout)

    def submit(self, name: str, task: str, task_input: str | None = None, cluster: str | None = None) -> dict:
        args = ["job", "submit", "--name", name, "--task", task]
        if task_input is not None:
            args += ["--input", task_input]
        if cluster:
            args += ["--cluster", cluster]
        return self.cli_json(*args)

    def wait_job(self, job_id: str, timeout: float) -> bool:
        done = self.cli("job", "wait", job_id, "--timeout", str(int(timeout)), timeout=timeout + 30, check=False)
        return done.returncode == 0

    def wait_quiet(self, label: str) -> float:
        """Waits (at most --quiet-wait s) until the machine is idle for 2 s: other helpers share
        it. Returns the CPU (cores) busy in the last 1 s sample."""
        deadline = time.monotonic() + self.args.quiet_wait
        quiet_samples = 0
        busy = 0.0
        while True:
            before = machine_busy_seconds()
            time.sleep(1.0)
            busy = machine_busy_seconds() - before
            quiet_samples = quiet_samples + 1 if busy < self.args.quiet_cores else 0
            if quiet_samples >= 2:
                return busy
            if time.monotonic() > deadline:
                log(f"{label}: the machine is still busy ({busy:.2f} cores); measuring anyway")
                return busy

    # setup

    def build(self) -> None:
        binary = Path(self.args.binary) if self.args.binary else REPO / "target" / "release" / "tilebox"
        if not self.args.no_build and not self.args.binary:
            log("cargo build --release")
            subprocess.run(["cargo", "build", "--release", "--bin", "tilebox"], cwd=REPO, check=True)
        if not binary.is_file():
            raise SystemExit(f"{binary} does not exist (build it, or pass --binary)")
        # A private copy: other people may rebuild target/release while this runs.
        self.binary = self.tmp / "tilebox"
        shutil.copy2(binary, self.binary)
        self.results["binary"] = str(binary)

    def sdk_venv(self) -> Path:
        existing = REPO / "target" / "tmp" / f"interop-venv-{SDK_VERSION}"
        if (existing / ".tilebox-interop-ready").exists():
            return existing / "bin" / "python"
        venv = REPO / "target" / f"bench-sdk-venv-{SDK_VERSION}"
        python = venv / "bin" / "python"
        ready = venv / ".bench-ready"
        if ready.exists():
            return python
        log(f"creating {venv} with uv (tilebox-workflows=={SDK_VERSION})")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["uv", "venv", "--quiet", "--python", SDK_PYTHON_VERSION, str(venv)], check=True)
        subprocess.run(
            ["uv", "pip", "install", "--quiet", "--python", str(python), f"tilebox-workflows=={SDK_VERSION}"],
            check=True,
        )
        ready.write_text(SDK_VERSION)
        return python

    def start_server(self) -> None:
        if self.args.data_base:
            data = Path(tempfile.mkdtemp(prefix="tilebox-bench-data-", dir=self.args.data_base))
            self.extra_dirs.append(data)
        else:
            data = self.tmp / "data"
            data.mkdir()
        self.data_dir = data
        self.results["data_dir_fs"] = filesystem_of(data)
        self.server = self.spawn(
            [self.binary, "server", "--listen", "127.0.0.1:0", "--data-dir", data],
            "server",
            stdout=subprocess.PIPE,
            env=self.env(),
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.server.stdout.readline().decode()), daemon=True)
        reader.start()
        reader.join(30)
        if not line or not line[0].startswith("listening on "):
            raise RuntimeError(f"the server did not start: {line!r}\n{(self.tmp / 'server.log').read_text()}")
        self.url = line[0].strip().removeprefix("listening on ")
        threading.Thread(target=lambda: self.server.stdout.read(), daemon=True).start()
        log(f"server on {self.url}")

    def write_project(self) -> Path:
        project = self.tmp / "noop-project"
        project.mkdir(exist_ok=True)
        (project / "app.py").write_text(APP)
        (project / "tilebox.workflow.toml").write_text(
            '[workflow]\nslug = "bench-noop"\nrunner = "app:runner"\n\n[build]\ninclude = ["app.py"]\n'
        )
        return project

    def start_our_runner(self, slots: int, label: str) -> subprocess.Popen:
        stamps = self.tmp / f"stamps-{label}"
        return self.spawn(
            [
                self.binary, "runner", "start", "--project", self.project, "-n", str(slots),
                "--cache-dir", self.tmp / "runner-cache", "--quiet",
            ],
            f"runner-{label}",
            env=self.env(TILEBOX_BENCH_STAMPS=str(stamps)),
        )

    def start_sdk_runner(self, label: str) -> subprocess.Popen:
        stamps = self.tmp / f"stamps-{label}"
        return self.spawn(
            [self.sdk_python, REPO / "bench" / "sdk_driver.py", "runner"],
            f"runner-{label}",
            env=self.env(TILEBOX_BENCH_STAMPS=str(stamps)),
        )

    def warm_up(self, runner: subprocess.Popen, label: str, n: int = 50) -> None:
        job = self.submit(f"bench-warmup-{label}", "FanOut", str(n))
        if not self.wait_job(job["id"], 180):
            raise RuntimeError(
                f"warm-up of {label} did not complete; runner log:\n{(self.tmp / f'runner-{label}.log').read_text()[-4000:]}"
            )
        if runner.poll() is not None:
            raise RuntimeError(f"runner {label} exited with {runner.returncode}")

    # measurements

    def throughput(self, runner: subprocess.Popen, label: str, n: int) -> dict:
        """--repeat runs of one fan-out job; the run with the median throughput is reported,
        with the range over all runs."""
        runs = [self.throughput_once(runner, label, n, index) for index in range(self.args.repeat)]
        rates = [run["tasks_per_s"] for run in runs if run["tasks_per_s"] is not None]
        ordered = sorted(runs, key=lambda run: run["tasks_per_s"] or 0.0)
        result = dict(ordered[len(ordered) // 2])
        result["runs"] = len(runs)
        result["all_tasks_per_s"] = [run["tasks_per_s"] for run in runs]
        result["min_tasks_per_s"] = min(rates, default=None)
        result["max_tasks_per_s"] = max(rates, default=None)
        return result

    def throughput_once(self, runner: subprocess.Popen, label: str, n: int, index: int) -> dict:
        self.wait_quiet(f"throughput {label}")
        name = f"bench-throughput-{label}-{index}"
        window = CpuWindow({"server": self.server.pid, "runner": runner.pid})
        job = self.submit(name, "FanOut", str(n))
        completed = self.wait_job(job["id"], self.args.throughput_timeout)
        cpu = window.stop()
        data = self.cli_json("job", "get", job["id"], timeout=300)
        stats = data["execution_stats"]
        first = parse_time(stats["first_task_started_at"])
        last = parse_time(stats["last_task_stopped_at"])
        root = data["tasks"][0]
        root_stopped = parse_time(root.get("stopped_at"))
        children = root.get("children", [])
        stops = [parse_time(c["stopped_at"]) for c in children if c.get("state") == "computed" and c.get("stopped_at")]
        computed = stats["tasks_by_state"].get("computed", 0)
        result = {
            "n": n,
            "completed": completed,
            "state": data["state"],
            "computed": computed,
            "total_tasks": stats["total_tasks"],
            "span_s": (last - first) if first and last else None,
            "tasks_per_s": computed / (last - first) if first and last and last > first else None,
            "root_s": (root_stopped - parse_time(root.get("started_at"))) if root_stopped else None,
            "drain_s": (max(stops) - root_stopped) if stops and root_stopped else None,
            "drain_per_s": len(stops) / (max(stops) - root_stopped) if stops and root_stopped and max(stops) > root_stopped else None,
            "parallelism": stats.get("parallelism"),
            "cpu": cpu,
        }
        log(
            f"throughput {label}: {computed}/{n + 1} computed in {fmt(result['span_s'], 3)} s "
            f"= {fmt(result['tasks_per_s'])} tasks/s (drain {fmt(result['drain_per_s'])}/s); "
            f"cpu server {cpu['cpu_s']['server']:.2f} s runner {cpu['cpu_s']['runner']:.2f} s, other {cpu['other_cores']:.2f} cores"
        )
        return result

    def latency(self, runner: subprocess.Popen, label: str, samples: int) -> dict:
        self.wait_quiet(f"latency {label}")
        out = self.tmp / f"latency-{label}.json"
        window = CpuWindow({"server": self.server.pid, "runner": runner.pid})
        timeout = samples * (self.args.latency_gap + 5) + 120
        driver = subprocess.run(
            [str(self.sdk_python), str(REPO / "bench" / "sdk_driver.py"), "latency", str(out), str(samples), str(self.args.latency_gap)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=self.env(
                TILEBOX_BENCH_STAMPS=str(self.tmp / f"stamps-{label}"),
                TILEBOX_BENCH_STAMP_OFFSET="0",
                TILEBOX_BENCH_MIN_PAUSE=str(self.args.latency_min_gap),
                TILEBOX_BENCH_SEED=str(self.args.seed),
            ),
        )
        cpu = window.stop()
        if driver.returncode != 0 or not out.exists():
            raise RuntimeError(f"latency driver failed: {driver.stderr.decode(errors='replace')[-4000:]}")
        rows = json.loads(out.read_text())
        server_ms, client_ms, submit_ms = [], [], []
        previous_started = None
        for row in rows:
            # Time since the previous task started: where in the runner's poll cycle
            # (long poll of 1 s, then the suggested idle pause) this submission landed.
            row["since_previous_start_ms"] = (row["before_submit_ns"] - previous_started) / 1e6 if previous_started else None
            previous_started = row["started_ns"]
            if row["started_ns"] is None:
                continue
            client_ms.append((row["started_ns"] - row["before_submit_ns"]) / 1e6)
            submit_ms.append((row["after_submit_ns"] - row["before_submit_ns"]) / 1e6)
            data = self.cli_json("job", "get", row["job"])
            started = parse_time(data["tasks"][0].get("started_at"))
            submitted = parse_time(data["submitted_at"])
            if started is not None and submitted is not None:
                server_ms.append((started - submitted) * 1000)
                row["server_ms"] = server_ms[-1]
            row["client_ms"] = client_ms[-1]
        result = {
            "samples": len(rows),
            "started": len(client_ms),
            "server_ms": {"p50": percentile(server_ms, 50), "p90": percentile(server_ms, 90), "p99": percentile(server_ms, 99), "max": max(server_ms, default=None)},
            "client_ms": {"p50": percentile(client_ms, 50), "p90": percentile(client_ms, 90), "p99": percentile(client_ms, 99), "max": max(client_ms, default=None)},
            "submit_rpc_ms": {"p50": percentile(submit_ms, 50), "p99": percentile(submit_ms, 99)},
            "over_100ms": sum(1 for v in server_ms if v > 100),
            "server_values_ms": server_ms,
            "rows": rows,
            "cpu": cpu,
        }
        log(
            f"latency {label}: server p50 {fmt(result['server_ms']['p50'])} ms p99 {fmt(result['server_ms']['p99'])} ms; "
            f"client p50 {fmt(result['client_ms']['p50'], 2)} ms p99 {fmt(result['client_ms']['p99'], 2)} ms; "
            f"{result['over_100ms']} of {len(server_ms)} over 100 ms"
        )
        return result

    def rss_of(self, process: subprocess.Popen) -> dict:
        pids = group_pids(process.pid)
        return {
            "vmrss_kib": status_kib(process.pid, "VmRSS"),
            "vmhwm_kib": status_kib(process.pid, "VmHWM"),
            "group_vmrss_kib": sum(status_kib(pid, "VmRSS") or 0 for pid in pids),
            "group_processes": len(pids),
            "threads": status_kib(process.pid, "Threads"),
        }

    def runner_suite(self, label: str, start, fanout_n: int) -> dict:
        log(f"--- {label}")
        runner = start()
        result: dict = {}
        try:
            self.warm_up(runner, label)
            if "throughput" in self.args.only:
                result["throughput"] = self.throughput(runner, label, fanout_n)
            if "latency" in self.args.only:
                result["latency"] = self.latency(runner, label, self.args.latency_samples)
            result["rss_after"] = self.rss_of(runner)
        finally:
            self.stop(runner)
        return result

    def rss(self, slots: int) -> dict:
        label = f"rss-n{slots}"
        runner = self.start_our_runner(slots, label)
        try:
            started = time.monotonic()
            self.warm_up(runner, label, n=200)
            loaded = time.monotonic() - started
            time.sleep(1.0)
            result = self.rss_of(runner)
            result["start_to_200_tasks_done_s"] = loaded
        finally:
            self.stop(runner)
        log(f"rss -n {slots}: {result['vmrss_kib']} KiB (peak {result['vmhwm_kib']} KiB)")
        return result

    def big_fanout(self) -> dict:
        n, slots = self.args.big_n, 2
        label = "fanout-big"
        log(f"--- {n}-task fan-out, our runner -n {slots}")
        runner = self.start_our_runner(slots, label)
        try:
            self.warm_up(runner, label)
            self.wait_quiet("fan-out")
            name = f"bench-fanout-{n}"
            window = CpuWindow({"server": self.server.pid, "runner": runner.pid})
            client_start = time.time()
            job = self.submit(name, "FanOut", str(n))
            samples = []
            deadline = time.monotonic() + self.args.big_timeout
            state = job["state"]
            while time.monotonic() < deadline:
                time.sleep(2.0)
                listed = self.cli_json("job", "list", "--name", name, "--limit", "1")["jobs"][0]
                stats = listed["execution_stats"]
                samples.append(
                    {
                        "t": time.time() - client_start,
                        "total": stats["total_tasks"],
                        "computed": stats["tasks_by_state"].get("computed", 0),
                        "state": listed["state"],
                    }
                )
                state = listed["state"]
                if state in ("completed", "failed", "canceled"):
                    break
                if runner.poll() is not None:
                    log(f"the runner exited with {runner.returncode}")
                    break
            client_end = time.time()
            cpu = window.stop()
            timed_out = state not in ("completed", "failed", "canceled")
            listed = self.cli_json("job", "list", "--name", name, "--limit", "1")["jobs"][0]
            stats = listed["execution_stats"]
            submitted = parse_time(listed["submitted_at"])
            last = parse_time(stats["last_task_stopped_at"])
            result = {
                "n": n,
                "slots": slots,
                "state": listed["state"],
                "timed_out": timed_out,
                "timeout_s": self.args.big_timeout,
                "computed": stats["tasks_by_state"].get("computed", 0),
                "tasks_by_state": stats["tasks_by_state"],
                "total_s": (last - submitted) if (last and submitted and not timed_out) else None,
                "client_wall_s": client_end - client_start,
                "samples": samples,
                "cpu": cpu,
                "server_rss": self.rss_of(self.server),
                "runner_rss": self.rss_of(runner),
            }
            # Stop the runner first: the job may still be running after a timeout.
        finally:
            self.stop(runner)
        # Phase breakdown from the root task (the full tree of a big job is a large answer).
        fetch_started = time.monotonic()
        try:
            data = self.cli_json("job", "get", job["id"], timeout=300)
            root = data["tasks"][0]
            result["job_get_s"] = time.monotonic() - fetch_started
            result["root_started_after_submit_s"] = parse_time(root["started_at"]) - submitted
            result["root_run_s"] = parse_time(root["stopped_at"]) - parse_time(root["started_at"])
            children = root.get("children", [])
            starts = [parse_time(c["started_at"]) for c in children if c.get("started_at")]
            stops = [parse_time(c["stopped_at"]) for c in children if c.get("stopped_at") and c.get("state") == "computed"]
            if starts and stops:
                result["first_subtask_started_after_root_stop_s"] = min(starts) - parse_time(root["stopped_at"])
                result["subtask_drain_s"] = max(stops) - parse_time(root["stopped_at"])
                result["subtask_drain_per_s"] = len(stops) / result["subtask_drain_s"]
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, TypeError, IndexError) as error:
            result["job_get_error"] = str(error)[:500]
            result["job_get_s"] = time.monotonic() - fetch_started
        if timed_out:
            # Cancel what is left so it does not load later measurements.
            self.cli("job", "cancel", job["id"], check=False)
        log(
            f"fan-out {n}: state {result['state']}, {result['computed']} computed, total {fmt(result.get('total_s'), 2)} s "
            f"(client wall {result['client_wall_s']:.1f} s)"
        )
        return result

    def deploy(self) -> dict:
        log("--- deploy-to-first-task")
        cluster = "bench-deploy"
        self.cli("cluster", "create", "Bench Deploy", "--slug", cluster)
        workflow = self.cli_json("workflow", "create", "Bench Deploy")
        project = self.tmp / "deploy-project"
        project.mkdir()
        (project / "tilebox.workflow.toml").write_text(
            f'[workflow]\nslug = "{workflow["slug"]}"\nrunner = "app:runner"\n\n[build]\ninclude = ["app.py"]\n'
        )
        runner = self.spawn(
            [self.binary, "runner", "start", "--cluster", cluster, "--cache-dir", self.tmp / "deploy-runner-cache"],
            "runner-deploy",
            env=self.env(),
        )
        rounds = []
        try:
            time.sleep(2.0)
            plan = [("first release (nothing loaded yet)", 1, "Noop")] + [
                (f"new release {version} replacing the loaded one, job for its new task", version, f"Noop{version}")
                for version in range(2, 2 + self.args.deploy_repeat)
            ]
            for label, version, task in plan:
                source = deploy_source(version)
                self.wait_quiet(f"deploy {label}")
                (project / "app.py").write_text(source)
                job = self.submit(f"bench-deploy-{task}", task, cluster=cluster)
                # A random phase against the runner's 1 s long-poll cycle (a fixed pause could
                # line every round up with the same point of the cycle).
                time.sleep(self.rng.uniform(0.2, 1.2))
                t0 = time.time()
                self.cli("--json", "workflow", "publish-release", cwd=project)
                t1 = time.time()
                self.cli("--json", "workflow", "deploy-release", "--latest", "--cluster", cluster, cwd=project)
                t2 = time.time()
                started = None
                while started is None and time.time() < t2 + 120:
                    data = self.cli_json("job", "get", job["id"])
                    started = parse_time(data["tasks"][0].get("started_at"))
                    if started is None:
                        time.sleep(0.01)
                loaded = None
                for line in (self.tmp / "runner-deploy.log").read_text(errors="replace").splitlines():
                    if "loaded release" in line:
                        try:
                            stamp = parse_time(line.split()[0])
                        except ValueError:
                            continue
                        if stamp and stamp >= t1:
                            loaded = stamp
                rounds.append(
                    {
                        "round": label,
                        "publish_s": t1 - t0,
                        "deploy_command_s": t2 - t1,
                        "deploy_return_to_started_s": (started - t2) if started else None,
                        # From the runner's own log (microseconds): when it had the release loaded.
                        "deploy_return_to_loaded_s": (loaded - t2) if loaded else None,
                        "loaded_to_started_s": (started - loaded) if (loaded and started) else None,
                    }
                )
                log(f"deploy {label}: publish {t1 - t0:.3f} s, deploy {t2 - t1:.3f} s, to started {fmt((started - t2) if started else None, 3)} s")
            result = {"rounds": rounds, "runner_rss": self.rss_of(runner)}
        finally:
            self.stop(runner)
        result["runner_log_tail"] = (self.tmp / "runner-deploy.log").read_text()[-3000:]
        return result

    # the whole run

    def machine(self) -> dict:
        cpu = "unknown"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = status = None
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
        try:
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
            status = head + (" (with uncommitted changes)" if dirty else "")
        except OSError:
            pass
        return {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "mem_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
            "kernel": platform.release(),
            "git": status,
        }

    def run(self) -> dict:
        self.results["machine"] = self.machine()
        self.results["command"] = "python3 bench/run.py " + " ".join(sys.argv[1:])
        self.build()
        needs_sdk = bool({"throughput", "latency"} & set(self.args.only))
        if needs_sdk:
            self.sdk_python = self.sdk_venv()
        self.start_server()
        self.results["fsync_before"] = fsync_probe(self.data_dir)
        self.project = self.write_project()
        if {"throughput", "latency"} & set(self.args.only):
            suites = self.results.setdefault("runners", {})
            for slots in (1, 2):
                label = f"ours-n{slots}"
                suites[label] = self.runner_suite(label, lambda s=slots, l=label: self.start_our_runner(s, l), self.args.fanout_n)
            suites["sdk"] = self.runner_suite("sdk", lambda: self.start_sdk_runner("sdk"), self.args.sdk_fanout_n)
        if "rss" in self.args.only:
            self.results["rss"] = {f"n{slots}": self.rss(slots) for slots in (1, 2, 4)}
        if "fanout" in self.args.only:
            self.results["fanout"] = self.big_fanout()
        if "deploy" in self.args.only:
            self.results["deploy"] = self.deploy()
        self.results["server_rss_end"] = self.rss_of(self.server)
        self.results["fsync_after"] = fsync_probe(self.data_dir)
        return self.results


# --- report -----------------------------------------------------------------------------------


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = []
    machine = results["machine"]
    lines.append(
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['mem_gib']} GiB RAM, Linux {machine['kernel']}; "
        f"{machine['date']}; tree {machine['git']}."
    )
    lines.append(f"Command: `{results['command'].strip()}`")
    lines.append("")
    lines.append(
        f"Server data dir on {results.get('data_dir_fs', '?')}; 4 KiB append + fdatasync there: "
        + "; ".join(
            f"{when} p50 {results[key]['p50_ms']:.2f} ms, p99 {results[key]['p99_ms']:.2f} ms"
            for when, key in (("before", "fsync_before"), ("after the run", "fsync_after"))
            if key in results
        )
        + "."
    )
    lines.append("")
    runners = results.get("runners", {})
    names = {"ours-n1": "ours `-n 1`", "ours-n2": "ours `-n 2`", "sdk": f"official SDK {SDK_VERSION} direct runner"}
    if runners:
        header = "| | " + " | ".join(names[k] for k in runners) + " |"
        lines += [header, "|---" * (len(runners) + 1) + "|"]

        def row(title, getter):
            cells = []
            for key in runners:
                try:
                    cells.append(getter(runners[key]))
                except (KeyError, TypeError):
                    cells.append("n/a")
            if any(cell != "n/a" for cell in cells):
                lines.append(f"| {title} | " + " | ".join(cells) + " |")

        row("fan-out job (root + N no-op subtasks)", lambda r: f"1 + {r['throughput']['n']:,}" + ("" if r["throughput"]["completed"] else f" (**not completed**: {r['throughput']['computed']:,} computed)"))
        row("no-op throughput, job stats (tasks/s): median (range)", lambda r: f"**{fmt(r['throughput']['tasks_per_s'])}** ({fmt(r['throughput']['min_tasks_per_s'], 0)}–{fmt(r['throughput']['max_tasks_per_s'], 0)}, {r['throughput']['runs']} runs)")
        row("subtask drain rate (tasks/s)", lambda r: fmt(r["throughput"]["drain_per_s"]))
        row("root task (creates + submits N subtasks)", lambda r: f"{fmt(r['throughput']['root_s'] * 1000, 0)} ms")
        row("CPU during the median job: server / runner (s)", lambda r: f"{r['throughput']['cpu']['cpu_s']['server']:.2f} / {r['throughput']['cpu']['cpu_s']['runner']:.2f}")
        row("CPU per task: server / runner (µs)", lambda r: f"{r['throughput']['cpu']['cpu_s']['server'] / r['throughput']['computed'] * 1e6:,.0f} / {r['throughput']['cpu']['cpu_s']['runner'] / r['throughput']['computed'] * 1e6:,.0f}")
        row("other processes' CPU during the job (cores)", lambda r: f"{r['throughput']['cpu']['other_cores']:.2f}")
        row("dispatch latency p50 / p99, server (ms)", lambda r: f"**{fmt(r['latency']['server_ms']['p50'])} / {fmt(r['latency']['server_ms']['p99'])}**")
        row("dispatch latency p90 / max, server (ms)", lambda r: f"{fmt(r['latency']['server_ms']['p90'])} / {fmt(r['latency']['server_ms']['max'])}")
        row("samples over 100 ms", lambda r: f"{r['latency']['over_100ms']} of {r['latency']['started']}")
        row("submit call -> task body p50 / p99, client (ms)", lambda r: f"{fmt(r['latency']['client_ms']['p50'], 2)} / {fmt(r['latency']['client_ms']['p99'], 2)}")
        row("SubmitJob call (SDK client) p50 (ms)", lambda r: fmt(r["latency"]["submit_rpc_ms"]["p50"], 2))
        row("other processes' CPU during latency runs (cores)", lambda r: f"{r['latency']['cpu']['other_cores']:.2f}")
        row("runner RSS after these runs (MiB)", lambda r: f"{r['rss_after']['group_vmrss_kib'] / 1024:.1f} ({r['rss_after']['group_processes']} process(es))")
        lines.append("")
        if "latency" in args.only:
            lines.append(
                f"Latency: {args.latency_samples} single-task jobs per runner, one at a time, each after a random pause of "
                f"{args.latency_min_gap:g}..{args.latency_gap:g} s (server default: NextTask long-polls 1 s, then answers idle suggesting a 300 ms pause). "
                "Server timestamps are stored in whole milliseconds."
            )
            lines.append("")

    fanout = results.get("fanout")
    if fanout:
        lines += [f"| {fanout['n']:,}-task fan-out (our runner -n 2) | |", "|---|---|"]
        lines.append(f"| job | 1 root + {fanout['n']:,} no-op subtasks |")
        lines.append(f"| outcome | {fanout['state']}, {fanout['computed']:,} tasks computed" + (f" (stopped after the {fanout['timeout_s']} s timeout)" if fanout["timed_out"] else "") + " |")
        lines.append(f"| submitted -> last task stopped (server) | **{fmt(fanout.get('total_s'), 1)} s** |")
        lines.append(f"| client wall time (submit -> seen completed, 2 s polls) | {fanout['client_wall_s']:.1f} s |")
        if "root_run_s" in fanout:
            lines.append(f"| root task: started after submit / ran (creating + submitting {fanout['n']:,} subtasks) | {fanout['root_started_after_submit_s'] * 1000:.0f} ms / {fanout['root_run_s']:.2f} s |")
        if "subtask_drain_s" in fanout:
            lines.append(f"| subtasks: root stopped -> last stopped | {fanout['subtask_drain_s']:.1f} s ({fmt(fanout['subtask_drain_per_s'])} tasks/s) |")
        lines.append(f"| `tilebox job get` of the finished job | {fanout['job_get_s']:.1f} s |")
        cpu = fanout["cpu"]
        lines.append(f"| CPU: server / runner / others | {cpu['cpu_s']['server']:.1f} s / {cpu['cpu_s']['runner']:.1f} s / {cpu['other_cores']:.2f} cores |")
        lines.append(f"| server RSS after (peak) | {fanout['server_rss']['vmrss_kib'] / 1024:.0f} MiB ({fanout['server_rss']['vmhwm_kib'] / 1024:.0f} MiB) |")
        lines.append(f"| runner RSS after (peak) | {fanout['runner_rss']['vmrss_kib'] / 1024:.0f} MiB ({fanout['runner_rss']['vmhwm_kib'] / 1024:.0f} MiB) |")
        samples = fanout["samples"]
        if len(samples) >= 3:
            points = [s for s in samples if s["total"] > 1]
            if len(points) >= 2:
                marks = [points[0]] + [points[i * (len(points) - 1) // 4] for i in range(1, 5)]
                rates = []
                for a, b in zip(marks, marks[1:]):
                    if b["t"] > a["t"]:
                        rates.append(f"{(b['computed'] - a['computed']) / (b['t'] - a['t']):,.0f}")
                lines.append(f"| drain rate by quarter of the run (tasks/s) | {' → '.join(rates)} |")
        lines.append("")

    deploy = results.get("deploy")
    if deploy:
        lines += [
            "| deploy-to-first-task | publish-release | deploy-release | deploy returned -> task started | of which: -> release loaded (runner log) / loaded -> started |",
            "|---|---|---|---|---|",
        ]

        def ms(value):
            return fmt(value * 1000 if value is not None else None, 0)

        for entry in deploy["rounds"]:
            lines.append(
                f"| {entry['round']} | {entry['publish_s'] * 1000:.0f} ms | {entry['deploy_command_s'] * 1000:.0f} ms | "
                f"**{ms(entry['deploy_return_to_started_s'])} ms** | {ms(entry.get('deploy_return_to_loaded_s'))} ms / {ms(entry.get('loaded_to_started_s'))} ms |"
            )
        lines.append("")

    rss = results.get("rss")
    if rss:
        lines += ["| runner RSS (direct mode, after 200 tasks) | VmRSS | VmHWM | threads | start -> 200 tasks done |", "|---|---|---|---|---|"]
        for key, value in rss.items():
            lines.append(
                f"| `-n {key[1:]}` | {value['vmrss_kib'] / 1024:.1f} MiB | {value['vmhwm_kib'] / 1024:.1f} MiB | {value['threads']} | {value['start_to_200_tasks_done_s']:.2f} s |"
            )
        lines.append("")

    # Targets.
    targets = []
    if runners.get("sdk", {}).get("throughput") and runners["sdk"]["throughput"].get("tasks_per_s"):
        sdk = runners["sdk"]["throughput"]["tasks_per_s"]
        for key in ("ours-n1", "ours-n2"):
            ours = runners.get(key, {}).get("throughput", {}).get("tasks_per_s")
            if ours:
                ratio = ours / sdk
                targets.append((f"{names[key]} ≥ 20× the SDK runner's no-op throughput", f"{ratio:.1f}×", "met" if ratio >= 20 else f"missed ({ratio / 20:.0%} of the target)"))
    for key in ("ours-n1", "ours-n2"):
        p50 = runners.get(key, {}).get("latency", {}).get("server_ms", {}).get("p50")
        if p50 is not None:
            targets.append((f"{names[key]}: p50 dispatch latency < 2 ms", f"{p50:.2f} ms (server, 1 ms resolution)", "met" if p50 < 2 else f"missed by {p50 - 2:.2f} ms"))
    if fanout:
        total = fanout.get("total_s")
        if total is not None:
            targets.append((f"{fanout['n']:,}-task fan-out < 30 s", f"{total:.1f} s", "met" if total < 30 else f"missed ({total / 30:.1f}× the target)"))
        else:
            targets.append((f"{fanout['n']:,}-task fan-out < 30 s", f"not completed within {fanout['timeout_s']} s ({fanout['computed']:,} computed)", "missed"))
    if targets:
        lines += ["| target | measured | |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in targets]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-build", action="store_true", help="use target/release/tilebox as it is")
    parser.add_argument("--binary", help="a tilebox binary to use instead of building")
    parser.add_argument("--only", default="throughput,latency,rss,fanout,deploy", help="comma-separated subset")
    parser.add_argument("--fanout-n", type=int, default=2000, help="no-op subtasks per throughput job, our runner")
    parser.add_argument("--sdk-fanout-n", type=int, default=2000, help="no-op subtasks per throughput job, SDK runner")
    parser.add_argument("--throughput-timeout", type=float, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="throughput jobs per runner (the median is reported)")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--latency-gap", type=float, default=1.5, help="longest random pause before each latency sample (s)")
    parser.add_argument("--latency-min-gap", type=float, default=0.0, help="shortest random pause before each latency sample (s)")
    parser.add_argument("--deploy-repeat", type=int, default=3, help="redeploys measured after the first deploy")
    parser.add_argument("--big-n", type=int, default=100_000)
    parser.add_argument("--big-timeout", type=float, default=600)
    parser.add_argument("--quiet-wait", type=float, default=60, help="longest wait for an idle machine before each measurement (s)")
    parser.add_argument("--quiet-cores", type=float, default=0.3, help="'idle' means less than this many cores busy")
    parser.add_argument("--data-base", help="parent directory of the server's data dir (default: the temp dir); e.g. /dev/shm to take fsync cost out")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pauses")
    parser.add_argument("--json-out", help="also write all results as JSON here")
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]

    bench = Bench(args)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        results = bench.run()
    finally:
        bench.cleanup()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
