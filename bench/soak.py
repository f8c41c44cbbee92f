#!/usr/bin/env python3
"""Soak test: a real `tilebox server` and two `tilebox runner start` processes kept busy with a
mix of jobs (fan-outs, CPU-bound tasks, tasks that fail, optional failures, undecodable
inputs) and hostile tasks (`SystemExit`, a `BaseException` that cannot be formatted, invalid
progress, a display far over the limit, and a task class with an invalid identifier in the
runners' release) for a while; RSS of every process sampled every few seconds.

At the end it checks that
- every submitted job ended as its kind is designed to (completed or failed), with exactly
  the task counts per state that kind produces (nothing lost, nothing run into extra tasks);
- no hostile task was executed more often than its retries allow (each execution appends a
  byte to a file of its own);
- memory is flat: after the warm-up, the RSS of each process grows by at most 10%
  (median of the last minute against the median of the first minute after warm-up);
and prints the figures (also as JSON with --json-out). Exit code 0 when both hold.

Usage:
    python3 bench/soak.py [--duration 600] [--sample-seconds 5] [--warm-up 120]
                          [--binary target/release/tilebox] [--in-flight 12]

Only the standard library; runs against loopback on a free port, in a temp directory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
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

APP = '''
import time
from tilebox.workflows import ExecutionContext, Runner, Task


class FanOut(Task):
    count: int
    ms: int

    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtasks([Leaf(self.ms) for _ in range(self.count)])


class Leaf(Task):
    ms: int

    def execute(self, context: ExecutionContext) -> None:
        time.sleep(self.ms / 1000)


class Spin(Task):
    iterations: int

    def execute(self, context: ExecutionContext) -> None:
        total = 0
        for value in range(self.iterations):
            total += value * value
        context.current_task.display = f"Spin({total % 1000})"


class Boom(Task):
    reason: str

    def execute(self, context: ExecutionContext) -> None:
        raise ValueError(self.reason)


class WithOptional(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtask(Boom("optional"), optional=True)
        context.submit_subtask(Leaf(1))


def executed(path: str) -> None:
    with open(path, "a") as counter:
        counter.write("x")


class Exit(Task):
    path: str

    def execute(self, context: ExecutionContext) -> None:
        executed(self.path)
        raise SystemExit(3)


class Unprintable(BaseException):
    def __str__(self) -> str:
        raise Unprintable()

    __repr__ = __str__


class RaiseUnprintable(Task):
    path: str

    def execute(self, context: ExecutionContext) -> None:
        executed(self.path)
        raise Unprintable()


class BadProgress(Task):
    path: str

    def execute(self, context: ExecutionContext) -> None:
        executed(self.path)
        context.progress("p").add(-1)


class HugeDisplay(Task):
    path: str

    def execute(self, context: ExecutionContext) -> None:
        executed(self.path)
        context.current_task.display = "x" * 100_000


class BadIdentifier(Task):
    @staticmethod
    def identifier() -> tuple[str, str]:
        return ("X", "v1.0\\n")

    def execute(self, context: ExecutionContext) -> None:
        pass


runner = Runner(
    tasks=[FanOut, Leaf, Spin, Boom, WithOptional, Exit, RaiseUnprintable, BadProgress, HugeDisplay, BadIdentifier]
)
'''

CONFIG = '[workflow]\nslug = "soak"\nrunner = "app:runner"\n\n[build]\ninclude = ["app.py"]\n'

# The input of a hostile task: a file of its own that counts its executions.
HOSTILE = "{counter}"

# name: (task, input, max_retries, expected job state, expected task counts by state)
KINDS = {
    "fanout": ("FanOut", '{"count": 50, "ms": 2}', 0, "completed", {"computed": 51}),
    "spin": ("Spin", "200000", 0, "completed", {"computed": 1}),
    "boom": ("Boom", "soak", 2, "failed", {"failed": 1}),
    "optional": ("WithOptional", "", 0, "completed", {"computed": 2, "failed_optional": 1}),
    "badinput": ("Leaf", "not-a-number", 1, "failed", {"failed": 1}),
    # Hostile: each must end as a workflow error counted against its retries.
    "exit": ("Exit", HOSTILE, 1, "failed", {"failed": 1}),
    "unprintable": ("RaiseUnprintable", HOSTILE, 1, "failed", {"failed": 1}),
    "badprogress": ("BadProgress", HOSTILE, 1, "failed", {"failed": 1}),
    "hugedisplay": ("HugeDisplay", HOSTILE, 1, "failed", {"failed": 1}),
}
# The submission cycle: half fan-outs, the rest spread over the other kinds.
MIX = [
    "fanout", "spin", "fanout", "boom", "fanout", "optional", "fanout", "badinput", "fanout", "spin",
    "fanout", "exit", "fanout", "unprintable", "fanout", "badprogress", "fanout", "hugedisplay",
]  # fmt: skip
ACTIVE_STATES = "submitted,running,started"


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process and its children (a runner's probe or child hosts), in KiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids.extend(int(child) for child in children)
    except OSError:
        return None
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (and its reaped children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14-17 of proc(5) (utime, stime, cutime, cstime), counted after the command name.
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Soak:
    def __init__(self, arguments: argparse.Namespace) -> None:
        self.arguments = arguments
        self.binary = Path(arguments.binary).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="tilebox-soak-"))
        self.processes: dict[str, subprocess.Popen] = {}
        self.url = ""
        self.submitted: dict[str, str] = {}  # job id -> kind
        self.samples: list[dict] = []
        self.stop_sampling = threading.Event()
        self.started = 0.0
        self.cpu_percent: dict[str, float] = {}
        self.counters = self.work / "executions"
        self.counters.mkdir()
        self.counted: dict[str, tuple[Path, int]] = {}  # job id -> (execution counter, allowed)

    def tilebox(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        environment = {**os.environ, "TILEBOX_API_URL": self.url, "NO_COLOR": "1"}
        environment.pop("TILEBOX_API_KEY", None)
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=environment, timeout=120
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"tilebox {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def start(self) -> None:
        data = self.work / "data"
        data.mkdir()
        server = subprocess.Popen(
            [str(self.binary), "server", "--listen", "127.0.0.1:0", "--data-dir", str(data), "--log-level", "warn"],
            stdout=subprocess.PIPE,
            stderr=open(self.work / "server.log", "w"),
            text=True,
        )
        self.processes["server"] = server
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"the server did not start: {line!r}; see {self.work / 'server.log'}")
        self.url = line.strip().removeprefix("listening on ")
        threading.Thread(target=lambda: server.stdout and server.stdout.read(), daemon=True).start()

        project = self.work / "project"
        project.mkdir()
        (project / "app.py").write_text(APP)
        (project / "tilebox.workflow.toml").write_text(CONFIG)
        environment = {**os.environ, "TILEBOX_API_URL": self.url, "NO_COLOR": "1"}
        environment.pop("TILEBOX_API_KEY", None)
        for index in range(2):
            self.processes[f"runner-{index}"] = subprocess.Popen(
                [
                    str(self.binary), "runner", "start", "--quiet", "--project", str(project),
                    "--cache-dir", str(self.work / "cache"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(self.work / f"runner-{index}.log", "w"),
                env=environment,
            )

    def sample(self) -> None:
        while not self.stop_sampling.is_set():
            sample = {"t": round(time.monotonic() - self.started, 1)}
            for name, process in self.processes.items():
                sample[name] = rss_kib(process.pid)
            self.samples.append(sample)
            self.stop_sampling.wait(self.arguments.sample_seconds)

    def active_jobs(self) -> int:
        listed = json.loads(self.tilebox("--json", "job", "list", "--state", ACTIVE_STATES, "--limit", "1000").stdout)
        return len(listed["jobs"])

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; logs in {self.work}")

    def submit(self, kind: str) -> None:
        task, task_input, retries, _, _ = KINDS[kind]
        args = ["--json", "job", "submit", "--name", f"soak-{kind}", "--task", task, "--max-retries", str(retries)]
        counter = None
        if task_input == HOSTILE:
            counter = self.counters / f"{len(self.submitted)}-{kind}"
            # A task of one field takes its bare value, as the SDK serializes it.
            task_input = json.dumps(str(counter))
        if task_input:
            args += ["--input", task_input]
        job = json.loads(self.tilebox(*args).stdout)
        self.submitted[job["id"]] = kind
        if counter is not None:
            self.counted[job["id"]] = (counter, retries + 1)

    def run(self) -> int:
        self.start()
        self.started = time.monotonic()
        cpu_at_start = {name: cpu_seconds(process.pid) or 0.0 for name, process in self.processes.items()}
        sampler = threading.Thread(target=self.sample, daemon=True)
        sampler.start()
        deadline = self.started + self.arguments.duration
        kinds = itertools.cycle(MIX)
        last_report = self.started
        while time.monotonic() < deadline:
            self.check_alive()
            active = self.active_jobs()
            for _ in range(max(0, self.arguments.in_flight - active)):
                self.submit(next(kinds))
            now = time.monotonic()
            if now - last_report >= 30:
                last_report = now
                print(
                    f"[{now - self.started:6.0f}s] {len(self.submitted)} jobs submitted, {active} active, "
                    f"rss {self.samples[-1] if self.samples else {}}",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.2)
        submitted_for = time.monotonic() - self.started
        # Drain: every job must end.
        drain_deadline = time.monotonic() + 300
        while self.active_jobs() > 0:
            self.check_alive()
            if time.monotonic() > drain_deadline:
                raise RuntimeError("jobs did not finish within 300 s of the last submission")
            time.sleep(0.5)
        elapsed = time.monotonic() - self.started
        self.cpu_percent = {
            name: round(100 * ((cpu_seconds(process.pid) or 0.0) - cpu_at_start[name]) / elapsed, 1)
            for name, process in self.processes.items()
        }
        self.stop_sampling.set()
        sampler.join()
        return self.report(submitted_for, elapsed)

    def all_jobs(self) -> list[dict]:
        jobs: list[dict] = []
        cursor = None
        while True:
            args = ["--json", "job", "list", "--limit", "1000", "--sort", "asc"]
            if cursor:
                args += ["--cursor", cursor]
            page = json.loads(self.tilebox(*args).stdout)
            jobs.extend(page["jobs"])
            cursor = page.get("next_cursor")
            if not cursor:
                return jobs

    def report(self, submitted_for: float, elapsed: float) -> int:
        problems: list[str] = []
        stored = {job["id"]: job for job in self.all_jobs()}
        missing = set(self.submitted) - set(stored)
        if missing:
            problems.append(f"{len(missing)} submitted jobs are missing from the server")
        unexpected = set(stored) - set(self.submitted)
        if unexpected:
            problems.append(f"{len(unexpected)} jobs on the server were never submitted")
        per_kind: dict[str, dict] = {kind: {"jobs": 0, "as_designed": 0} for kind in KINDS}
        tasks_total = 0
        for job_id, kind in self.submitted.items():
            job = stored.get(job_id)
            if job is None:
                continue
            _, _, _, state, counts = KINDS[kind]
            per_kind[kind]["jobs"] += 1
            by_state = {name: count for name, count in job["execution_stats"]["tasks_by_state"].items() if count}
            tasks_total += job["execution_stats"]["total_tasks"]
            if job["state"] == state and by_state == counts:
                per_kind[kind]["as_designed"] += 1
            elif len(problems) < 20:
                problems.append(f"job {job_id} ({kind}): {job['state']} {by_state}, expected {state} {counts}")
        for kind, figures in per_kind.items():
            if figures["jobs"] != figures["as_designed"]:
                problems.append(f"{kind}: {figures['jobs'] - figures['as_designed']} jobs did not end as designed")

        executions = {"hostile_jobs": len(self.counted), "executions": 0, "max_executions": 0, "over_allowed": 0}
        for job_id, (counter, allowed) in self.counted.items():
            count = len(counter.read_text()) if counter.exists() else 0
            executions["executions"] += count
            executions["max_executions"] = max(executions["max_executions"], count)
            if count > allowed:
                executions["over_allowed"] += 1
                if len(problems) < 20:
                    problems.append(f"job {job_id} ({self.submitted[job_id]}): executed {count} times, allowed {allowed}")
        skipped = [
            line for index in range(2) for line in (self.work / f"runner-{index}.log").read_text().splitlines()
            if "invalid identifier" in line and 'name="X"' in line
        ]  # fmt: skip
        if not skipped:
            problems.append("no runner logged that it skipped the task with the invalid identifier")

        memory = {}
        warm = [sample for sample in self.samples if sample["t"] >= self.arguments.warm_up]
        window = max(1, int(60 / self.arguments.sample_seconds))
        for name in self.processes:
            values = [sample[name] for sample in warm if sample.get(name)]
            if len(values) < 2:
                problems.append(f"{name}: too few samples after the warm-up")
                continue
            first = statistics.median(values[:window])
            last = statistics.median(values[-window:])
            growth = (last - first) / first
            memory[name] = {
                "after_warm_up_kib": first,
                "end_kib": last,
                "max_kib": max(values),
                "growth_percent": round(growth * 100, 1),
            }
            if growth > 0.10:
                problems.append(f"{name}: RSS grew {growth:.1%} after the warm-up ({first} -> {last} KiB)")

        figures = {
            "duration_seconds": round(submitted_for),
            "drained_after_seconds": round(elapsed),
            "jobs": len(self.submitted),
            "tasks": tasks_total,
            "tasks_per_second": round(tasks_total / elapsed, 1),
            "jobs_by_kind": per_kind,
            "hostile_executions": executions,
            "invalid_identifier_log": skipped[:2],
            "memory": memory,
            "cpu_percent_of_one_core": self.cpu_percent,
            "samples": len(self.samples),
            "binary": str(self.binary),
            "problems": problems,
        }
        print(json.dumps(figures, indent=2))
        if self.arguments.json_out:
            Path(self.arguments.json_out).write_text(json.dumps({**figures, "rss_samples": self.samples}, indent=2))
        print("PASS" if not problems else "FAIL", file=sys.stderr)
        return 0 if not problems else 1

    def stop(self) -> None:
        self.stop_sampling.set()
        for name, process in self.processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.arguments.keep:
            print(f"kept {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def default_binary() -> str:
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "tilebox"
        if candidate.exists():
            return str(candidate)
    return str(REPO / "target" / "release" / "tilebox")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of submitting work (default 600)")
    parser.add_argument("--sample-seconds", type=float, default=5, help="RSS sampling interval (default 5)")
    parser.add_argument("--warm-up", type=float, default=None, help="seconds ignored for memory (default: 20%% of the duration, at most 120)")
    parser.add_argument("--in-flight", type=int, default=12, help="jobs kept active at once (default 12)")
    parser.add_argument("--binary", default=os.environ.get("TILEBOX_BIN") or default_binary(), help="the tilebox binary (default: target/release, else target/debug)")
    parser.add_argument("--json-out", help="also write the figures and every RSS sample to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, database)")
    arguments = parser.parse_args()
    if arguments.warm_up is None:
        arguments.warm_up = min(120.0, arguments.duration * 0.2)
    soak = Soak(arguments)
    try:
        return soak.run()
    finally:
        soak.stop()


if __name__ == "__main__":
    sys.exit(main())
