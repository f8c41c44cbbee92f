"""Job retry, as pinned by the SDK's own recorded tests (reference §5.5).

Job "flaky": a root task that fails on its first two attempts and succeeds on the third.
  run_all -> FAILED; retry -> RUNNING right away (not SUBMITTED); run_all -> FAILED again;
  retry; run_all -> COMPLETED.
Job "halted": a root task submits `Broken` (fails once) and two `Fine` tasks. After the failure the
  job is FAILED and nothing else of it may run; retry re-queues only the failed task, and the next
  run_all completes all four tasks.
"""

from typing import Any

from harness import EVENTS, connect, connect_runner, emit, fail, job_summary, record
from tilebox.workflows import Client, ExecutionContext, Job, Task

FLAKY_FAILURES = 2

_attempts: dict[str, int] = {}


def attempt(key: str) -> int:
    _attempts[key] = _attempts.get(key, 0) + 1
    return _attempts[key]


class Flaky(Task):
    def execute(self, context: ExecutionContext) -> None:
        event = record(context, "flaky")
        if attempt("flaky") <= FLAKY_FAILURES:
            fail(event, "flaky task fails")


class Broken(Task):
    def execute(self, context: ExecutionContext) -> None:
        event = record(context, "broken")
        if attempt("broken") == 1:
            fail(event, "broken task fails on its first attempt")


class Fine(Task):
    index: int

    def execute(self, context: ExecutionContext) -> None:
        record(context, "fine", index=self.index)


class Halting(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "halting")
        context.submit_subtask(Broken())
        context.submit_subtask(Fine(1))
        context.submit_subtask(Fine(2))


def snapshot(client: Client, job: Job, step: str, **fields: Any) -> dict[str, Any]:
    return {"step": step, "events_so_far": len(EVENTS), "job": job_summary(client.jobs().find(job)), **fields}


def main() -> None:
    client = connect()
    cluster = client.clusters().create("Interop retry")
    runner = connect_runner().runner(cluster, tasks=[Flaky, Broken, Fine, Halting])

    flaky = client.jobs().submit("interop-retry-flaky", Flaky(), cluster=cluster)
    flaky_steps = []
    runner.run_all()
    flaky_steps.append(snapshot(client, flaky, "first run"))
    rescheduled = client.jobs().retry(flaky)
    flaky_steps.append(snapshot(client, flaky, "first retry", rescheduled=rescheduled))
    runner.run_all()
    flaky_steps.append(snapshot(client, flaky, "second run"))
    rescheduled = client.jobs().retry(flaky.id)
    flaky_steps.append(snapshot(client, flaky, "second retry", rescheduled=rescheduled))
    runner.run_all()
    flaky_steps.append(snapshot(client, flaky, "third run"))

    halting = client.jobs().submit("interop-retry-halting", Halting(), cluster=cluster)
    halting_steps = []
    runner.run_all()
    halting_steps.append(snapshot(client, halting, "first run"))
    rescheduled = client.jobs().retry(halting)
    halting_steps.append(snapshot(client, halting, "retry", rescheduled=rescheduled))
    runner.run_all()
    halting_steps.append(snapshot(client, halting, "second run"))

    emit(
        {
            "flaky": {"id": str(flaky.id), "steps": flaky_steps},
            "halting": {"id": str(halting.id), "steps": halting_steps},
            "events": EVENTS,
        }
    )


if __name__ == "__main__":
    main()
