#!/usr/bin/env python3
"""The store backends side by side, in one run: SQLite, PostgreSQL with one server, and
PostgreSQL with two server replicas.

    python3 bench/backends.py [--binary PATH] [--no-build] [--backends sqlite,pg1,pg2]
                              [--throughput-n 5000] [--repeat 3] [--fanout 100000]
                              [--latency-samples 30] [--slots 2] [--json-out F]
                              [--markdown-out F] [--keep-temp]

For each backend, on a fresh state, with our runner in direct mode serving `workload.py`:
- no-op throughput: --repeat jobs whose root task submits --throughput-n no-op subtasks (the
  median is reported, with the range), timed from the job's submission to its last task's
  stop (server timestamps);
- the --fanout fan-out (100,000 by default), timed the same way;
- dispatch latency: every runner but the last is stopped (with two replicas the one left runs
  on the second replica), then --latency-samples single-task `Stamp` jobs are submitted through
  the first server, one at a time, each after a seeded random pause of 0.2-0.6 s (so the runner
  is idle in its long poll); from the server's timestamps, the job's submitted_at to its task's
  started_at. With two replicas this is the cross-replica wake-up.

Every job is checked: completed, every task computed, every `Noop` executed exactly once. A
runner that dies fails the measurement at once (no waiting for the timeout). Each backend's
database is dropped after its servers stop, so its dead rows do not load the next backend.

The runners have --slots slots in total: one runner `-n SLOTS` on the one server, or, with
two replicas, one runner `-n SLOTS/2` on each (jobs are submitted through the first). CPU
seconds per task are read from /proc for the servers, the runners and PostgreSQL (the
postmaster and every backend), so the cost of each backend shows next to its speed.

PostgreSQL is Debian's package (`TILEBOX_PG_BINDIR`, else the newest
/usr/lib/postgresql/*/bin), a cluster made with initdb in the temp dir and started on a free
loopback port with its durable defaults (fsync on, synchronous_commit on), as a production
server would run; SQLite's data dir is in the same temp dir, so both write to the same disk.
As `bench/run.py`, the harness waits for a quiet machine before each measurement and prints
the load average; everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import measure
from processes import (
    DEFAULT_BINARY,
    Harness,
    duration,
    fmt,
    group_cpu_seconds,
    load_average,
    log,
    machine,
    parse_time,
    percentile,
    process_stat,
)

BACKENDS = ("sqlite", "pg1", "pg2")


def pg_bindir() -> Path:
    if os.environ.get("TILEBOX_PG_BINDIR"):
        return Path(os.environ["TILEBOX_PG_BINDIR"])
    found = sorted(
        (int(p.parent.name), p) for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()
    )
    if not found:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql (or set TILEBOX_PG_BINDIR)")
    return found[-1][1]


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process and its live children, plus what its reaped children
    used. PostgreSQL's backends leave the postmaster's process group (each calls setsid), so
    a process group does not find them; their parent does."""
    total = group_cpu_seconds(root)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != root:
            fields = process_stat(int(entry))
            if fields and int(fields[1]) == root:
                total += sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres() -> dict:
    """Popen arguments that run a program as the `postgres` user when we are root."""
    if os.getuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class Postgres:
    """A PostgreSQL cluster of the run's own, in the temp dir, with production durability."""

    def __init__(self, harness: Harness):
        self.harness = harness
        self.bindir = pg_bindir()
        # Its own temp dir: the postgres user cannot enter the harness's (mode 0700, root's).
        self.directory = Path(tempfile.mkdtemp(prefix="tilebox-bench-pg-"))
        harness.extra_dirs.append(self.directory)
        user = as_postgres()
        if user:
            os.chown(self.directory, user["user"], user["group"])
        subprocess.run(
            [self.bindir / "initdb", "-D", self.directory / "data", "-U", "tilebox", "--auth=trust", "-E", "UTF8"]
            + ["--no-locale"],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=self.directory,
            **user,
        )
        self.port = free_port()
        self.log = self.directory / "log"
        self.process = harness.spawn(
            [self.bindir / "postgres", "-D", self.directory / "data", "-p", str(self.port), "-k", self.directory]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=512MB"],
            "postgres",
            **user,
        )
        deadline = time.monotonic() + 60
        # Through our own socket dir: on 127.0.0.1 another process's server on a port taken
        # meanwhile would answer for ours.
        while subprocess.run(
            [self.bindir / "pg_isready", "-q", "-h", self.directory, "-p", str(self.port)]
        ).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{harness.log_tail('postgres')}")
            time.sleep(0.1)
        self.databases = 0
        log(f"PostgreSQL {self.version()} on port {self.port}")

    def version(self) -> str:
        out = subprocess.run([self.bindir / "postgres", "--version"], capture_output=True, text=True).stdout
        return out.split()[-1].rstrip(")") if out else "?"

    def fresh_database(self) -> str:
        self.databases += 1
        name = f"bench_{self.databases}"
        subprocess.run(
            [self.bindir / "psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tilebox"]
            + ["-d", "postgres", "-c", f"CREATE DATABASE {name}"],
            check=True,
        )
        return f"postgres://tilebox@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        """Drops a backend's database (after its servers stopped): its dead rows and WAL must
        not load the next backend's measurements."""
        name = url.rsplit("/", 1)[1]
        subprocess.run(
            [self.bindir / "psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tilebox"]
            + ["-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
            check=True,
        )
        subprocess.run(
            [self.bindir / "psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tilebox"]
            + ["-d", "postgres", "-c", "CHECKPOINT"],
            check=True,
        )

    def database_bytes(self, url: str) -> int:
        name = url.rsplit("/", 1)[1]
        out = subprocess.run(
            [self.bindir / "psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tilebox"]
            + ["-d", "postgres", "-c", f"SELECT pg_database_size('{name}')"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return int(out) if out.isdigit() else 0


class Backend:
    """The servers and runners of one backend, started fresh and stopped after."""

    def __init__(self, harness: Harness, name: str, postgres: Postgres | None, slots: int):
        self.harness = harness
        self.name = name
        self.servers: list[subprocess.Popen] = []
        self.runners: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.database_url: str | None = None
        self.postgres = postgres
        data = harness.tmp / f"data-{name}"
        data.mkdir()
        self.data_dir = data
        replicas = 2 if name == "pg2" else 1
        args = ["--data-dir", data]
        if name != "sqlite":
            self.database_url = postgres.fresh_database()
            args += ["--database", self.database_url, "--database-writers", str(harness.args.database_writers)]
        for index in range(replicas):
            self.servers.append(self.start_server(args, f"server-{name}-{index}"))
        harness.url = self.urls[0]
        per_runner = slots // replicas
        for index, url in enumerate(self.urls):
            harness.url = url
            self.runners.append(harness.start_our_runner(per_runner, f"{name}-{index}"))
        harness.url = self.urls[0]  # submissions and reads go through the first server

    def start_server(self, args: list, log_name: str) -> subprocess.Popen:
        harness = self.harness
        server = harness.spawn(
            [harness.binary, "server", "--listen", "127.0.0.1:0", *args],
            log_name,
            stdout=subprocess.PIPE,
            env=harness.env(),
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(server.stdout.readline().decode()), daemon=True)
        reader.start()
        reader.join(60)
        if not line or not line[0].startswith("listening on "):
            raise RuntimeError(f"{log_name} did not start: {line!r}\n{harness.log_tail(log_name)}")
        threading.Thread(target=lambda: server.stdout.read(), daemon=True).start()
        self.urls.append(line[0].strip().removeprefix("listening on "))
        return server

    def groups(self) -> dict[str, list[int]]:
        groups = {"servers": [s.pid for s in self.servers], "runners": [r.pid for r in self.runners]}
        if self.postgres:
            groups["postgres"] = [self.postgres.process.pid]
        return groups

    def cpu(self) -> dict[str, float]:
        cpu = {name: sum(group_cpu_seconds(pid) for pid in pids) for name, pids in self.groups().items()}
        if self.postgres:
            cpu["postgres"] = tree_cpu_seconds(self.postgres.process.pid)
        return cpu

    def executions(self) -> int:
        return sum(self.harness.executions(f"{self.name}-{index}") for index in range(len(self.runners)))

    def database_bytes(self) -> int:
        if self.database_url:
            return self.postgres.database_bytes(self.database_url)
        return sum(
            (self.data_dir / f"tilebox.sqlite3{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if (self.data_dir / f"tilebox.sqlite3{suffix}").exists()
        )

    def stop(self) -> None:
        for process in self.runners + self.servers:
            self.harness.stop(process)
        if self.database_url:
            self.postgres.drop_database(self.database_url)

    def latency(self, samples: int, seed: int) -> dict:
        """Dispatch latency to the last runner (on the second replica with two): the others
        are stopped, then `samples` single-task `Stamp` jobs go through the first server one at
        a time, each after a seeded random pause of 0.2-0.6 s; from the server's timestamps,
        submitted_at to the task's started_at."""
        harness = self.harness
        for runner in self.runners[:-1]:
            harness.stop(runner)
        runner = self.runners[-1]
        self.runners = self.runners[-1:]
        harness.url = self.urls[0]
        rng = random.Random(seed)
        name = f"bench-latency-{self.name}."
        jobs = []
        for index in range(samples):
            time.sleep(rng.uniform(0.2, 0.6))
            job = measure.run_job(harness, name, "Stamp", str(index), 60, runner, 0.05)
            if job["listed"]["state"] != "completed":
                raise RuntimeError(
                    f"latency job {index} of {self.name} ended {job['listed']['state']}:\n"
                    f"{harness.log_tail(f'runner-{self.name}-{len(self.servers) - 1}')}"
                )
            jobs.append(job["id"])
        starts = measure.server_job_starts(harness, name)
        missing = [job for job in jobs if job not in starts]
        if missing:
            raise RuntimeError(f"{len(missing)} latency jobs of {self.name} have no started_at: {missing[:5]}")
        values = [starts[job] * 1000 for job in jobs]
        result = {
            "samples": len(values),
            "runner_on_replica": len(self.servers) - 1,
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": percentile(values, 100),
            "all_ms": values,
        }
        log(
            f"{self.name} dispatch latency (submit through server 0, runner on server {len(self.servers) - 1}): "
            f"p50 {fmt(result['p50_ms'], 1)} ms, p99 {fmt(result['p99_ms'], 1)} ms, max {fmt(result['max_ms'], 1)} ms "
            f"over {len(values)} jobs"
        )
        return result

    def fanout(self, label: str, n: int, timeout: float) -> dict:
        """One FanOut(n) job through the first server, checked and timed as `measure.fanout`."""
        harness = self.harness
        executions_before = self.executions()
        cpu_before = self.cpu()
        job = measure.run_job(harness, label, "FanOut", str(n), timeout, self.runners, 5.0 if n >= 100_000 else 2.0)
        cpu = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in self.cpu().items()}
        listed = job["listed"]
        stats = listed["execution_stats"]
        computed = stats["tasks_by_state"].get("computed", 0)
        executions = self.executions() - executions_before
        submitted, last = parse_time(listed["submitted_at"]), parse_time(stats.get("last_task_stopped_at"))
        elapsed = (last - submitted) if (submitted and last) else None
        ok = listed["state"] == "completed" and stats["total_tasks"] == n + 1 and computed == n + 1 and executions == n
        total = stats["total_tasks"] or 1
        result = {
            "n": n,
            "ok": ok,
            "state": listed["state"],
            "computed": computed,
            "executions": executions,
            "elapsed_s": elapsed,
            "tasks_per_s": total / elapsed if ok and elapsed else None,
            "cpu_s": cpu,
            "cpu_us_per_task": {name: seconds * 1e6 / total for name, seconds in cpu.items()},
            "database_bytes": self.database_bytes(),
        }
        log(
            f"{self.name} {label}: {listed['state']}, {computed:,} of {n + 1:,} computed, {executions:,} executions, "
            f"{fmt(elapsed, 3)} s = {fmt(result['tasks_per_s'])} tasks/s; CPU "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in cpu.items())
        )
        return result


def run(args: argparse.Namespace, harness: Harness) -> dict:
    results: dict = {
        "machine": machine(),
        "command": "python3 bench/backends.py " + " ".join(sys.argv[1:]),
        "settings": dict(vars(args)),
        "backends": {},
        "conditions": harness.conditions,
    }
    log(f"load average {load_average()} (1/5/15 min) on {results['machine']['nproc']} CPUs")
    harness.prepare_binary()
    harness.write_project()
    postgres = Postgres(harness) if {"pg1", "pg2"} & set(args.backends) else None
    if postgres:
        results["postgres"] = postgres.version()
    started = time.monotonic()
    for name in args.backends:
        log(f"backend {name} (elapsed {duration(time.monotonic() - started)})")
        backend = Backend(harness, name, postgres, args.slots)
        suite = results["backends"][name] = {"replicas": len(backend.servers), "runners": len(backend.runners)}
        try:
            warm = backend.fanout(f"bench-warmup-{name}.", 200, 180)
            if not warm["ok"]:
                raise RuntimeError(f"the warm-up of {name} did not complete: {warm}")
            runs = []
            for index in range(args.repeat):
                harness.wait_quiet(f"{name} throughput ({index + 1}/{args.repeat})")
                runs.append(backend.fanout(f"bench-throughput-{name}-{index}.", args.throughput_n, args.timeout))
            rates = sorted(run["tasks_per_s"] or 0.0 for run in runs)
            suite["throughput"] = {
                "median": sorted(runs, key=lambda run: run["tasks_per_s"] or 0.0)[len(runs) // 2],
                "all_tasks_per_s": [run["tasks_per_s"] for run in runs],
                "min": rates[0],
                "max": rates[-1],
                "all_ok": all(run["ok"] for run in runs),
            }
            if args.fanout:
                harness.wait_quiet(f"{name} fan-out of {args.fanout:,}")
                suite["fanout"] = backend.fanout(
                    f"bench-fanout-{name}.", args.fanout, 60 + args.fanout / args.min_rate
                )
            if args.latency_samples:
                harness.wait_quiet(f"{name} dispatch latency")
                suite["latency"] = backend.latency(args.latency_samples, args.seed)
        except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as error:
            log(f"backend {name} failed: {error}")
            suite["error"] = str(error)[-2000:]
        finally:
            backend.stop()
    results["duration_s"] = time.monotonic() - started
    return results


def latency_cell(latency: dict | None) -> str:
    if not latency:
        return "-"
    where = " (runner on replica 2)" if latency["runner_on_replica"] else ""
    return f"{fmt(latency['p50_ms'], 1)} / {fmt(latency['p99_ms'], 1)}{where} (n = {latency['samples']})"


def markdown(results: dict) -> str:
    lines = [
        f"Command: `{results['command']}` at `{results['machine']['git_head']}`"
        f"{' (dirty)' if results['machine']['git_dirty'] else ''}, {results['machine']['date']}; "
        f"{results['machine'].get('cpu', '?')}, "
        f"{results['machine']['nproc']} CPUs; PostgreSQL {results.get('postgres', '-')} (fsync on, "
        f"synchronous_commit on); load average {results['machine']['load_average'][0]:.2f} at the start.",
        "",
        "| backend | servers | no-op throughput (tasks/s), median [range] | fan-out (tasks/s) "
        "| CPU µs/task server / runner / PostgreSQL (fan-out) | database after "
        "| dispatch latency p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, suite in results["backends"].items():
        if "error" in suite:
            lines.append(f"| {name} | {suite['replicas']} | failed: {suite['error'][:200]} | | | | |")
            continue
        t = suite["throughput"]
        f = suite.get("fanout") or {}
        per = f.get("cpu_us_per_task", {})
        ok = "" if t["all_ok"] and f.get("ok", True) else " (not every job completed)"
        lines.append(
            f"| {name} | {suite['replicas']} | {fmt(t['median']['tasks_per_s'], 0)} "
            f"[{fmt(t['min'], 0)}–{fmt(t['max'], 0)}]{ok} | {fmt(f.get('tasks_per_s'), 0)} (n = {f.get('n', 0):,}) "
            f"| {fmt(per.get('servers'), 0)} / {fmt(per.get('runners'), 0)} / {fmt(per.get('postgres'), 0) if 'postgres' in per else '-'} "
            f"| {f.get('database_bytes', 0) / 2**20:.0f} MiB "
            f"| {latency_cell(suite.get('latency'))} |"
        )
    lines.append("")
    lines.append(
        "Dispatch latency: single-task jobs submitted through the first server one at a time after "
        "a random 0.2-0.6 s pause, server submitted_at to the task's started_at, with only the last "
        "runner left (with two replicas, on the second: the cross-replica wake-up)."
    )
    lines.append("")
    lines.append("Conditions per measurement (load average, busy cores before it):")
    for c in results["conditions"]:
        lines.append(
            f"- {c['label']}: load {c['load_average'][0]:.2f}, {c['busy_cores']:.2f} cores busy"
            + ("" if c["quiet"] else " (not quiet)")
        )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--binary", default=str(DEFAULT_BINARY))
    add("--no-build", action="store_true")
    add("--backends", default=",".join(BACKENDS), help="comma-separated subset of: %(default)s")
    add("--throughput-n", type=int, default=5000)
    add("--repeat", type=int, default=3)
    add("--fanout", type=int, default=100_000, help="0 leaves the big fan-out out")
    add("--slots", type=int, default=2, help="runner slots in total (default: %(default)s)")
    add("--database-writers", type=int, default=2, help="the servers' --database-writers (default: %(default)s)")
    add("--timeout", type=float, default=300, help="per throughput job (s)")
    add("--latency-samples", type=int, default=30, help="dispatch latency jobs per backend; 0 leaves it out")
    add("--min-rate", type=float, default=500, help="the fan-out gets 60 s + N / this before it is canceled")
    add("--quiet-wait", type=float, default=30)
    add("--quiet-total", type=float, default=240)
    add("--quiet-cores", type=float, default=0.3)
    add("--data-base", default=None)
    add("--seed", type=int, default=1)
    add("--json-out")
    add("--markdown-out")
    add("--keep-temp", action="store_true")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if args.slots < 2 and "pg2" in args.backends:
        parser.error("pg2 needs --slots of at least 2 (a runner per replica)")
    return args


def main() -> None:
    args = parse_args()
    harness = Harness(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        results = run(args, harness)
    except KeyboardInterrupt:
        log("interrupted")
        results = {"interrupted": True}
        sys.exit(1)
    finally:
        harness.cleanup()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    text = markdown(results)
    if args.markdown_out:
        Path(args.markdown_out).write_text(text)
    print(text, end="")
    if any("error" in suite for suite in results["backends"].values()):
        sys.exit(1)


if __name__ == "__main__":
    shutil.which("uv") or log("note: uv is not on PATH; the runner syncs the project with it")
    main()
