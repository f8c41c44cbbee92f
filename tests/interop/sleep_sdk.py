"""The parallel-sleep guide's tasks with the official SDK, for the runner interop tests.

    python sleep_sdk.py submit COUNT SECONDS   -> prints the job id
    python sleep_sdk.py run                    -> runs the official direct runner until idle
"""

import sys
import time

from tilebox.workflows import Client, ExecutionContext, Task


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
        time.sleep(self.seconds)


if __name__ == "__main__":
    client = Client()
    if sys.argv[1] == "submit":
        job = client.jobs().submit("sdk-sleep", ParallelSleepWorkflow(count=int(sys.argv[2]), seconds=float(sys.argv[3])))
        print(job.id)
    else:
        client.runner(tasks=[ParallelSleepWorkflow, SleepTask]).run_all()
