"""What the server acknowledged survives `kill -9` (DESIGN §4), seen through the SDK.

`durability.py first`: creates a cluster, submits a job and runs it with a runner that only knows
`Root`; the root computes and submits three `Leaf` subtasks that this runner cannot run, so
`run_all` stops with the leaves queued. The test then kills the server it submitted through with
SIGKILL and restarts it on the same port and data dir (with two replicas, the runners use the other).
`durability.py second <cluster> <job>`: the cluster and job are still there, and a runner that knows
`Leaf` completes the job.
"""

import sys

from harness import EVENTS, connect, connect_runner, emit, job_summary, record
from tilebox.workflows import ExecutionContext, Task

LEAVES = 3


class Leaf(Task):
    index: int

    def execute(self, context: ExecutionContext) -> None:
        record(context, "leaf", index=self.index)


class Root(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "root")
        context.submit_subtasks([Leaf(index) for index in range(LEAVES)])


def first() -> None:
    client = connect()
    cluster = client.clusters().create("Interop durability")
    job = client.jobs().submit("interop-durability", Root(), cluster=cluster)
    connect_runner().runner(cluster, tasks=[Root]).run_all()
    emit({"cluster": cluster.slug, "job": job_summary(client.jobs().find(job)), "events": EVENTS})


def second(cluster_slug: str, job_id: str) -> None:
    client = connect()
    cluster = client.clusters().find(cluster_slug)
    before = job_summary(client.jobs().find(job_id))
    connect_runner().runner(cluster, tasks=[Leaf]).run_all()
    emit(
        {
            "cluster": cluster.slug,
            "before": before,
            "job": job_summary(client.jobs().find(job_id)),
            "events": EVENTS,
        }
    )


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["first"]:
            first()
        case ["second", cluster_slug, job_id]:
            second(cluster_slug, job_id)
        case _:
            sys.exit("usage: durability.py first | second <cluster> <job>")
