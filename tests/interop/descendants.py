"""A dependency is done only when it is computed *and* all its descendants are done.

The root submits `Parent` and `After` (depends on `Parent`). `Parent` submits `Child` (which
submits `Grandchild`). `After` must run after `Grandchild`, although `Parent` is COMPUTED long
before that; a server that treats COMPUTED as done hands out `After` first.
"""

from harness import EVENTS, connect, connect_runner, emit, job_summary, record
from tilebox.workflows import ExecutionContext, Task


class Grandchild(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "grandchild")


class Child(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "child")
        context.submit_subtask(Grandchild())


class Parent(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "parent")
        context.submit_subtask(Child())


class After(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "after")


class Root(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "root")
        parent = context.submit_subtask(Parent())
        context.submit_subtask(After(), depends_on=parent)


def main() -> None:
    client = connect()
    cluster = client.clusters().create("Interop descendants")
    job = client.jobs().submit("interop-descendants", Root(), cluster=cluster)
    connect_runner().runner(cluster, tasks=[Root, Parent, Child, Grandchild, After]).run_all()
    emit({"job": job_summary(client.jobs().find(job)), "events": EVENTS})


if __name__ == "__main__":
    main()
