"""The benchmark's tasks, the same for both runners.

`bench/run.py` writes this file, plus a `Runner` object, as the `app.py` of the project our
runner serves; `bench/sdk_driver.py` imports it for the official SDK's runner. It uses only
`Task` and `ExecutionContext`, which both provide, so the identifiers (class name, v0.0) and
the inputs are the same on both sides.

- `Noop` does nothing but count itself: when `TILEBOX_BENCH_EXECUTIONS` names a file, every
  execution appends one byte to it (one write(2) on a descriptor opened at import, about a
  microsecond), so the harness can check that every task ran exactly once.
- `Stamp` writes `<i> <time.time_ns()>` to `TILEBOX_BENCH_STAMPS` as its first statement: the
  task-body end of the client-side dispatch latency.
- `Spin` is the CPU-bound task: a pure-Python loop.
"""

import os
import time

from tilebox.workflows import ExecutionContext, Task

_EXECUTIONS_PATH = os.environ.get("TILEBOX_BENCH_EXECUTIONS")
_EXECUTIONS = os.open(_EXECUTIONS_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if _EXECUTIONS_PATH else None


class Noop(Task):
    def execute(self, context: ExecutionContext) -> None:
        if _EXECUTIONS is not None:
            os.write(_EXECUTIONS, b".")


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


class Spin(Task):
    iterations: int

    def execute(self, context: ExecutionContext) -> None:
        total = 0
        for value in range(self.iterations):
            total += value


class SpinFanOut(Task):
    n: int
    iterations: int

    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtasks([Spin(self.iterations) for _ in range(self.n)])


TASKS = [Noop, FanOut, Stamp, Spin, SpinFanOut]
