"""Scoped API keys: the official SDK with a runner key runs tasks, with a read-only key queries.

Arguments: the secrets of an admin key, a runner key of the default cluster, and a read-only
key. The admin submits a job (a parent that submits a subtask); a runner built with the runner
key runs it; the read-only key finds the job, lists jobs and reads the job's logs. Submitting
with the runner key and with the read-only key must be refused: their messages are reported.
"""

import os
import sys
from datetime import datetime, timedelta, timezone

from harness import EVENTS, emit, job_summary, record
from tilebox.workflows import Client, ExecutionContext, Task


class Child(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "child")


class Parent(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "parent")
        context.submit_subtask(Child())


def refusal(client: Client) -> str:
    try:
        client.jobs().submit("interop-keys-refused", Parent())
    except Exception as error:  # noqa: BLE001 - the message is what the test checks
        return f"{type(error).__name__}: {error}"
    return "accepted"


def main() -> None:
    admin_key, runner_key, reader_key = sys.argv[1:4]
    url = os.environ["TILEBOX_API_URL"]
    admin = Client(url=url, token=admin_key)
    runner_client = Client(url=url, token=runner_key)
    reader = Client(url=url, token=reader_key)

    job = admin.jobs().submit("interop-keys", Parent())
    runner_client.runner(tasks=[Parent, Child]).run_all()

    now = datetime.now(timezone.utc)
    listed = reader.jobs().query((now - timedelta(hours=1), now + timedelta(hours=1)))
    emit(
        {
            "job": job_summary(reader.jobs().find(job)),
            "listed": sorted(str(listed_job.id) for listed_job in listed),
            "runner_submit": refusal(runner_client),
            "reader_submit": refusal(reader),
            "events": EVENTS,
        }
    )


if __name__ == "__main__":
    main()
