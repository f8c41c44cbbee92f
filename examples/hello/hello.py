"""Submit a job and run it with the official Python SDK against a local `tilebox server`.

    tilebox server &                       # or: cargo run --release -- server
    pip install tilebox-workflows
    python examples/hello/hello.py         # TILEBOX_API_URL overrides the server URL
"""

import os

from tilebox.workflows import Client, ExecutionContext, Task


class Greet(Task):
    name: str

    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = f"Greet {self.name}"


class Hello(Task):
    names: list[str]

    def execute(self, context: ExecutionContext) -> None:
        greetings = context.submit_subtasks([Greet(name) for name in self.names])
        context.submit_subtask(Greet("everyone"), depends_on=greetings)


if __name__ == "__main__":
    client = Client(url=os.environ.get("TILEBOX_API_URL", "http://127.0.0.1:8083"))
    job = client.jobs().submit("hello", Hello(["Ada", "Grace", "Linus"]))
    client.runner(tasks=[Hello, Greet]).run_all()
    job = client.jobs().find(job.id)
    print(f"job {job.id}: {job.state.name}, {job.execution_stats.total_tasks} tasks")
