"""Processes and readings for `bench/run.py`: the server, the runners and the CLI it starts,
the quiet-machine wait, and what it reads from /proc (CPU time, RSS, load).

Layout:
- helpers: `log`, time parsing, percentiles, number formatting;
- /proc readings: process groups, CPU time, `CpuWindow`, `RssSampler`, fsync probe;
- `Harness`: the temp dir, the private copy of the binary, the SDK venv, the server, our runner
  and the SDK runner (each in its own process group, stopped at the end), and the CLI.
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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DEFAULT_BINARY = REPO / "target" / "release" / "tilebox"
SDK_VERSION = "0.66.0"
SDK_PYTHON_VERSION = "3.13"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The server's database in its data dir (`server::store::sqlite::DATABASE_FILE`).
DATABASE_FILE = "tilebox.sqlite3"
FINISHED = ("completed", "failed", "canceled")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an API timestamp like 2026-11-22T08:46:23.03Z."""
    if not text:
        return None
    text = text.rstrip("Z")
    main, _, fraction = text.partition(".")
    seconds = dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
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


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


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


def rss_of(pid: int) -> dict:
    """VmRSS and VmHWM of a process, and VmRSS summed over its process group."""
    pids = group_pids(pid)
    return {
        "vmrss_kib": status_kib(pid, "VmRSS"),
        "vmhwm_kib": status_kib(pid, "VmHWM"),
        "group_vmrss_kib": sum(status_kib(member, "VmRSS") or 0 for member in pids),
        "group_processes": len(pids),
    }


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current VmRSS (`5` to /proc/PID/clear_refs, Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


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


class RssSampler:
    """Peak memory of process groups over a window. Per group: VmHWM of the leader, reset at
    the start where the kernel allows it, and the largest VmRSS summed over the group's
    processes (children included), sampled every `interval` s. The peak is the larger."""

    def __init__(self, groups: dict[str, int], interval: float = 0.25):
        self.groups = groups
        self.interval = interval
        self.reset = {name: reset_peak_rss(pid) for name, pid in groups.items()}
        self.sampled = dict.fromkeys(groups, 0)
        self.members = {name: [pid] for name, pid in groups.items()}
        self.most_processes = dict.fromkeys(groups, 1)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        sample_count = 0
        while True:
            for name, pid in self.groups.items():
                if sample_count % 8 == 0:  # scanning /proc for the group costs more than reading it
                    self.members[name] = group_pids(pid) or [pid]
                    self.most_processes[name] = max(self.most_processes[name], len(self.members[name]))
                total = sum(status_kib(member, "VmRSS") or 0 for member in self.members[name])
                self.sampled[name] = max(self.sampled[name], total)
            sample_count += 1
            if self.done.wait(self.interval):
                return

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        result = {}
        for name, pid in self.groups.items():
            hwm = status_kib(pid, "VmHWM") if self.reset[name] else None
            result[name] = {
                "peak_kib": max(hwm or 0, self.sampled[name]),
                "vmhwm_kib": hwm,
                "sampled_max_kib": self.sampled[name],
                "processes": self.most_processes[name],
            }
        return result


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = head = None
    dirty = False
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    try:
        git = ["git", "-C", str(REPO)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(
            subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
            ).stdout.strip()
        )
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "kernel": platform.release(),
        "git_head": head,
        "git_dirty": dirty,
        "load_average": os.getloadavg(),
    }


# --- the harness ------------------------------------------------------------------------------


