"""The official SDK's side of `bench/run.py`; runs with the Python of a venv that has
`tilebox-workflows` installed, against the server in `TILEBOX_API_URL`.

    python sdk_driver.py runner               official direct runner, forever (killed by run.py)
    python sdk_driver.py latency OUT N GAP    submit N single-task `Stamp` jobs one at a time,
                                              waiting for each to start, with a random pause of
                                              0..GAP s before each submission; writes JSON to OUT

The task classes match the `app.py` that run.py writes for our runner (same names, same
version v0.0), so both runners serve jobs submitted the same way.

`Stamp` appends "<i> <time.time_ns()>" to the file in `TILEBOX_BENCH_STAMPS` as the first thing
it does: the client-side measure of dispatch latency (same machine, same clock).
"""

import json
import os
import random
import sys
import time

from tilebox.workflows import Client, ExecutionContext, Task


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
            stamps.write(f"{self.i} {now}\n")


def read_stamps(path: str) -> dict[int, int]:
    stamps: dict[int, int] = {}
    try:
        with open(path) as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2:
                    stamps[int(parts[0])] = int(parts[1])
    except FileNotFoundError:
        pass
    return stamps


def latency(out: str, samples: int, gap: float) -> None:
    stamps_path = os.environ["TILEBOX_BENCH_STAMPS"]
    offset = int(os.environ.get("TILEBOX_BENCH_STAMP_OFFSET", "0"))
    jobs = Client(url=os.environ["TILEBOX_API_URL"]).jobs()
    rng = random.Random(int(os.environ.get("TILEBOX_BENCH_SEED", "1")))
    results = []
    for sample in range(samples):
        index = offset + sample
        pause = rng.uniform(float(os.environ.get("TILEBOX_BENCH_MIN_PAUSE", "0")), gap)
        time.sleep(pause)
        before = time.time_ns()
        job = jobs.submit("bench-latency", Stamp(i=index))
        after = time.time_ns()
        deadline = time.monotonic() + 30.0
        started = None
        size = -1
        while started is None and time.monotonic() < deadline:
            # Cheap polling (a stat per millisecond): the measure is the task's own timestamp,
            # so the poll interval only paces the loop and must not load the CPU.
            try:
                current = os.stat(stamps_path).st_size
            except FileNotFoundError:
                current = 0
            if current != size:
                size = current
                started = read_stamps(stamps_path).get(index)
            if started is None:
                time.sleep(0.001)
        results.append(
            {"job": str(job.id), "pause_s": pause, "before_submit_ns": before, "after_submit_ns": after, "started_ns": started}
        )
        if started is None:
            print(f"sample {index}: the task did not start within 30 s", file=sys.stderr)
            break
    with open(out, "w") as handle:
        json.dump(results, handle)


def main() -> None:
    mode = sys.argv[1]
    if mode == "runner":
        client = Client(url=os.environ["TILEBOX_API_URL"])
        client.runner(tasks=[Noop, FanOut, Stamp]).run_forever()
    elif mode == "latency":
        latency(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
