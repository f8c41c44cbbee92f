"""QueryJobs filters by id interval and by automation, through the official SDK's `jobs().query`.

Submits four jobs (nobody runs them) and queries them by id: a tuple of two ids (the SDK's
`IDInterval.parse`: start inclusive, end inclusive), an `IDInterval` with the start exclusive
and the end exclusive, and an open-ended one. Then by automation: this server has no
automations, so no job was submitted by one and the answer is empty, also combined with
filters that alone would match.
"""

from uuid import uuid4

from harness import connect, emit
from tilebox.datasets.query.id_interval import IDInterval
from tilebox.workflows import ExecutionContext, Task


class Idle(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass


def ids(jobs: list) -> list[str]:
    return [str(job.id) for job in jobs]


def main() -> None:
    jobs = connect().jobs()
    submitted = [jobs.submit(f"interop-ids-{index}", Idle()).id for index in range(4)]
    first, second, third, _fourth = submitted
    emit(
        {
            "submitted": [str(job) for job in submitted],
            "tuple": ids(jobs.query((first, third))),
            "tuple_of_strings": ids(jobs.query((str(second), str(third)))),
            "exclusive": ids(
                jobs.query(IDInterval(start_id=first, end_id=third, start_exclusive=True, end_inclusive=False))
            ),
            "automation": ids(jobs.query(automation_ids=uuid4())),
            "automation_and_ids": ids(jobs.query((first, third), automation_ids=[uuid4(), uuid4()])),
        }
    )


if __name__ == "__main__":
    main()
