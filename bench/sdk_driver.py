"""The official SDK's side of `bench/run.py`; runs with the Python of a venv that has
`tilebox-workflows` installed, against the server in `TILEBOX_API_URL`.

    python sdk_driver.py runner     the official direct runner, forever (stopped by run.py)
    python sdk_driver.py latency --out F --samples N --name NAME [--min-pause A] [--max-pause B] [--seed S]
                                    submit N single-task `Stamp` jobs one at a time, each after
                                    a random pause of A..B s, waiting for each to start; JSON to F

The tasks are the ones of `workload.py`, which run.py also gives our runner, so both runners
serve jobs submitted the same way.

Dispatch latency, client side: `time.time_ns()` right before the submit call, to the
`time.time_ns()` that `Stamp` writes to `TILEBOX_BENCH_STAMPS` as its first statement (same
machine, same clock).
"""

import argparse
import json
import os
import random
import sys
import time

from tilebox.workflows import Client
from workload import TASKS, Stamp

START_TIMEOUT_S = 30.0


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


def latency(arguments: argparse.Namespace) -> None:
    stamps_path = os.environ["TILEBOX_BENCH_STAMPS"]
    jobs = Client(url=os.environ["TILEBOX_API_URL"]).jobs()
    rng = random.Random(arguments.seed)
    # Stamps of earlier runs against the same runner stay in the file: continue after them.
    offset = max(read_stamps(stamps_path), default=-1) + 1
    results = []
    for sample in range(arguments.samples):
        index = offset + sample
        pause = rng.uniform(arguments.min_pause, arguments.max_pause)
        time.sleep(pause)
        before = time.time_ns()
        job = jobs.submit(arguments.name, Stamp(i=index))
        after = time.time_ns()
        deadline = time.monotonic() + START_TIMEOUT_S
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
            {
                "job": str(job.id),
                "pause_s": pause,
                "before_submit_ns": before,
                "after_submit_ns": after,
                "started_ns": started,
            }
        )
        if started is None:
            print(f"sample {index}: the task did not start within {START_TIMEOUT_S:g} s", file=sys.stderr)
            break
    with open(arguments.out, "w") as handle:
        json.dump(results, handle)


def main() -> None:
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    modes.add_parser("runner")
    measure = modes.add_parser("latency")
    measure.add_argument("--out", required=True)
    measure.add_argument("--samples", type=int, required=True)
    measure.add_argument("--name", required=True, help="job name")
    measure.add_argument("--min-pause", type=float, default=0.0)
    measure.add_argument("--max-pause", type=float, default=1.0)
    measure.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    if arguments.mode == "runner":
        Client(url=os.environ["TILEBOX_API_URL"]).runner(tasks=TASKS).run_forever()
    else:
        latency(arguments)


if __name__ == "__main__":
    main()