class Harness:
    """Everything the measurements start or call. Every process runs in its own process group
    (so helpers they fork are stopped with them) and everything lives in one temp dir."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="tilebox-bench-"))
        self.processes: list[subprocess.Popen] = []
        self.extra_dirs: list[Path] = []
        self.binary: Path | None = None
        self.url = ""
        self.server: subprocess.Popen | None = None
        self.data_dir: Path | None = None
        self.project: Path | None = None
        self.sdk_python: Path | None = None
        self.rng = random.Random(args.seed)
        self.conditions: list[dict] = []
        self.quiet_waited_s = 0.0

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
            log(f"kept {self.tmp}" + "".join(f" and {d}" for d in self.extra_dirs))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for directory in self.extra_dirs:
                shutil.rmtree(directory, ignore_errors=True)

    def log_tail(self, log_name: str, chars: int = 4000) -> str:
        try:
            return (self.tmp / f"{log_name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # the CLI

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

    def listed_job(self, job_id: str, name: str) -> dict:
        """The job as `job list` shows it: state and execution statistics without the task
        tree, which for a big fan-out is a large answer. Names must not be contained in other
        jobs' names (the filter is `contains`)."""
        for job in self.cli_json("job", "list", "--name", name, "--limit", "10")["jobs"]:
            if job["id"] == job_id:
                return job
        raise RuntimeError(f"job {job_id} ({name}) is not listed")

    # the quiet-machine wait

    def wait_quiet(self, label: str) -> dict:
        """Waits (at most --quiet-wait s per measurement, --quiet-total s over the run) until
        the machine is idle for 2 s: other people's builds share it. Logs the load average and
        returns the conditions, which the report lists per measurement."""
        budget = max(0.0, min(self.args.quiet_wait, self.args.quiet_total - self.quiet_waited_s))
        started = time.monotonic()
        quiet_samples = 0
        while True:
            before = machine_busy_seconds()
            time.sleep(1.0)
            busy = machine_busy_seconds() - before
            quiet_samples = quiet_samples + 1 if busy < self.args.quiet_cores else 0
            waited = time.monotonic() - started
            if quiet_samples >= 2 or waited >= budget:
                break
        self.quiet_waited_s += waited
        quiet = quiet_samples >= 2
        conditions = {
            "label": label,
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
            "busy_cores": busy,
            "waited_s": waited,
            "quiet": quiet,
        }
        self.conditions.append(conditions)
        log(
            f"{label}: load average {load_average()} on {os.cpu_count()} CPUs, {busy:.2f} cores busy"
            + ("" if quiet else f" (not quiet after {waited:.0f} s; measuring anyway)")
        )
        return conditions

    # setup

    def prepare_binary(self) -> None:
        binary = Path(self.args.binary).resolve()
        if not self.args.no_build and binary == DEFAULT_BINARY:
            log("cargo build --release --bin tilebox")
            subprocess.run(["cargo", "build", "--release", "--bin", "tilebox"], cwd=REPO, check=True)
        if not binary.is_file():
            raise SystemExit(f"{binary} does not exist (build it, or pass --binary)")
        # A private copy: other people may rebuild target/ while this runs.
        self.binary = self.tmp / "tilebox"
        shutil.copy2(binary, self.binary)

    def prepare_sdk_venv(self) -> None:
        existing = REPO / "target" / "tmp" / f"interop-venv-{SDK_VERSION}"
        if (existing / ".tilebox-interop-ready").exists():
            self.sdk_python = existing / "bin" / "python"
            return
        venv = REPO / "target" / f"bench-sdk-venv-{SDK_VERSION}"
        self.sdk_python = venv / "bin" / "python"
        ready = venv / ".bench-ready"
        if ready.exists():
            return
        log(f"creating {venv} with uv (tilebox-workflows=={SDK_VERSION})")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["uv", "venv", "--quiet", "--python", SDK_PYTHON_VERSION, str(venv)], check=True)
        subprocess.run(
            ["uv", "pip", "install", "--quiet", "--python", str(self.sdk_python), f"tilebox-workflows=={SDK_VERSION}"],
            check=True,
        )
        ready.write_text(SDK_VERSION)

    def start_server(self) -> None:
        if self.args.data_base:
            data = Path(tempfile.mkdtemp(prefix="tilebox-bench-data-", dir=self.args.data_base))
            self.extra_dirs.append(data)
        else:
            data = self.tmp / "data"
            data.mkdir()
        self.data_dir = data
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
            raise RuntimeError(f"the server did not start: {line!r}\n{self.log_tail('server')}")
        self.url = line[0].strip().removeprefix("listening on ")
        threading.Thread(target=lambda: self.server.stdout.read(), daemon=True).start()
        log(f"server on {self.url}, data dir {data}")

    def database_bytes(self) -> int:
        """The SQLite file plus its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += (self.data_dir / (DATABASE_FILE + suffix)).stat().st_size
            except OSError:
                pass
        return total

    def write_project(self) -> None:
        """The project our runner serves in direct mode: `workload.py` plus a Runner object."""
        self.project = self.tmp / "noop-project"
        self.project.mkdir(exist_ok=True)
        source = (BENCH / "workload.py").read_text()
        (self.project / "app.py").write_text(
            source + "\n\nfrom tilebox.workflows import Runner  # noqa: E402\n\nrunner = Runner(tasks=TASKS)\n"
        )
        (self.project / "tilebox.workflow.toml").write_text(
            '[workflow]\nslug = "bench-noop"\nrunner = "app:runner"\n\n[build]\ninclude = ["app.py"]\n'
        )

    # runners

    def runner_env(self, label: str) -> dict[str, str]:
        return self.env(
            TILEBOX_BENCH_STAMPS=str(self.stamps_path(label)),
            TILEBOX_BENCH_EXECUTIONS=str(self.executions_path(label)),
        )

    def stamps_path(self, label: str) -> Path:
        return self.tmp / f"stamps-{label}"

    def executions_path(self, label: str) -> Path:
        return self.tmp / f"executions-{label}"

    def executions(self, label: str) -> int:
        """How many `Noop` tasks the runner `label` executed so far (one byte each)."""
        try:
            return self.executions_path(label).stat().st_size
        except FileNotFoundError:
            return 0

    def start_our_runner(self, slots: int, label: str) -> subprocess.Popen:
        return self.spawn(
            [
                self.binary,
                "runner",
                "start",
                "--project",
                self.project,
                "-n",
                str(slots),
                "--cache-dir",
                self.tmp / "runner-cache",
                "--quiet",
            ],
            f"runner-{label}",
            env=self.runner_env(label),
        )

    def start_sdk_runner(self, label: str) -> subprocess.Popen:
        return self.spawn(
            [self.sdk_python, BENCH / "sdk_driver.py", "runner"], f"runner-{label}", env=self.runner_env(label)
        )

    def warm_up(self, runner: subprocess.Popen, label: str, n: int = 50) -> None:
        """One fan-out job, so the measurements find the runner's interpreters loaded and its
        connection open."""
        job = self.submit(f"bench-warmup-{label}.", "FanOut", str(n))
        if not self.wait_job(job["id"], 180):
            raise RuntimeError(f"warm-up of {label} did not complete; runner log:\n{self.log_tail(f'runner-{label}')}")
        if runner.poll() is not None:
            raise RuntimeError(f"runner {label} exited with {runner.returncode}")
