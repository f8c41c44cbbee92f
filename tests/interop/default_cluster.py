"""The default cluster: `GetCluster("")` resolves to a real cluster with a non-empty slug.

Job "implicit" is submitted with no cluster (sent as `""`), job "explicit" with the default
cluster's slug; one runner built without a cluster (`GetCluster("")` again) runs both, including a
subtask submitted without a cluster (the runner's fallback slug). Job "elsewhere" goes to another
cluster: the default runner must leave it queued, and a runner on that cluster then runs it.
"""

from harness import EVENTS, connect, connect_runner, emit, job_summary, record
from tilebox.workflows import ExecutionContext, Task


class Child(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "child")


class Parent(Task):
    name: str

    def execute(self, context: ExecutionContext) -> None:
        record(context, "parent", name=self.name)
        context.submit_subtask(Child())


def main() -> None:
    client = connect()
    default = client.clusters().find("")
    other = client.clusters().create("Interop elsewhere")

    implicit = client.jobs().submit("interop-default-implicit", Parent("implicit"))
    explicit = client.jobs().submit("interop-default-explicit", Parent("explicit"), cluster=default.slug)
    elsewhere = client.jobs().submit("interop-default-elsewhere", Parent("elsewhere"), cluster=other)

    default_runner = connect_runner().runner(tasks=[Parent, Child])
    default_runner.run_all()
    elsewhere_after_default_runner = job_summary(client.jobs().find(elsewhere))
    events_after_default_runner = len(EVENTS)

    other_runner = connect_runner().runner(other, tasks=[Parent, Child])
    other_runner.run_all()

    emit(
        {
            "default_cluster": {"slug": default.slug, "display_name": default.display_name},
            "other_cluster": {"slug": other.slug},
            "all_slugs": sorted(cluster.slug for cluster in client.clusters().all()),
            "implicit": job_summary(client.jobs().find(implicit)),
            "explicit": job_summary(client.jobs().find(explicit)),
            "elsewhere_after_default_runner": elsewhere_after_default_runner,
            "events_after_default_runner": events_after_default_runner,
            "elsewhere": job_summary(client.jobs().find(elsewhere)),
            "events": EVENTS,
        }
    )


if __name__ == "__main__":
    main()
