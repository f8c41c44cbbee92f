"""Fan-out with dependencies, run by the official direct runner.

A root task submits 25 leaves, then 25 dependants where dependant i depends on leaf i (50 task
groups in one `TaskSubmissions`). Odd leaves fail on their first attempt and are submitted with
`max_retries=1`, so the server re-queues them: a server that hands out dependants without waiting
for their dependency runs some dependant before its leaf succeeded, which the test sees in the
recorded events. Leaf inputs carry a non-ASCII label to check that inputs arrive byte for byte.
"""

from harness import EVENTS, connect, connect_runner, emit, fail, job_summary, record
from tilebox.workflows import ExecutionContext, Task

LEAVES = 25

_attempts: dict[int, int] = {}


def leaf_label(index: int) -> str:
    return f"blatt-\u00fc-{index}"


class Leaf(Task):
    index: int
    label: str

    def execute(self, context: ExecutionContext) -> None:
        event = record(context, "leaf", index=self.index, label=self.label)
        _attempts[self.index] = _attempts.get(self.index, 0) + 1
        if self.index % 2 == 1 and _attempts[self.index] == 1:
            fail(event, f"leaf {self.index} fails on its first attempt")


class Dependant(Task):
    index: int

    def execute(self, context: ExecutionContext) -> None:
        record(context, "dependant", index=self.index)


class FanOut(Task):
    leaves: int

    def execute(self, context: ExecutionContext) -> None:
        record(context, "root")
        leaves = [
            context.submit_subtask(Leaf(index, leaf_label(index)), max_retries=1 if index % 2 == 1 else 0)
            for index in range(self.leaves)
        ]
        for index, leaf in enumerate(leaves):
            context.submit_subtask(Dependant(index), depends_on=leaf)


def main() -> None:
    client = connect()
    cluster = client.clusters().create("Interop fanout", description="fan-out scenario")
    job = client.jobs().submit("interop-fanout", FanOut(LEAVES), cluster=cluster)
    submitted = job_summary(job)

    runner = connect_runner().runner(cluster, tasks=[FanOut, Leaf, Dependant])
    runner.run_all()

    emit(
        {
            "cluster": {"slug": cluster.slug, "display_name": cluster.display_name},
            "submitted": submitted,
            "job": job_summary(client.jobs().find(job)),
            "expected_labels": {str(index): leaf_label(index) for index in range(LEAVES)},
            "events": EVENTS,
        }
    )


if __name__ == "__main__":
    main()
