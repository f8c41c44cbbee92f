#!/usr/bin/env python3
"""Runner and orchestrator benchmarks: one command, one real `tilebox server` on loopback.

    python3 bench/run.py [--binary PATH] [--no-build] [--only throughput,latency,cpu,scaling,deploy]
                         [--skip-1m] [--data-base /dev/shm] [--json-out F] [--markdown-out F] ...

It prints a markdown section for BENCHMARKS.md on stdout (progress goes to stderr), with:

1. Side by side, on the same server and the same jobs: our runner in direct mode
   (`tilebox runner start --project P -n 1`, and `-n 2`) and the official SDK's direct runner
   (`tilebox-workflows==0.66.0` from PyPI in a uv venv, `client.runner(...).run_forever()`):
   - no-op throughput: a job whose root task submits N no-op subtasks, on a warm runner,
     timed from the job's submission to its last task's stop (server timestamps);
   - dispatch latency p50/p99 to an idle runner: single-task jobs submitted one at a time
     after a seeded random pause, from the start of the submit call (SDK client, before the
     RPC) to the task body's first statement (both `time.time_ns()` on this machine); the
     server's submitted_at -> started_at alongside;
   - (ours only) a CPU-bound task, a pure-Python loop of about --cpu-task-ms, --cpu-tasks of
     them in one job: `-n 1` against `-n 2`, and the speedup.
2. Deploy-to-first-task on a release runner (publish-release, deploy-release, task started).
3. A scaling table, our runner `-n --scaling-slots`: fan-outs of 1k, 10k, 100k and 1M no-op
   tasks (--skip-1m drops the last), with tasks/s, peak server and runner RSS, and the
   database size (SQLite file plus -wal) after each.

Every fan-out is checked: the job completed, every task is computed, and every no-op task ran
exactly once (each execution appends one byte to a file, see `workload.py`).

The machine is shared: before each measurement the harness logs the load average and waits
(bounded) for the CPU to be quiet; the report lists the conditions of every measurement.
Everything runs in a temp dir; every process it starts runs in its own process group and is
stopped at the end. Only the standard library here; the SDK runs in a venv created with uv.

Layout: `run.py` (this: options, the plan of steps with a time estimate, the run),
`processes.py` (server, runners, CLI, /proc readings), `measure.py` (the measurements),
`report.py` (markdown), `workload.py` (the tasks), `sdk_driver.py` (the SDK's side).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import measure
import report
from processes import (
    DEFAULT_BINARY,
    Harness,
    duration,
    filesystem_of,
    fsync_probe,
    load_average,
    log,
    machine,
    rss_of,
)

MEASUREMENTS = ("throughput", "latency", "cpu", "scaling", "deploy")
# Rough rates for the time estimate until the run has measured its own (tasks/s).
ASSUMED_RATES = {"ours": 5000.0, "sdk": 400.0}
# Starting a runner and its warm-up job (s), for the estimate.
WARM_UP_S = {"ours-n1": 5.0, "ours-n2": 5.0, "sdk": 10.0, "scaling": 5.0}


@dataclass
class Step:
    title: str
    runner: str | None  # the runner it uses, started (and warmed up) by its first step
    estimate: Callable[[], float]  # seconds, from what the run knows when it is asked
    run: Callable[[], None]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.harness = Harness(args)
        self.results: dict = {"runners": {}}
        self.rates: dict[str, float] = {}
        self.runner: tuple[str, subprocess.Popen] | None = None  # the one the current steps use
        self.spin: dict | None = None

    # runners: one at a time, kept across the steps that use it

    def runner_kind(self, label: str) -> tuple[str, int]:
        if label == "sdk":
            return "sdk", 1
        if label == "scaling":
            return "ours", self.args.scaling_slots
        return "ours", int(label.removeprefix("ours-n"))

    def use_runner(self, label: str) -> subprocess.Popen:
        if self.runner and self.runner[0] == label and self.runner[1].poll() is None:
            return self.runner[1]
        self.stop_runner()
        kind, slots = self.runner_kind(label)
        log(f"starting runner {label}")
        process = self.harness.start_sdk_runner(label) if kind == "sdk" else self.harness.start_our_runner(slots, label)
        self.runner = (label, process)
        self.harness.warm_up(process, label)
        return process

    def stop_runner(self) -> None:
        if self.runner:
            label, process = self.runner
            if label in self.results["runners"]:
                self.results["runners"][label]["rss_after"] = rss_of(process.pid)
            self.harness.stop(process)
            self.runner = None

    def suite(self, label: str) -> dict:
        return self.results["runners"].setdefault(label, {})

    # the plan

    def rate(self, label: str) -> float:
        return self.rates.get(label) or ASSUMED_RATES[self.runner_kind(label)[0]]

    def steps(self) -> list[Step]:
        args = self.args
        steps = []
        for label in ("ours-n1", "ours-n2", "sdk"):
            if "throughput" in args.only:
                title = f"{label}: no-op throughput, {args.repeat} jobs of 1 + {args.throughput_n:,} tasks"
                steps.append(
                    Step(title, label, partial(self.estimate_throughput, label), partial(self.run_throughput, label))
                )
            if "latency" in args.only:
                title = f"{label}: dispatch latency, {args.latency_samples} samples"
                steps.append(Step(title, label, self.estimate_latency, partial(self.run_latency, label)))
            if "cpu" in args.only and label != "sdk":
                title = f"{label}: CPU-bound, {args.repeat} jobs of {args.cpu_tasks} tasks of ~{args.cpu_task_ms:g} ms"
                steps.append(
                    Step(title, label, partial(self.estimate_cpu_bound, label), partial(self.run_cpu_bound, label))
                )
        if "deploy" in args.only:
            steps.append(Step("deploy-to-first-task", None, self.estimate_deploy, self.run_deploy))
        if "scaling" in args.only:
            for n in args.scaling_sizes:
                title = f"scaling: fan-out of {n:,}"
                steps.append(Step(title, "scaling", partial(self.estimate_scaling, n), partial(self.run_scaling, n)))
        return steps

    def estimate_left(self, steps: list[Step]) -> float:
        """Seconds the steps will take: theirs, and starting each runner they use that is not
        running yet."""
        labels = {step.runner for step in steps if step.runner} - {self.runner[0] if self.runner else None}
        return sum(step.estimate() for step in steps) + sum(WARM_UP_S[label] for label in labels)

    def quiet_s(self) -> float:
        return 2.0 if self.args.quiet_wait > 0 else 1.0

    def estimate_throughput(self, label: str) -> float:
        args = self.args
        return args.repeat * (self.quiet_s() + (args.throughput_n + 1) / self.rate(label) + 1.5)

    def estimate_latency(self) -> float:
        args = self.args
        return self.quiet_s() + 3 + args.latency_samples * ((args.latency_min_gap + args.latency_gap) / 2 + 0.03)

    def estimate_cpu_bound(self, label: str) -> float:
        args = self.args
        slots = self.runner_kind(label)[1]
        return 2 + args.repeat * (self.quiet_s() + args.cpu_tasks * args.cpu_task_ms / 1000 / slots + 1)

    def estimate_deploy(self) -> float:
        return 2 + (1 + self.args.deploy_repeat) * (self.quiet_s() + 3)

    def estimate_scaling(self, n: int) -> float:
        if self.failed_scaling_row():
            return 0.0
        # The root task creates and submits the subtasks at some microseconds each.
        running = min(60 + n / self.args.min_rate, n / self.scaling_rate() + n * 5e-6)
        return self.quiet_s() + 3 + running

    def failed_scaling_row(self) -> dict | None:
        rows = self.results.get("scaling", {}).get("rows", [])
        return next((row for row in rows if not row.get("skipped") and not row["ok"]), None)

    def scaling_rate(self) -> float:
        """The last scaling row's rate, else the throughput with the same slots."""
        return self.rates.get("scaling") or self.rates.get(f"ours-n{self.args.scaling_slots}") or ASSUMED_RATES["ours"]

    # steps

    def run_throughput(self, label: str) -> None:
        result = measure.throughput(self.harness, self.use_runner(label), label)
        self.suite(label)["throughput"] = result
        if result["tasks_per_s"]:
            self.rates[label] = result["tasks_per_s"]

    def run_latency(self, label: str) -> None:
        self.suite(label)["latency"] = measure.latency(self.harness, self.use_runner(label), label)

    def run_cpu_bound(self, label: str) -> None:
        runner = self.use_runner(label)
        if self.spin is None:
            self.spin = self.results["cpu_calibration"] = measure.calibrate_spin(self.harness)
        self.suite(label)["cpu_bound"] = measure.cpu_bound(self.harness, runner, label, self.spin["iterations"])

    def run_deploy(self) -> None:
        self.stop_runner()  # the release runner serves its own cluster; nothing else should run
        self.results["deploy"] = measure.deploy(self.harness)

    def run_scaling(self, n: int) -> None:
        rows = self.results.setdefault("scaling", {"slots": self.args.scaling_slots, "rows": []})["rows"]
        failed = self.failed_scaling_row()
        if failed:
            # A bigger fan-out would not complete either: spare the time.
            log(f"skipping the fan-out of {n:,}: the one of {failed['n']:,} did not complete")
            rows.append({"n": n, "skipped": f"the fan-out of {failed['n']:,} did not complete"})
            return
        row = measure.scaling(self.harness, self.use_runner("scaling"), "scaling", n)
        rows.append(row)
        if row["tasks_per_s"]:
            self.rates["scaling"] = row["tasks_per_s"]

    # the whole run

    def run(self) -> dict:
        args = self.args
        started = time.monotonic()
        self.results["machine"] = machine()
        self.results["command"] = "python3 bench/run.py " + " ".join(sys.argv[1:])
        self.results["settings"] = dict(vars(args))
        self.results["conditions"] = self.harness.conditions
        log(f"load average {load_average()} (1/5/15 min) on {self.results['machine']['nproc']} CPUs")
        self.harness.prepare_binary()
        self.results["binary"] = str(Path(args.binary).resolve())
        if {"throughput", "latency", "cpu"} & set(args.only):
            self.harness.prepare_sdk_venv()
        self.harness.start_server()
        self.results["data_dir_fs"] = filesystem_of(self.harness.data_dir)
        self.results["fsync_before"] = fsync_probe(self.harness.data_dir)
        self.harness.write_project()
        steps = self.steps()
        for index, step in enumerate(steps):
            if self.harness.server.poll() is not None:
                log(f"the server exited with {self.harness.server.returncode}; stopping")
                server_log = self.harness.log_tail("server", 2000)
                self.results.setdefault("errors", []).append(
                    {"step": step.title, "error": f"the server exited\n{server_log}"}
                )
                break
            elapsed, left = duration(time.monotonic() - started), duration(self.estimate_left(steps[index:]))
            log(f"step {index + 1}/{len(steps)}: {step.title} (elapsed {elapsed}, about {left} left)")
            try:
                step.run()
            except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as error:
                # One failed step (a runner that crashed, a CLI call that failed) should not
                # cost the others: report it, start that runner afresh for the next step.
                log(f"step failed: {step.title}: {error}")
                self.results.setdefault("errors", []).append({"step": step.title, "error": str(error)[-2000:]})
                self.stop_runner()
        self.stop_runner()
        self.results["server_rss_end"] = rss_of(self.harness.server.pid)
        self.results["database_bytes_end"] = self.harness.database_bytes()
        self.results["fsync_after"] = fsync_probe(self.harness.data_dir)
        self.results["duration_s"] = time.monotonic() - started
        log(f"done in {duration(self.results['duration_s'])}")
        return self.results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--binary",
        default=str(DEFAULT_BINARY),
        help="the tilebox binary (default: %(default)s, built with `cargo build --release` unless --no-build;"
        " another path is used as it is)",
    )
    add("--no-build", action="store_true", help="do not build the default binary")
    add("--only", default=",".join(MEASUREMENTS), help="comma-separated subset of: %(default)s")
    add(
        "--throughput-n",
        type=int,
        default=5000,
        help="no-op subtasks per throughput job, every runner (default: %(default)s)",
    )
    add(
        "--repeat",
        type=int,
        default=3,
        help="throughput and CPU-bound jobs per runner; the median is reported (default: %(default)s)",
    )
    add("--throughput-timeout", type=float, default=300, help="(s, default: %(default)s)")
    add("--latency-samples", type=int, default=200, help="(default: %(default)s)")
    add(
        "--latency-gap",
        type=float,
        default=1.0,
        help="longest random pause before each latency sample (s, default: %(default)s)",
    )
    add(
        "--latency-min-gap",
        type=float,
        default=0.0,
        help="shortest random pause before each latency sample (s, default: %(default)s)",
    )
    add("--cpu-tasks", type=int, default=40, help="CPU-bound tasks per job (default: %(default)s)")
    add(
        "--cpu-task-ms",
        type=float,
        default=75,
        help="length of one CPU-bound task, calibrated at start (ms, default: %(default)s)",
    )
    add(
        "--scaling-sizes",
        default="1000,10000,100000,1000000",
        help="fan-out sizes of the scaling table (default: %(default)s)",
    )
    add("--skip-1m", action="store_true", help="leave out scaling sizes of 1,000,000 and more")
    add("--scaling-slots", type=int, default=2, help="-n of our runner in the scaling table (default: %(default)s)")
    add(
        "--min-rate",
        type=float,
        default=2000,
        help="a scaling row gets 60 s + N / this (tasks/s) before it is canceled and reported as not completed;"
        " rows after it are skipped (default: %(default)s)",
    )
    add("--deploy-repeat", type=int, default=3, help="redeploys measured after the first deploy (default: %(default)s)")
    add(
        "--quiet-wait",
        type=float,
        default=30,
        help="longest wait for an idle machine before each measurement (s, default: %(default)s)",
    )
    add(
        "--quiet-total",
        type=float,
        default=240,
        help="longest total of those waits over the run (s, default: %(default)s)",
    )
    add(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="'idle' means fewer than this many cores busy (default: %(default)s)",
    )
    add(
        "--data-base",
        help="parent directory of the server's data dir (default: the temp dir); e.g. /dev/shm to take fsync cost out",
    )
    add("--seed", type=int, default=1, help="seed of the random pauses (default: %(default)s)")
    add("--json-out", help="also write all results as JSON here")
    add("--markdown-out", help="also write the markdown section here")
    add("--keep-temp", action="store_true", help="keep the temp dir (logs, data dir) at the end")
    args = parser.parse_args()
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s) in --only: {', '.join(sorted(unknown))}")
    args.scaling_sizes = [int(size) for size in args.scaling_sizes.split(",") if size.strip()]
    if args.skip_1m:
        args.scaling_sizes = [size for size in args.scaling_sizes if size < 1_000_000]
    return args


def main() -> None:
    args = parse_args()
    bench = Bench(args)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        results = bench.run()
    except KeyboardInterrupt:
        # Report what was measured so far.
        log("interrupted")
        results = bench.results
        results["interrupted"] = True
    finally:
        bench.harness.cleanup()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    text = report.markdown(results, args)
    if args.markdown_out:
        Path(args.markdown_out).write_text(text)
    print(text, end="")
    if results.get("errors") or results.get("interrupted"):
        sys.exit(1)


if __name__ == "__main__":
    main()
