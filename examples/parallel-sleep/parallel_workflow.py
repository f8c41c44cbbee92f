# /// script
# dependencies = ["cyclopts", "tilebox"]
# ///
"""The parallel-sleep guide's workflow: a root task fans out sleep subtasks.

As a direct runner with the official SDK (against `tilebox server`):

    uv run parallel_workflow.py --submit --count 20 --seconds 0.5
    tilebox parallel -n 5 -- uv run parallel_workflow.py

In-process, with no server:

    tilebox task run --project examples/parallel-sleep ParallelSleepWorkflow \
        --input '{"count": 20, "seconds": 0.5}' --recursive
"""

import os
import time

from cyclopts import App
from tilebox.workflows import Client, ExecutionContext, Runner, Task

app = App()


class ParallelSleepWorkflow(Task):
    count: int
    seconds: float

    def execute(self, context: ExecutionContext) -> None:
        context.logger.info("Submitting sleep subtasks", count=self.count, seconds=self.seconds)
        context.submit_subtasks([SleepTask(index=index, seconds=self.seconds) for index in range(self.count)])


class SleepTask(Task):
    index: int
    seconds: float

    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = f"SleepTask({self.index})"
        context.logger.info("Starting sleep task", index=self.index)
        time.sleep(self.seconds)
        context.logger.info("Finished sleep task", index=self.index)


runner = Runner(tasks=[ParallelSleepWorkflow, SleepTask])


def submit_job(count: int, seconds: float) -> None:
    client = Client()
    job = client.jobs().submit("parallel-sleep-workflow", ParallelSleepWorkflow(count=count, seconds=seconds))
    print(f"Submitted job: {job.id}")
    # The hosted API's jobs are in the Tilebox Console; a tilebox server serves its own.
    api_url = os.environ.get("TILEBOX_API_URL", "https://api.tilebox.com").rstrip("/")
    console = "https://console.tilebox.com/workflows" if api_url.endswith("api.tilebox.com") else api_url
    print(f"Open in Console: {console}/jobs/{job.id}")


def run_runner() -> None:
    client = Client()
    runner.connect_to(client).run_all()


@app.default
def main(submit: bool = False, count: int = 20, seconds: float = 5.0) -> None:
    """Run a direct runner, or submit a new job with --submit."""
    if submit:
        submit_job(count=count, seconds=seconds)
        return
    run_runner()


if __name__ == "__main__":
    app()
