"""The measurements of `bench/run.py`. Each takes the `Harness` (server, CLI, runners) and a
running, warmed-up runner where it needs one, and answers a dict that goes into the JSON
results as it is; `report.py` turns them into markdown.

Layout:
- `fanout`: one job whose root task submits N no-op subtasks, polled to the end, checked
  (completed, every task computed, every `Noop` executed exactly once), with the server's
  timestamps, CPU, peak RSS and database size; `throughput` and `scaling` are built on it;
- `latency`: submit call to the first line of the task body, on an idle runner;
- `calibrate_spin` and `cpu_bound`: a pure-Python loop of a given length, 1 slot against 2;
- `deploy`: deploy-release to the first task of the new release, on a release runner.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import textwrap
import time

from processes import (
    BENCH,
    FINISHED,
    CpuWindow,
    Harness,
    RssSampler,
    duration,
    fmt,
    log,
    parse_time,
    percentile,
)

# A running job's progress is logged this often.
PROGRESS_EVERY_S = 30.0
# Job trees up to this size are fetched with `job get` for the root task's own timing.
TREE_LIMIT = 20_000


def run_job(
    harness: Harness,
    name: str,
    task: str,
    task_input: str,
    timeout: float,
    runner: subprocess.Popen | list[subprocess.Popen],
    max_poll: float,
) -> dict:
    """Submits a job and polls `job list` (pauses doubling from 50 ms to max_poll) until it is
    finished, any of the runners (one, or a list) died or the timeout passed. A job that did
    not finish is canceled, so it does not load later measurements."""
    runners = runner if isinstance(runner, list) else [runner]
    client_start = time.time()
    job = harness.submit(name, task, task_input)
    deadline = time.monotonic() + timeout
    pause = 0.05
    samples = []
    logged = samples_logged = 0
    while True:
        time.sleep(pause)
        pause = min(max_poll, pause * 2)
        listed = harness.listed_job(job["id"], name)
        stats = listed["execution_stats"]
        samples.append(
            {
                "t": time.time() - client_start,
                "total": stats["total_tasks"],
                "computed": stats["tasks_by_state"].get("computed", 0),
            }
        )
        if samples[-1]["t"] - logged >= PROGRESS_EVERY_S:
            log_progress(name, samples[samples_logged], samples[-1], deadline)
            logged, samples_logged = samples[-1]["t"], len(samples) - 1
        if listed["state"] in FINISHED:
            break
        dead = [(index, each.returncode) for index, each in enumerate(runners) if each.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = (
                "; ".join(f"runner {index} exited with {code}" for index, code in dead)
                if dead
                else f"not finished after {timeout:.0f} s"
            )
            log(f"{name}: {why}; canceling the job")
            harness.cli("job", "cancel", job["id"], check=False)
            break
    return {"id": job["id"], "listed": listed, "samples": samples, "client_wall_s": time.time() - client_start}


def log_progress(name: str, earlier: dict, now: dict, deadline: float) -> None:
    """How far a long job is, and when it will end at its recent rate."""
    if now["total"] <= 1:
        log(f"{name}: the root task is still running after {now['t']:.0f} s")
        return
    rate = (now["computed"] - earlier["computed"]) / (now["t"] - earlier["t"]) if now["t"] > earlier["t"] else 0.0
    left = (now["total"] - now["computed"]) / rate if rate > 0 else float("inf")
    ending = (
        f"about {duration(left)} left"
        if left < deadline - time.monotonic()
        else f"would not end before the timeout in {duration(deadline - time.monotonic())}"
    )
    progress = f"{now['computed']:,} of {now['total']:,} tasks computed after {now['t']:.0f} s"
    log(f"{name}: {progress}, {rate:,.0f} tasks/s lately, {ending}")


def fanout(
    harness: Harness, runner: subprocess.Popen, label: str, name: str, n: int, timeout: float, max_poll: float = 2.0
) -> dict:
    """One `FanOut(n)` job: a root task that submits n `Noop` subtasks. Timed from the job's
    submission to its last task's stop (server timestamps, milliseconds)."""
    executions_before = harness.executions(label)
    database_before = harness.database_bytes()
    window = CpuWindow({"server": harness.server.pid, "runner": runner.pid})
    memory = RssSampler({"server": harness.server.pid, "runner": runner.pid})
    job = run_job(harness, name, "FanOut", str(n), timeout, runner, max_poll)
    cpu = window.stop()
    peaks = memory.stop()
    listed = job["listed"]
    stats = listed["execution_stats"]
    by_state = stats["tasks_by_state"]
    computed = by_state.get("computed", 0)
    executions = harness.executions(label) - executions_before
    database_after = harness.database_bytes()
    submitted = parse_time(listed["submitted_at"])
    last = parse_time(stats.get("last_task_stopped_at"))
    elapsed = (last - submitted) if (submitted and last) else None
    ok = listed["state"] == "completed" and stats["total_tasks"] == n + 1 and computed == n + 1 and executions == n
    result = {
        "n": n,
        "id": job["id"],
        "state": listed["state"],
        "ok": ok,
        "total_tasks": stats["total_tasks"],
        "computed": computed,
        "tasks_by_state": by_state,
        "executions": executions,
        "elapsed_s": elapsed,
        "tasks_per_s": stats["total_tasks"] / elapsed if ok and elapsed else None,
        "client_wall_s": job["client_wall_s"],
        "samples": job["samples"],
        "cpu": cpu,
        "server_peak_kib": peaks["server"]["peak_kib"],
        "runner_peak_kib": peaks["runner"]["peak_kib"],
        "rss": peaks,
        "database_bytes": database_after,
        "database_growth_bytes": database_after - database_before,
    }
    if n + 1 <= TREE_LIMIT and listed["state"] in FINISHED:
        root = harness.cli_json("job", "get", job["id"], timeout=300)["tasks"][0]
        started, stopped = parse_time(root.get("started_at")), parse_time(root.get("stopped_at"))
        if started and stopped:
            result["root_s"] = stopped - started
    log(
        f"{name}: {listed['state']}, {computed:,} of {n + 1:,} computed, {executions:,} executions, "
        f"{fmt(elapsed, 3)} s = {fmt(result['tasks_per_s'])} tasks/s; "
        f"CPU server {cpu['cpu_s']['server']:.2f} s, runner {cpu['cpu_s']['runner']:.2f} s, "
        f"others {cpu['other_cores']:.2f} cores"
    )
    return result


