"""Tasks that mark each execution, run by the official SDK's runner beside ours on one job.

    python mark_sdk.py run    -> runs the official direct runner until idle

The same task code (MARK_TASKS) is the app of the runner project the test starts for ours.
"""

import sys

from tilebox.workflows import Client

MARK_TASKS = '''
import os
import time

from tilebox.workflows import ExecutionContext, Task


class MarkFanOut(Task):
    count: int

    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtasks([Mark(index=index) for index in range(self.count)])


class Mark(Task):
    index: int

    def execute(self, context: ExecutionContext) -> None:
        with open(os.environ["MARKER"], "a") as marker:
            marker.write(f"{self.index} {os.environ['MARK_AS']}\\n")
        # Held until the test has seen both runners mark a task, so both take part however
        # long either takes to start.
        deadline = time.monotonic() + 300
        while not os.path.exists(os.environ["GATE"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.03)
'''

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "source":
        print(MARK_TASKS)
        sys.exit(0)
    namespace: dict = {}
    exec(MARK_TASKS, namespace)
    Client().runner(tasks=[namespace["MarkFanOut"], namespace["Mark"]]).run_all()
