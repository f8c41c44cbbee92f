"""Optional tasks, the two cases pinned by the SDK's own recorded tests (reference §5.5).

Job "branch": the root submits `OptionalSubtasks` with optional=True, plus `Succeeding("outer")`.
  Inside, a (non-optional) `Failing` task has the dependant `Succeeding("inner")`.
  Expected: COMPLETED with COMPUTED=3, FAILED_OPTIONAL=1, SKIPPED=1; "inner" never runs.
Job "subtask": the root submits `Failing` with optional=True, plus `Succeeding("after")` that
  depends on it. Expected: COMPLETED with COMPUTED=2, FAILED_OPTIONAL=1; "after" still runs.
"""

from harness import EVENTS, connect, connect_runner, emit, fail, job_summary, record
from tilebox.workflows import ExecutionContext, Task


class Failing(Task):
    def execute(self, context: ExecutionContext) -> None:
        fail(record(context, "failing"), "this task always fails")


class Succeeding(Task):
    name: str

    def execute(self, context: ExecutionContext) -> None:
        record(context, "succeeding", name=self.name)


class OptionalSubtasks(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "optional-subtasks")
        failing = context.submit_subtask(Failing())
        context.submit_subtask(Succeeding("inner"), depends_on=failing)


class OptionalBranchRoot(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "branch-root")
        context.submit_subtask(OptionalSubtasks(), optional=True)
        context.submit_subtask(Succeeding("outer"))


class OptionalSubtaskRoot(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "subtask-root")
        failing = context.submit_subtask(Failing(), optional=True)
        context.submit_subtask(Succeeding("after"), depends_on=failing)


def main() -> None:
    client = connect()
    cluster = client.clusters().create("Interop optional")
    runner = connect_runner().runner(
        cluster, tasks=[Failing, Succeeding, OptionalSubtasks, OptionalBranchRoot, OptionalSubtaskRoot]
    )

    branch = client.jobs().submit("interop-optional-branch", OptionalBranchRoot(), cluster=cluster)
    runner.run_all()
    subtask = client.jobs().submit("interop-optional-subtask", OptionalSubtaskRoot(), cluster=cluster)
    runner.run_all()

    emit(
        {
            "branch": job_summary(client.jobs().find(branch)),
            "subtask": job_summary(client.jobs().find(subtask)),
            "events": EVENTS,
        }
    )


if __name__ == "__main__":
    main()