def throughput(harness: Harness, runner: subprocess.Popen, label: str) -> dict:
    """--repeat fan-out jobs; the run with the median throughput is reported, with the range."""
    runs = []
    for index in range(harness.args.repeat):
        conditions = harness.wait_quiet(f"throughput {label} ({index + 1}/{harness.args.repeat})")
        name = f"bench-throughput-{label}-{index}."
        run = fanout(harness, runner, label, name, harness.args.throughput_n, harness.args.throughput_timeout)
        conditions["other_cores_during"] = run["cpu"]["other_cores"]
        runs.append(run)
    rates = [run["tasks_per_s"] for run in runs if run["tasks_per_s"] is not None]
    result = dict(sorted(runs, key=lambda run: run["tasks_per_s"] or 0.0)[len(runs) // 2])
    result.pop("samples")
    result.update(
        runs=len(runs),
        all_ok=all(run["ok"] for run in runs),
        all_tasks_per_s=[run["tasks_per_s"] for run in runs],
        min_tasks_per_s=min(rates, default=None),
        max_tasks_per_s=max(rates, default=None),
    )
    return result


def scaling(harness: Harness, runner: subprocess.Popen, label: str, n: int) -> dict:
    """One row of the scaling table: a fan-out of n, with a timeout of 60 s + n / --min-rate."""
    conditions = harness.wait_quiet(f"scaling {n:,}")
    timeout = 60 + n / harness.args.min_rate
    result = fanout(harness, runner, label, f"bench-scaling-{n}.", n, timeout, max_poll=2.0 if n < 100_000 else 5.0)
    result["timeout_s"] = timeout
    conditions["other_cores_during"] = result["cpu"]["other_cores"]
    return result


def latency(harness: Harness, runner: subprocess.Popen, label: str) -> dict:
    """Single-task `Stamp` jobs, one at a time on an idle runner, each after a seeded random
    pause: from the start of the submit call (SDK client) to the task's first statement, and,
    from the server's timestamps, submitted_at to started_at."""
    conditions = harness.wait_quiet(f"latency {label}")
    out = harness.tmp / f"latency-{label}.json"
    name = f"bench-latency-{label}."
    samples = harness.args.latency_samples
    window = CpuWindow({"server": harness.server.pid, "runner": runner.pid})
    options = {
        "--out": out,
        "--samples": samples,
        "--name": name,
        "--min-pause": harness.args.latency_min_gap,
        "--max-pause": harness.args.latency_gap,
        "--seed": harness.args.seed,
    }
    driver = subprocess.run(
        [str(harness.sdk_python), str(BENCH / "sdk_driver.py"), "latency"]
        + [str(part) for option in options.items() for part in option],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=samples * (harness.args.latency_gap + 5) + 120,
        env=harness.env(TILEBOX_BENCH_STAMPS=str(harness.stamps_path(label))),
    )
    cpu = window.stop()
    conditions["other_cores_during"] = cpu["other_cores"]
    if driver.returncode != 0 or not out.exists():
        raise RuntimeError(f"latency driver failed: {driver.stderr.decode(errors='replace')[-4000:]}")
    rows = json.loads(out.read_text())
    server_started = server_job_starts(harness, name)
    client_ms, server_ms, submit_ms = [], [], []
    for row in rows:
        if row["started_ns"] is None:
            continue
        client_ms.append((row["started_ns"] - row["before_submit_ns"]) / 1e6)
        submit_ms.append((row["after_submit_ns"] - row["before_submit_ns"]) / 1e6)
        if row["job"] in server_started:
            server_ms.append(server_started[row["job"]] * 1000)

    def summary(values: list[float]) -> dict:
        return {q: percentile(values, level) for q, level in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}

    result = {
        "samples": len(rows),
        "started": len(client_ms),
        "client_ms": summary(client_ms),
        "server_ms": summary(server_ms),
        "submit_call_ms": summary(submit_ms),
        "client_over_100ms": sum(1 for value in client_ms if value > 100),
        "rows": rows,
        "cpu": cpu,
    }
    log(
        f"latency {label}: submit -> task body p50 {fmt(result['client_ms']['p50'], 2)} ms, "
        f"p99 {fmt(result['client_ms']['p99'], 2)} ms; "
        f"server p50 {fmt(result['server_ms']['p50'])} ms, p99 {fmt(result['server_ms']['p99'])} ms; "
        f"{result['client_over_100ms']} of {len(client_ms)} over 100 ms"
    )
    return result


def server_job_starts(harness: Harness, name: str) -> dict[str, float]:
    """started_at - submitted_at (s) of every job named `name`, from `job list` pages (the
    first task of a single-task job is its only task)."""
    starts: dict[str, float] = {}
    cursor = None
    while True:
        args = ["job", "list", "--name", name, "--limit", "1000"]
        if cursor:
            args += ["--cursor", cursor]
        page = harness.cli_json(*args)
        for job in page["jobs"]:
            started = parse_time(job["execution_stats"].get("first_task_started_at"))
            submitted = parse_time(job["submitted_at"])
            if started is not None and submitted is not None:
                starts[job["id"]] = started - submitted
        cursor = page.get("next_cursor")
        if len(page["jobs"]) < 1000 or not cursor:
            return starts


def calibrate_spin(harness: Harness) -> dict:
    """Iterations of `Spin`'s loop for about --cpu-task-ms, timed with the SDK venv's Python
    (the same CPython version as the embedded one); the fastest of three rounds."""
    probe = 2_000_000
    code = textwrap.dedent(
        f"""
        import time

        rounds = []
        for _ in range(3):
            started = time.perf_counter()
            total = 0
            for value in range({probe}):
                total += value
            rounds.append(time.perf_counter() - started)
        print(min(rounds))
        """
    )
    timed = subprocess.run([str(harness.sdk_python), "-c", code], capture_output=True, text=True, check=True)
    seconds = float(timed.stdout)
    iterations = max(1000, int(probe * harness.args.cpu_task_ms / 1000 / seconds))
    log(f"CPU-bound task: {iterations:,} iterations for about {harness.args.cpu_task_ms:g} ms")
    return {"iterations": iterations, "ns_per_iteration": seconds / probe * 1e9}


def cpu_bound(harness: Harness, runner: subprocess.Popen, label: str, iterations: int) -> dict:
    """--repeat jobs whose root submits --cpu-tasks `Spin` tasks; wall time from the job's
    submission to its last task's stop (server timestamps)."""
    runs = []
    for index in range(harness.args.repeat):
        conditions = harness.wait_quiet(f"CPU-bound {label} ({index + 1}/{harness.args.repeat})")
        name = f"bench-cpu-{label}-{index}."
        window = CpuWindow({"server": harness.server.pid, "runner": runner.pid})
        task_input = json.dumps({"n": harness.args.cpu_tasks, "iterations": iterations})
        timeout = 60 + harness.args.cpu_tasks * harness.args.cpu_task_ms / 100
        job = run_job(harness, name, "SpinFanOut", task_input, timeout, runner, max_poll=0.5)
        cpu = window.stop()
        conditions["other_cores_during"] = cpu["other_cores"]
        listed = job["listed"]
        stats = listed["execution_stats"]
        computed = stats["tasks_by_state"].get("computed", 0)
        submitted, last = parse_time(listed["submitted_at"]), parse_time(stats.get("last_task_stopped_at"))
        root = harness.cli_json("job", "get", job["id"])["tasks"][0]
        task_ms = [
            (parse_time(child["stopped_at"]) - parse_time(child["started_at"])) * 1000
            for child in root.get("children", [])
            if child.get("started_at") and child.get("stopped_at")
        ]
        wall = (last - submitted) if (submitted and last) else None
        run = {
            "state": listed["state"],
            "ok": listed["state"] == "completed" and computed == harness.args.cpu_tasks + 1,
            "computed": computed,
            "wall_s": wall,
            "mean_task_ms": statistics.mean(task_ms) if task_ms else None,
            # Server + runner CPU over the job's wall time (the polling after it adds little).
            "busy_cores": sum(cpu["cpu_s"].values()) / (wall or cpu["wall_s"]),
            "cpu": cpu,
        }
        mean_task = fmt(run["mean_task_ms"])
        log(f"{name}: {run['state']}, {computed} computed, wall {fmt(wall, 3)} s, mean task {mean_task} ms")
        runs.append(run)
    walls = [run["wall_s"] for run in runs if run["ok"] and run["wall_s"]]
    task_means = [run["mean_task_ms"] for run in runs if run["mean_task_ms"]]
    return {
        "tasks": harness.args.cpu_tasks,
        "iterations": iterations,
        "runs": runs,
        "all_ok": all(run["ok"] for run in runs),
        "wall_median_s": statistics.median(walls) if walls else None,
        "wall_min_s": min(walls, default=None),
        "wall_max_s": max(walls, default=None),
        "mean_task_ms": statistics.median(task_means) if task_means else None,
        "busy_cores_median": statistics.median([run["busy_cores"] for run in runs]),
    }


def deploy_source(version: int) -> str:
    """Release `version` of the deploy benchmark's workflow: tasks Noop, Noop2 .. Noop<version>."""
    names = ["Noop"] + [f"Noop{k}" for k in range(2, version + 1)]
    classes = "".join(
        f"\n\nclass {name}(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n"
        for name in names
    )
    imports = "from tilebox.workflows import ExecutionContext, Runner, Task\n"
    return f"{imports}{classes}\n\nrunner = Runner(tasks=[{', '.join(names)}])\n"


def deploy(harness: Harness) -> dict:
    """Deploy-to-first-task: a release runner follows a cluster and a job for the release is
    queued; `workflow publish-release`, then `workflow deploy-release --latest`; time from the
    deploy command returning to the task's started_at, split at the runner's "loaded release"
    log line. First a release while nothing is loaded, then --deploy-repeat new releases, each
    adding a task that a queued job waits for."""
    cluster = "bench-deploy"
    harness.cli("cluster", "create", "Bench Deploy", "--slug", cluster)
    workflow = harness.cli_json("workflow", "create", "Bench Deploy")
    project = harness.tmp / "deploy-project"
    project.mkdir()
    (project / "tilebox.workflow.toml").write_text(
        f'[workflow]\nslug = "{workflow["slug"]}"\nrunner = "app:runner"\n\n[build]\ninclude = ["app.py"]\n'
    )
    runner = harness.spawn(
        [harness.binary, "runner", "start", "--cluster", cluster, "--cache-dir", harness.tmp / "deploy-runner-cache"],
        "runner-deploy",
        env=harness.env(),
    )
    rounds = []
    try:
        time.sleep(2.0)
        plan = [("first release (nothing loaded yet)", 1, "Noop")] + [
            (f"new release {version} replacing the loaded one", version, f"Noop{version}")
            for version in range(2, 2 + harness.args.deploy_repeat)
        ]
        for label, version, task in plan:
            conditions = harness.wait_quiet(f"deploy: {label}")
            (project / "app.py").write_text(deploy_source(version))
            job = harness.submit(f"bench-deploy-{task}.", task, cluster=cluster)
            # A random phase against the runner's long-poll cycle (a fixed pause could line
            # every round up with the same point of the cycle).
            time.sleep(harness.rng.uniform(0.2, 1.2))
            window = CpuWindow({"server": harness.server.pid, "runner": runner.pid})
            t0 = time.time()
            harness.cli("--json", "workflow", "publish-release", cwd=project)
            t1 = time.time()
            harness.cli("--json", "workflow", "deploy-release", "--latest", "--cluster", cluster, cwd=project)
            t2 = time.time()
            started = None
            while started is None and time.time() < t2 + 120:
                started = parse_time(harness.cli_json("job", "get", job["id"])["tasks"][0].get("started_at"))
                if started is None:
                    time.sleep(0.01)
            conditions["other_cores_during"] = window.stop()["other_cores"]
            loaded = None
            for line in harness.log_tail("runner-deploy", 1_000_000).splitlines():
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
            to_started = fmt((started - t2) if started else None, 3)
            log(f"deploy {label}: publish {t1 - t0:.3f} s, deploy {t2 - t1:.3f} s, to started {to_started} s")
    finally:
        harness.stop(runner)
    return {"rounds": rounds, "runner_log_tail": harness.log_tail("runner-deploy", 3000)}
